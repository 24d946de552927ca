"""The TOML config file: default < file < ZCOMPUTE_* variable < flag, for the head and the provider."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
import structlog
from click.testing import CliRunner

import common.provider.cli as provider_cli
import head_node.server
from common import configfile
from head_node import cli as head_cli

PROVIDER = provider_cli.generic


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No ZCOMPUTE_* from the shell, and a home without ~/.zcompute/zcompute.toml."""
    for name in [n for n in os.environ if n.startswith("ZCOMPUTE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    logging = structlog.get_config()
    yield
    structlog.configure(**logging)  # `start` logs to the runner's stream, closed after each invoke


def invoke(cli: click.Group, args: list[str], env: dict[str, str] | None = None, code: int = 0) -> str:
    result = CliRunner().invoke(cli, args, env=env or {})
    assert result.exit_code == code, result.output
    return result.output


def shown(output: str) -> dict[str, tuple[str, str]]:
    """``config show`` as {setting: (value, source)}."""
    rows = {}
    for line in output.splitlines()[2:]:
        key, rest = line.split(None, 1)
        value, source = rest.rsplit("  ", 1) if "  " in rest else ("", rest)
        rows[key] = (value.strip(), source.strip())
    return rows


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def head_started(monkeypatch):
    """Run `head-node start` up to the HeadNode it would serve; returns the HeadConfig it got."""
    configs = []

    class FakeHead:
        def __init__(self, config):
            configs.append(config)

        def bind(self):
            pass

        def stop(self):
            pass

        def serve_forever(self):
            pass

    monkeypatch.setattr(head_node.server, "HeadNode", FakeHead)
    monkeypatch.setattr(head_cli, "settle_gc", lambda: None)  # the test process keeps its collector as it is
    return configs


@pytest.fixture
def provider_started(monkeypatch):
    configs = []
    monkeypatch.setattr(provider_cli, "run_provider", lambda config, *hooks: configs.append(config))
    return configs


# -- precedence, layer by layer ------------------------------------------------------------------


def test_head_precedence_every_layer(tmp_path, head_started):
    config = write(tmp_path / "z.toml", "[head]\nliveness = 4\n")
    group = ["--config", str(config)]
    assert shown(invoke(head_cli.cli, ["config", "show"]))["liveness"] == ("3", "default")
    assert shown(invoke(head_cli.cli, [*group, "config", "show"]))["liveness"] == ("4", f"file {config}")
    env = {"ZCOMPUTE_LIVENESS": "5"}
    assert shown(invoke(head_cli.cli, [*group, "config", "show"], env))["liveness"] == ("5", "env ZCOMPUTE_LIVENESS")
    assert shown(invoke(head_cli.cli, [*group, "config", "show", "--liveness", "6"], env))["liveness"] == ("6", "flag")
    # and `start` itself gets the same values
    data = ["--data-dir", str(tmp_path / "head")]
    for args, env, expected in ((["start"], {}, 3), ([*group, "start"], {}, 4),
                                ([*group, "start"], {"ZCOMPUTE_LIVENESS": "5"}, 5),
                                ([*group, "start", "--liveness", "6"], {"ZCOMPUTE_LIVENESS": "5"}, 6)):
        invoke(head_cli.cli, [*args, *data, "--insecure"], env)
        assert head_started[-1].timing.liveness == expected, args


def test_provider_precedence_every_layer(tmp_path, provider_started):
    config = write(tmp_path / "z.toml", "[provider]\nslots = 2\n")
    group = ["--config", str(config)]
    assert shown(invoke(PROVIDER, ["config", "show"]))["slots"] == ("1", "default")
    assert shown(invoke(PROVIDER, [*group, "config", "show"]))["slots"] == ("2", f"file {config}")
    env = {"ZCOMPUTE_SLOTS": "3"}
    assert shown(invoke(PROVIDER, [*group, "config", "show"], env))["slots"] == ("3", "env ZCOMPUTE_SLOTS")
    assert shown(invoke(PROVIDER, [*group, "config", "show", "--slots", "4"], env))["slots"] == ("4", "flag")
    data = ["--data-dir", str(tmp_path / "prov"), "--insecure"]
    for args, env, expected in ((["start"], {}, 1), ([*group, "start"], {}, 2),
                                ([*group, "start"], {"ZCOMPUTE_SLOTS": "3"}, 3),
                                ([*group, "start", "--slots", "4"], {"ZCOMPUTE_SLOTS": "3"}, 4)):
        invoke(PROVIDER, [*args, *data], env)
        assert provider_started[-1].slots == expected, args


def test_boolean_pairs_follow_the_same_order(tmp_path, head_started):
    config = write(tmp_path / "z.toml", "[head]\nspeculate = false\n")
    start = ["--config", str(config), "start", "--data-dir", str(tmp_path / "h"), "--insecure"]
    invoke(head_cli.cli, start)
    assert head_started[-1].speculate is False
    invoke(head_cli.cli, start, {"ZCOMPUTE_SPECULATE": "1"})
    assert head_started[-1].speculate is True
    invoke(head_cli.cli, [*start, "--no-speculate"], {"ZCOMPUTE_SPECULATE": "1"})
    assert head_started[-1].speculate is False


# -- every setting -----------------------------------------------------------------------------------

HEAD_FILE = """
[head]
data-dir = "{tmp}/head"
bind = "127.0.0.1"
port-base = 7000
heartbeat-interval = 0.5
liveness = 5
dead-after = 20.0
ack-timeout = 4.0
max-attempts = 5
prefetch = 2
speculate = false
speculate-after = 0.5
straggler-factor = 2.0
max-queued-jobs = 7
keep-finished = "12h"
allow-model = ["mypkg.models:small", "mypkg.models:big"]
max-message-mb = 64
compression = "zstd"
link-mbit = 100.0
local-data = false
allow-any-key = true
advertise = "tcp://head.lab:7000"
http-port = 0
http-host = "0.0.0.0"
insecure = true
log-level = "warning"
log-json = true
"""


def test_every_head_setting_from_the_file(tmp_path, head_started):
    config = write(tmp_path / "z.toml", HEAD_FILE.format(tmp=tmp_path))
    rows = shown(invoke(head_cli.cli, ["--config", str(config), "config", "show"]))
    start = head_cli.cli.commands["start"]
    assert set(rows) == {configfile.key_of(p) for p in start.params if p.name != "help"}  # every option is a setting
    assert {source for _, source in rows.values()} == {f"file {config}"}
    invoke(head_cli.cli, ["--config", str(config), "start"])
    got = head_started[-1]
    assert (got.data_dir, got.bind_host, got.port_base, got.advertise) == (
        tmp_path / "head", "127.0.0.1", 7000, "tcp://head.lab:7000")
    assert (got.timing.heartbeat_interval, got.timing.liveness, got.timing.dead_after, got.timing.ack_timeout) == (
        0.5, 5, 20.0, 4.0)
    assert (got.max_attempts, got.prefetch, got.speculate, got.speculate_after, got.straggler_factor) == (
        5, 2, False, 0.5, 2.0)
    assert (got.max_queued_jobs_per_client, got.limits.max_message_bytes, got.compression) == (7, 64 << 20, "zstd")
    assert got.link_mbit == 100.0 and got.local_data is False and got.keep_finished == 12 * 3600
    assert got.allow_models == ("mypkg.models:small", "mypkg.models:big")
    assert (got.allow_any_key, got.http_port, got.http_host, got.insecure) == (True, 0, "0.0.0.0", True)


def test_every_provider_setting_from_the_file(tmp_path, provider_started):
    config = write(tmp_path / "z.toml", f"""
[provider]
head = "tcp://head.lab:7000"
data-dir = "{tmp_path}/prov"
name = "gpu-box"
slots = 3
blas-threads = 2
device = "cpu"
heartbeat-interval = 0.5
link-mbit = 1000.0
insecure = true
log-level = "debug"
log-json = false
""")
    rows = shown(invoke(PROVIDER, ["--config", str(config), "config", "show"]))
    assert {k for k, (_, source) in rows.items() if source == "default"} == {"join"}  # set in the file: all but that
    invoke(PROVIDER, ["--config", str(config), "start"])
    got = provider_started[-1]
    assert (str(got.head), got.data_dir, got.name, got.slots, got.blas_threads, got.device, got.insecure) == (
        "tcp://head.lab:7000", tmp_path / "prov", "gpu-box", 3, 2, "cpu", True)
    assert got.link_mbit == 1000.0


def test_config_show_toml_round_trips(tmp_path):
    """`config show --toml` writes a file that gives the same settings, each now from the file."""
    for cli, section in ((head_cli.cli, "head"), (PROVIDER, "provider")):
        before = shown(invoke(cli, ["config", "show", "--liveness" if section == "head" else "--slots", "2"]))
        text = invoke(cli, ["config", "show", "--toml", "--liveness" if section == "head" else "--slots", "2"])
        assert text.startswith(f"[{section}]\n")
        config = write(tmp_path / f"{section}.toml", text)
        after = shown(invoke(cli, ["--config", str(config), "config", "show"]))
        assert {k: v for k, (v, _) in after.items()} == {k: v for k, (v, _) in before.items()}
        assert {s for k, (v, s) in after.items() if v != "(auto)"} == {f"file {config}"}


def test_config_show_hides_the_join(tmp_path):
    config = write(tmp_path / "z.toml", '[provider]\njoin = "zcj1:secret-stuff"\n')
    output = invoke(PROVIDER, ["--config", str(config), "config", "show"])
    assert "secret-stuff" not in output and shown(output)["join"] == ("(hidden)", f"file {config}")
    assert "secret-stuff" not in invoke(PROVIDER, ["--config", str(config), "config", "show", "--toml"])


# -- which file ---------------------------------------------------------------------------------------


def test_which_file(tmp_path):
    default = write(tmp_path / "home" / ".zcompute" / "zcompute.toml", "[head]\nliveness = 7\n")
    out = invoke(head_cli.cli, ["config", "show"])
    assert out.splitlines()[0] == f"config file: {default} (from the default location)"
    assert shown(out)["liveness"] == ("7", f"file {default}")
    other = write(tmp_path / "other.toml", "[head]\nliveness = 8\n")
    out = invoke(head_cli.cli, ["config", "show"], {"ZCOMPUTE_CONFIG": str(other)})
    assert out.splitlines()[0] == f"config file: {other} (from ZCOMPUTE_CONFIG)" and shown(out)["liveness"][0] == "8"
    out = invoke(head_cli.cli, ["--config", "none", "config", "show"], {"ZCOMPUTE_CONFIG": str(other)})
    assert out.splitlines()[0] == "config file: none ('none' from --config)" and shown(out)["liveness"][0] == "3"
    default.unlink()
    out = invoke(head_cli.cli, ["config", "show"])
    assert out.splitlines()[0] == "config file: none (~/.zcompute/zcompute.toml does not exist)"


def test_file_settings_apply_to_the_other_head_commands(tmp_path):
    config = write(tmp_path / "z.toml", f'[head]\ndata-dir = "{tmp_path}/head"\nport-base = 7100\n'
                                        f'advertise = "tcp://head.lab:7100"\n')
    out = invoke(head_cli.cli, ["--config", str(config), "init"])
    assert str(tmp_path / "head") in out and "tcp://head.lab:7100" in out
    invoke(head_cli.cli, ["--config", str(config), "invite", "--role", "client", "--name", "alice"])
    assert "alice" in invoke(head_cli.cli, ["--config", str(config), "peers"])


@pytest.mark.parametrize("text, message", [
    ("[head\nliveness = 4\n", "not valid TOML"),
    ("[head]\nlivness = 4\n", "[head] has no setting 'livness'; known: "),
    ("[head]\nliveness = 0\n", "[head] liveness: "),
    ("[head]\ncompression = \"lz4\"\n", "[head] compression: "),
    ("[heads]\nliveness = 4\n", "unknown section [heads]"),
    ("head = 4\n", "[head] must be a table"),
])
def test_bad_files_are_refused_with_the_reason(tmp_path, text, message):
    config = write(tmp_path / "z.toml", text)
    out = invoke(head_cli.cli, ["--config", str(config), "config", "show"], code=2)
    assert str(config) in out and message in out


def test_a_missing_named_file_is_an_error(tmp_path):
    out = invoke(PROVIDER, ["--config", str(tmp_path / "nope.toml"), "config", "show"], code=2)
    assert "nope.toml: cannot read it" in out


def test_keys_may_use_underscores(tmp_path):
    config = write(tmp_path / "z.toml", "[head]\ndead_after = 30.0\n")
    assert shown(invoke(head_cli.cli, ["--config", str(config), "config", "show"]))["dead-after"][0] == "30.0"


def test_one_file_serves_head_and_provider(tmp_path):
    config = write(tmp_path / "z.toml", "[head]\nliveness = 4\n\n[provider]\nslots = 2\n")
    assert shown(invoke(head_cli.cli, ["--config", str(config), "config", "show"]))["liveness"][0] == "4"
    assert shown(invoke(PROVIDER, ["--config", str(config), "config", "show"]))["slots"][0] == "2"
