"""The console scripts as a user runs them: head-node, provider, user-client."""

from __future__ import annotations

import json
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
        out = run("user-client", "watch", "no-such-job", env=cenv)
        assert out.returncode == 1 and "no job 'no-such-job'" in out.stderr
        assert "shards" not in out.stderr  # the error alone, no progress bar drawn first
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


@pytest.mark.parametrize("interval, dead_after", [("1", "1.5"), ("0.5", "0.9")])
def test_dead_after_shorter_than_two_heartbeats_is_refused_before_the_head_starts(tmp_path, interval, dead_after):
    out = run("head-node", "start", "--insecure", "--data-dir", str(tmp_path / "head"),
              "--heartbeat-interval", interval, "--dead-after", dead_after)
    assert out.returncode == 2 and "--dead-after" in out.stderr and "twice --heartbeat-interval" in out.stderr
    assert "Traceback" not in out.stderr
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


# -- bad input: one clear error line, no traceback, nothing changed -------------------------------------------------

NO_HEAD = ["--insecure", "--head", "tcp://127.0.0.1:1", "--timeout", "0.1"]  # nothing listens on port 1


def refused(out: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert out.returncode == code, out.stdout + out.stderr
    assert text in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "Aborted!" not in out.stderr, out.stderr


@pytest.fixture
def npy(tmp_path):
    np.save(tmp_path / "A.npy", np.ones((4, 4)))
    return tmp_path / "A.npy"


@pytest.mark.parametrize("content, reason", [
    (b"", "file is empty"),
    (b"1.0\n2.0\n", "not a .npy file"),
    (None, "it is an .npz archive"),
])
def test_an_input_that_is_not_one_npy_array_is_named(tmp_path, npy, content, reason):
    bad = tmp_path / "bad.npy"
    if content is None:
        np.savez(bad, a=np.ones(2))
        bad = tmp_path / "bad.npy.npz"
    else:
        bad.write_bytes(content)
    out = run("user-client", *NO_HEAD, "submit", "matmul", "--a", str(bad), "--b", str(npy))
    refused(out, 1, f"cannot read {bad}: {reason}")
    assert "allow_pickle" not in out.stderr
    refused(run("user-client", *NO_HEAD, "submit", "matmul", "--a", "/dev/null", "--b", str(npy)), 1,
            "cannot read /dev/null: file is empty")


def test_priority_is_bounded(npy):
    out = run("user-client", *NO_HEAD, "submit", "matmul", "--a", str(npy), "--b", str(npy),
              "--priority", "99999999999999999999")
    refused(out, 2, "not in the range -1000<=x<=1000")
    refused(run("user-client", *NO_HEAD, "submit", "filemean", "--input", str(npy), "--priority", "1001"), 2,
            "not in the range")


@pytest.mark.parametrize("option, value, text", [
    ("--shards", "100001", "not in the range 1<=x<=100000"),
    ("--sleep", "nan", "'nan' is not a number"),
    ("--sleep", "inf", "not in the range 0<=x<=3600"),
    ("--sleep", "3601", "not in the range 0<=x<=3600"),
])
def test_noop_values_the_head_cannot_run_are_refused_here(option, value, text):
    refused(run("user-client", *NO_HEAD, "submit", "noop", option, value), 2, text)


def test_a_join_that_is_not_one_is_named(tmp_path, npy):
    refused(run("user-client", "--join", f"@{npy}", "jobs"), 1, f"the file {npy} does not hold a join string")
    out = run("provider", "start", "--join", f"@{npy}", "--data-dir", str(tmp_path / "p"))
    refused(out, 2, f"the file {npy} does not hold a join string")
    assert not (tmp_path / "p").exists()
    out = run("user-client", "--join", "", "jobs", env={"ZCOMPUTE_JOIN": ""})
    refused(out, 1, "no credentials: pass --join STRING")
    assert "join=" not in out.stderr and "insecure=True" not in out.stderr


def test_a_data_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    for command in (["head-node", "start"], ["provider", "start"]):
        refused(run(*command, "--insecure", "--data-dir", str(tmp_path / "f")), 2, "is a file")


def test_a_provider_name_too_long_for_the_head_is_refused_first(shared_cluster, tmp_path):
    out = run("provider", "start", "--insecure", "--head", str(shared_cluster.address), "--name", "x" * 129,
              "--data-dir", str(tmp_path / "p"))
    refused(out, 2, "129 characters, at most 128")


def test_provider_help_says_where_the_default_name_comes_from():
    out = run("provider", "start", "--help")
    assert "join string was invited with" in " ".join(out.stdout.split())


def test_provider_with_an_expired_token_says_so_in_one_line(make_cluster, tmp_path):
    cluster = make_cluster(0, insecure=False)
    join = cluster.invite("provider", "late", ttl=0.01)
    out = run("provider", "start", "--join", join, "--data-dir", str(tmp_path / "p"), "--log-level", "error")
    refused(out, 1, "Error: token expired")


def test_ttl_is_bounded_and_peers_shows_a_far_expiry(tmp_path):
    data = ["--data-dir", str(tmp_path / "head")]
    assert run("head-node", "init", *data).returncode == 0
    peers_file = tmp_path / "head" / "peers.json"
    before = peers_file.read_text()
    refused(run("head-node", "invite", *data, "--role", "client", "--name", "forever", "--ttl", "99999999d"), 2,
            "'99999999d' is more than 10 years (3650d)")
    assert peers_file.read_text() == before
    assert run("head-node", "invite", *data, "--role", "client", "--name", "forever", "--ttl", "3650d").returncode == 0
    peers = json.loads(peers_file.read_text())
    for p in peers.values():
        if p["name"] == "forever":  # as an invite --ttl 99999999d wrote it before the bound
            p["exp"] = p["issued"] + 99999999 * 86400
    peers_file.write_text(json.dumps(peers))
    out = run("head-node", "peers", *data)
    assert out.returncode == 0, out.stderr
    assert "never" in next(line for line in out.stdout.splitlines() if line.startswith("forever"))


def test_demo_checks_the_split_before_starting_a_cluster():
    out = run("user-client", "demo", "--splits", "abc", "--size", "8", "--insecure")
    refused(out, 1, "splits 'abc' is not 'auto', N or RxC")
    assert "starting a local cluster" not in out.stdout


def test_operations_guide_knows_old_jobs_are_deleted():
    guide = (Path(__file__).parents[2] / "docs" / "OPERATIONS.md").read_text()
    not_there_yet = guide.split("## 10. Not there yet")[1].split("## 11.")[0]
    assert "prune" not in not_there_yet and "--keep-finished" in not_there_yet


# -- --out: checked before any work, written under exactly its name -------------------------------------------------


def job_count(cluster) -> int:
    with cluster.client() as c:
        return len(c.jobs())


def test_out_is_checked_before_the_job_is_submitted_or_fetched(shared_cluster, tmp_path, npy):
    head = ["--insecure", "--head", str(shared_cluster.address)]
    before = job_count(shared_cluster)
    for out in (str(tmp_path / "missing" / "C.npy"), ""):
        refused(run("user-client", *head, "submit", "matmul", "--a", str(npy), "--b", str(npy), "--out", out), 2,
                "does not exist" if out else "the file name is empty")
        refused(run("user-client", *head, "result", "any-job", "--out", out), 2,
                "does not exist" if out else "the file name is empty")
    assert job_count(shared_cluster) == before


def test_out_is_written_under_exactly_its_name(shared_cluster, tmp_path, npy):
    out = run("user-client", "--insecure", "--head", str(shared_cluster.address), "submit", "matmul",
              "--a", str(npy), "--b", str(npy), "--out", str(tmp_path / "C.txt"))
    assert out.returncode == 0, out.stderr
    assert f"saved {tmp_path / 'C.txt'}\n" in out.stdout
    assert not (tmp_path / "C.txt.npy").exists()
    np.testing.assert_array_equal(np.load(tmp_path / "C.txt"), np.full((4, 4), 4.0))


def test_several_outputs_are_one_npz_under_exactly_its_name(tmp_path, capsys):
    from user_client.cli import _save

    class Finished:
        def outputs(self):
            return {"x": np.arange(3), "y": np.ones(2)}

    _save(Finished(), tmp_path / "both.out")
    assert capsys.readouterr().out == f"saved {tmp_path / 'both.out'} (an .npz archive of x, y)\n"
    with np.load(tmp_path / "both.out") as saved:
        np.testing.assert_array_equal(saved["x"], np.arange(3))


# -- Ctrl-C stops following a job, not the job ----------------------------------------------------------------------


@pytest.mark.parametrize("command, shows_it", [
    (["watch", "JOB"], "stderr"),
    (["events", "JOB", "--follow"], "stdout"),
    (["submit", "noop", "--shards", "1000", "--sleep", "0.2", "--wait"], "stdout"),
])
def test_ctrl_c_leaves_the_job_running_and_says_how_to_come_back(shared_cluster, tmp_path, command, shows_it):
    with shared_cluster.client() as c, open(tmp_path / "stdout", "w") as stdout, \
            open(tmp_path / "stderr", "w") as stderr:
        job = c.submit("noop", {"shards": 1000, "sleep": 0.2})
        proc = subprocess.Popen([str(BIN / "user-client"), "--insecure", "--head", str(shared_cluster.address),
                                 *[job.id if a == "JOB" else a for a in command]], stdout=stdout, stderr=stderr)
        try:
            wait_until(lambda: (tmp_path / shows_it).read_text(), timeout=30)  # it is following the job now
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 130
        finally:
            proc.kill()
            proc.wait()
        followed = job.id if command[0] != "submit" else (tmp_path / "stdout").read_text().split()[2]
        stderr = (tmp_path / "stderr").read_text()
        assert f"job {followed} keeps running on the head" in stderr and f"user-client watch {followed}" in stderr
        assert "Aborted!" not in stderr and "Traceback" not in stderr
        for job_id in {job.id, followed}:
            assert c.job(job_id).cancel()["status"] == "cancelled"  # it was still running


def test_a_data_dir_in_use_is_refused_and_the_running_one_goes_on(shared_cluster):
    """A second head on a running head's data dir would share its journal and rewrite the token that proves
    a peer is on this machine; a second provider would share an identity."""
    head_dir = shared_cluster.data_dir / "head"
    token = (head_dir / "local-probe").read_text()
    port = str(free_port_base())
    out = run("head-node", "start", "--insecure", "--data-dir", str(head_dir), "--port-base", port, "--http-port", "0")
    refused(out, 1, f"{head_dir} is in use by another head (pid {shared_cluster.head.pid})")
    out = run("provider", "start", "--insecure", "--head", f"tcp://127.0.0.1:{port}",
              "--data-dir", str(shared_cluster.data_dir / "provider-0"))
    refused(out, 1, "is in use by another provider (pid")
    assert (head_dir / "local-probe").read_text() == token
    with shared_cluster.client() as c:
        assert c.matmul(np.eye(3), np.eye(3), splits=(1, 1)).result(timeout=30).trace() == 3


def test_a_model_factory_that_is_not_one_is_refused_at_start(tmp_path):
    refused(run("head-node", "start", "--insecure", "--data-dir", str(tmp_path / "h"), "--allow-model", "os.abort"),
            1, "--allow-model takes package.module:factory, not 'os.abort'")
