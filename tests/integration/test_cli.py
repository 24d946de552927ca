"""The console scripts as a user runs them: head-node, provider, user-client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.lifecycle import PARENT_PID_ENV, free_port_base
from tests.helpers import wait_until
from user_client import Client

BIN = Path(sys.executable).parent
SCRIPTS = ["head-node", "provider", "provider-macos", "provider-windows", "user-client"]


def run(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_help(script):
    out = run(script, "--help")
    assert out.returncode == 0, out.stderr
    assert "zcompute" in out.stdout


@pytest.mark.parametrize("command", [
    ["head-node", "start"], ["provider", "start"], ["provider-macos", "start"], ["provider-windows", "start"],
    ["user-client", "submit", "matmul"], ["user-client", "submit", "filemean"], ["user-client", "train"],
    ["user-client", "events"], ["user-client", "watch"], ["user-client", "status"], ["user-client", "result"],
    ["user-client", "cancel"], ["user-client", "delete"], ["user-client", "jobs"], ["user-client", "providers"],
    ["user-client", "demo"],
])
def test_every_command_explains_itself_with_an_example(command):
    out = run(*command, "--help")
    assert out.returncode == 0, out.stderr
    assert "Example:" in out.stdout


def test_separate_head_and_provider_commands_and_the_cli_round_trip(tmp_path):
    """The several-machines flow on loopback, secured as by default: head-node init/invite/start,
    provider start --join, user-client --join submit/status/result/jobs/providers/cancel."""
    base = free_port_base()
    head_url = f"tcp://127.0.0.1:{base}"
    head_dir = str(tmp_path / "head")
    out = run("head-node", "init", "--data-dir", head_dir, "--advertise", head_url)
    assert out.returncode == 0 and "initialized" in out.stdout, out.stderr
    joins = {}
    for role, name in [("provider", "box0"), ("provider", "box1"), ("client", "alice")]:
        out = run("head-node", "invite", "--data-dir", head_dir, "--role", role, "--name", name, "--ttl", "1h")
        assert out.returncode == 0, out.stderr
        joins[name] = out.stdout.strip()
    env = {PARENT_PID_ENV: str(os.getpid()), "ZCOMPUTE_HEARTBEAT_INTERVAL": "0.2"}
    logs = open(tmp_path / "procs.log", "wb")
    procs = [subprocess.Popen([str(BIN / "head-node"), "start", "--data-dir", head_dir,
                               "--bind", "127.0.0.1", "--port-base", str(base), "--http-port", "0"],
                              stdout=logs, stderr=logs, env={**os.environ, **env})]
    for i in range(2):
        procs.append(subprocess.Popen([str(BIN / "provider"), "start", "--data-dir", str(tmp_path / f"p{i}")],
                                      stdout=logs, stderr=logs,
                                      env={**os.environ, **env, "ZCOMPUTE_JOIN": joins[f"box{i}"]}))
    try:
        with Client(join=joins["alice"], timeout=2, retries=20) as c:
            wait_until(lambda: len([p for p in c.providers() if p["state"] == "ready"]) == 2, timeout=30)
        rng = np.random.default_rng(3)
        a, b = rng.standard_normal((90, 60)), rng.standard_normal((60, 70))
        np.save(tmp_path / "A.npy", a)
        np.save(tmp_path / "B.npy", b)
        cenv = {"ZCOMPUTE_JOIN": joins["alice"]}
        out = run("user-client", "submit", "matmul", "--a", str(tmp_path / "A.npy"), "--b",
                  str(tmp_path / "B.npy"), "--splits", "2x2", "--wait", "--out", str(tmp_path / "C.npy"), env=cenv)
        assert out.returncode == 0, out.stderr
        assert "succeeded" in out.stdout and "4 shards" in out.stdout
        np.testing.assert_allclose(np.load(tmp_path / "C.npy"), a @ b, rtol=1e-12)
        job_id = out.stdout.split("submitted job ")[1].split()[0]

        out = run("user-client", "status", job_id, env=cenv)
        assert out.returncode == 0 and "succeeded" in out.stdout
        out = run("user-client", "result", job_id, "--out", str(tmp_path / "C2.npy"), env=cenv)
        assert out.returncode == 0, out.stderr
        np.testing.assert_array_equal(np.load(tmp_path / "C2.npy"), np.load(tmp_path / "C.npy"))
        out = run("user-client", "jobs", env=cenv)
        assert job_id in out.stdout and "STATUS" in out.stdout and "alice" in out.stdout
        out = run("user-client", "providers", env=cenv)
        assert "box0" in out.stdout and "box1" in out.stdout and "matmul" in out.stdout
        out = run("user-client", "events", job_id, env=cenv)
        kinds = [__import__("json").loads(line)["event"] for line in out.stdout.splitlines()]
        assert out.returncode == 0 and kinds[0] == "submit" and kinds[-1] == "finish"
        # "accept" is left out for shards whose result came within 20 ms (the result says the same)
        assert kinds.count("result") == 4 and kinds.count("assign") >= 4
        out = run("user-client", "watch", job_id, env=cenv)
        assert out.returncode == 0 and "succeeded" in out.stdout
        out = run("user-client", "cancel", job_id, env=cenv)
        assert out.returncode == 0 and "succeeded" in out.stdout  # finished jobs stay finished
        out = run("user-client", "delete", job_id, env=cenv)
        assert out.returncode == 0 and f"job {job_id} deleted" in out.stdout, out.stderr
        assert not (tmp_path / "head" / "jobs" / job_id).exists()
        out = run("user-client", "result", job_id, "--out", str(tmp_path / "C3.npy"), env=cenv)
        assert out.returncode == 1 and f"no job '{job_id}': it was deleted" in out.stderr and "(by alice)" in out.stderr

        out = run("user-client", "status", "no-such-job", env=cenv)
        assert out.returncode == 1 and "no job 'no-such-job'" in out.stderr
        np.save(tmp_path / "bad.npy", np.ones((3, 3)))
        out = run("user-client", "submit", "matmul", "--a", str(tmp_path / "A.npy"), "--b",
                  str(tmp_path / "bad.npy"), env=cenv)
        assert out.returncode == 1 and "inner dimensions differ" in out.stderr
        out = run("user-client", "--head", head_url, "jobs", env={"ZCOMPUTE_JOIN": ""})
        assert out.returncode == 1 and "no credentials" in out.stderr
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(15)
        logs.close()
    assert [p.returncode for p in procs] == [0, 0, 0]


def test_a_bad_keep_finished_is_refused_before_the_head_starts(tmp_path):
    out = run("head-node", "start", "--insecure", "--data-dir", str(tmp_path / "head"), "--keep-finished", "-1d")
    assert out.returncode == 2 and "'-1d' is not a duration" in out.stderr
    assert not (tmp_path / "head").exists()  # nothing was created


def test_bad_head_address_is_a_clear_error():
    out = run("user-client", "--insecure", "--head", "http://nope", "jobs")
    assert out.returncode == 1 and "tcp://HOST[:PORT]" in out.stderr


def test_demo_runs_and_cleans_up():
    out = run("user-client", "demo", "--size", "256", "--insecure", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "max relative err" in out.stdout and "OK" in out.stdout
    assert "local cluster stopped" in out.stdout


def test_cli_filemean_over_a_directory_of_files(shared_cluster, tmp_path):
    rng = np.random.default_rng(9)
    data = rng.integers(0, 100, size=(12, 50)).astype(np.float64)
    for i, row in enumerate(data):
        np.save(tmp_path / f"f{i:02d}.npy", row)
    np.savetxt(tmp_path / "text.txt", data[0])  # the text format: one number per line
    out = run("user-client", "--insecure", "--head", str(shared_cluster.address), "submit", "filemean",
              "--input", str(tmp_path / "*.npy"), "--fanin", "3", "--out", str(tmp_path / "mean.npy"))
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(np.load(tmp_path / "mean.npy"), data.mean(axis=0), rtol=1e-12)
    out = run("user-client", "--insecure", "--head", str(shared_cluster.address), "submit", "filemean",
              "--input", str(tmp_path / "nothing-here" / "*.npy"), "--wait")
    assert out.returncode != 0 and out.stderr.strip()
