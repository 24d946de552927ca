"""``provider``: run a compute provider that joins a head node.

The generic command picks the macOS or Windows adapter by platform; the
adapters' own commands build the same CLI with their default device.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from common import cli_options as opt
from common import configfile
from common.config import DEFAULT_DATA_DIR, HeadAddress, ProviderConfig, Timing
from common.errors import ConfigError
from common.lifecycle import DataDirLock, watch_parent
from common.logs import get_logger, setup_logging
from common.protocol import MAX_PROVIDER_NAME
from common.security import Join, write_secret


def run_provider(config: ProviderConfig, on_start=None) -> None:
    from common.provider.runtime import Provider

    provider = Provider(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: provider.stop())
    watch_parent(provider.stop)
    if on_start is not None:
        on_start(provider)  # platform hook: keep-awake (macOS), console events (Windows)
    provider.run()


def parse_join(join_text: str | None, insecure: bool) -> Join | None:
    """``--join`` checked, before anything is written for it."""
    if insecure or not join_text:
        return None
    try:
        return Join.decode(join_text)
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--join") from None


def resolve_join(given: Join | None, data_dir: Path, insecure: bool) -> Join | None:
    """The join to use: ``--join`` (saved to the data dir for restarts), else the saved one."""
    if insecure:
        return None
    saved = data_dir / "join"
    if given is not None:
        write_secret(saved, given.encode() + "\n")
        return given
    try:
        if saved.exists():
            return Join.decode(saved.read_text())
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--join") from None
    raise click.UsageError("this provider has no credentials: pass --join STRING (from `head-node invite "
                           "--role provider --name NAME`) or --insecure for a head started with --insecure")


def _name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if len(value) > MAX_PROVIDER_NAME:  # the head would refuse the registration
        raise click.BadParameter(f"{len(value)} characters, at most {MAX_PROVIDER_NAME}", ctx, param)
    return value


def make_cli(platform_name: str, default_device: str, on_start=None) -> click.Group:
    @click.group(help=f"zcompute provider ({platform_name}): computes shards for a head node.")
    @configfile.option("provider")
    def cli() -> None:
        pass

    @cli.command(epilog="Example: provider start --join zcj1:... --slots 2  (first time; later just `provider "
                        "start`)")
    @click.option("--head", envvar=opt.env("HEAD"), default=None,
                  help="The head node, tcp://HOST[:PORT_BASE] (default: from the join string, else "
                       "tcp://127.0.0.1:5555).")
    @click.option("--join", "join_text", envvar=opt.env("JOIN"),
                  help="Join string from `head-node invite --role provider` (or @FILE); kept in the data dir.")
    @click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar=opt.env("PROVIDER_DATA_DIR"),
                  default=DEFAULT_DATA_DIR / "provider", show_default=True,
                  help="Where the provider keeps its id (one data dir per provider process).")
    @click.option("--name", default="", envvar=opt.env("PROVIDER_NAME"), callback=_name,
                  help=f"Display name, at most {MAX_PROVIDER_NAME} characters (default: the name the join string was "
                       "invited with, else the host name and the start of the provider's id).")
    @click.option("--slots", type=click.IntRange(1, 256), default=1, envvar=opt.env("SLOTS"), show_default=True,
                  help="Shards computed at once.")
    @click.option("--blas-threads", type=click.IntRange(1, 512), default=1, envvar=opt.env("BLAS_THREADS"),
                  show_default=True, help="BLAS threads per provider (leave a core for heartbeats).")
    @click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=default_device,
                  envvar=opt.env("DEVICE"), show_default=True, help="Device to compute on.")
    @opt.heartbeat_interval
    @opt.link_mbit
    @opt.insecure
    @opt.log_level
    @opt.log_json
    def start(head, join_text, data_dir, name, slots, blas_threads, device, heartbeat_interval, link_mbit, insecure,
              log_level, log_json):
        """Join the head node and compute shards until stopped (Ctrl-C or SIGTERM drains first)."""
        setup_logging(log_level, log_json)
        data_dir = data_dir.expanduser()
        given = parse_join(join_text, insecure)
        with opt.one_line_errors():
            lock = DataDirLock(data_dir, "provider")  # before its saved join or identity is read or written
            join = resolve_join(given, data_dir, insecure)
        try:
            address = HeadAddress.parse(head) if head else (join.address if join else HeadAddress("127.0.0.1"))
        except ConfigError as e:
            raise click.BadParameter(str(e), param_hint="--head") from None
        if insecure:
            get_logger("provider").warning("provider.INSECURE", detail="no encryption, no token: only for a head "
                                           "started with --insecure on a trusted network")
        config = ProviderConfig(head=address, join=join, data_dir=data_dir, name=name or (join.name if join else ""),
                                slots=slots,
                                blas_threads=blas_threads, device=device, insecure=insecure, link_mbit=link_mbit,
                                timing=Timing(heartbeat_interval=heartbeat_interval))
        with opt.one_line_errors():
            run_provider(config, on_start)
        lock.release()

    cli.add_command(configfile.config_group("provider"))
    return cli


generic = make_cli("generic", "auto")


def main() -> None:
    """Entry point of ``provider``: the platform's adapter where there is one."""
    if sys.platform == "darwin":
        from provider_macos.cli import main as adapter
    elif sys.platform == "win32":
        from provider_windows.cli import main as adapter
    else:
        adapter = generic
    adapter()
