"""filemean on a real cluster: 1,000 files at fan-in 2, 5 and 16; failures; bad input; the CLI; S3 (moto)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from common.errors import JobFailed, ValidationError
from common.tasks.filemean import tree_sizes
from tests.conftest import FAST
from tests.helpers import wait_until
from user_client import LocalCluster
from user_client.filemean import submit_filemean

F, C = 1000, 10_000
S3_MISSING = [m for m in ("moto", "s3fs", "boto3") if importlib.util.find_spec(m) is None]
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    """A local S3: moto's server mode in its own process (None when moto, s3fs or boto3 is missing)."""
    if S3_MISSING:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return proc.poll() is not None  # exited: fail below rather than wait

    try:
        wait_until(up, timeout=30)
        assert proc.poll() is None, "moto server exited at start"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """Two providers that can reach the local S3 (credentials and endpoint through the environment)."""
    env = {**S3_CREDENTIALS, "FSSPEC_S3_ENDPOINT_URL": s3_endpoint} if s3_endpoint else {}
    cluster = LocalCluster(2, insecure=True, log_level="info", env=env, **FAST).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def slow_cluster():
    """Three providers that take 50 ms per task, so a job is still running when something is killed."""
    cluster = LocalCluster(3, insecure=True, log_level="info", env={"ZCOMPUTE_FAULTS": "delay:compute=0.05"},
                           head_args=["--no-speculate"], **FAST).start()
    yield cluster
    cluster.stop()


def write_files(root, stack, fmt="npy"):
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, row in enumerate(stack):
        path = root / f"f{i:04d}.{fmt}"
        if fmt == "npy":
            np.save(path, row)
        else:
            path.write_text("\n".join(repr(float(v)) for v in row) + "\n")
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def thousand(tmp_path_factory):
    """F=1000 files of C=10,000 float64 (80 MB), written once. Values are multiples of 1/8 below 2^13,
    so every partial sum is exact and the tree's result equals np.mean bit for bit."""
    rng = np.random.default_rng(7)
    stack = rng.integers(-8000, 8000, size=(F, C)).astype(np.float64) / 8
    root = tmp_path_factory.mktemp("thousand")
    write_files(root, stack)
    return root, np.mean(stack, axis=0)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    rng = np.random.default_rng(8)
    stack = rng.integers(-1000, 1000, size=(40, 100)).astype(np.float64) / 4
    root = tmp_path_factory.mktemp("small")
    return write_files(root, stack), np.mean(stack, axis=0)


@pytest.mark.slow
@pytest.mark.parametrize("fanin, how", [(2, "providers read"), (5, "uploaded"), (16, "intermediates in files")])
def test_thousand_files_match_numpy(cluster, thousand, tmp_path, fanin, how):
    root, expected = thousand
    options = {"providers read": {"upload": False}, "uploaded": {"upload": "auto"},
               "intermediates in files": {"upload": False, "intermediate": f"file://{tmp_path}/partials"}}[how]
    with cluster.client(timeout=60) as c:
        start = time.monotonic()
        job = submit_filemean(c, root, fanin=fanin, **options)
        submitted = time.monotonic() - start
        mean = job.result(timeout=120)
        elapsed = time.monotonic() - start
        summary = job.status()
    np.testing.assert_array_equal(mean, expected)
    sizes = tree_sizes(F, fanin)
    probe = 0 if how == "uploaded" else 1
    assert summary["total"] == sum(sizes[1:]) + probe
    assert summary["round"] == len(sizes) - 1 + probe
    if how == "intermediates in files":
        assert len(list((tmp_path / "partials" / job.id).glob("level*/*.npy"))) == sum(sizes[1:-1])
    print(f"\nFIGURE filemean F={F} C={C} P={fanin} ({how}): {elapsed:.2f}s on 2 providers "
          f"(submit {submitted:.2f}s), {summary['total']} tasks in {summary['round']} rounds")


def test_text_files(cluster, small, tmp_path):
    _, expected = small
    stack = np.array([np.load(p) for p in small[0]])
    paths = write_files(tmp_path / "text", stack, fmt="txt")
    with cluster.client() as c:
        read_by_providers = submit_filemean(c, tmp_path / "text", fanin=3, upload=False).result(timeout=60)
        uploaded = submit_filemean(c, paths, fanin=3).result(timeout=60)
    np.testing.assert_array_equal(read_by_providers, expected)
    np.testing.assert_array_equal(uploaded, expected)


def test_mixed_sizes_empty_directory_and_unreadable_urls_fail_clearly(cluster, small, tmp_path):
    paths, _ = small
    odd = tmp_path / "odd.npy"
    np.save(odd, np.ones(99))
    (tmp_path / "empty").mkdir()
    with cluster.client() as c:
        job = submit_filemean(c, [*paths[:20], str(odd), *paths[20:]], fanin=4, upload=False)
        with pytest.raises(JobFailed, match=r"odd\.npy has 99 numbers but .*f0000\.npy has 100"):
            job.result(timeout=60)
        with pytest.raises(ValidationError, match=r"odd\.npy has 99 numbers but .*f0000\.npy has 100"):
            submit_filemean(c, [*paths[:5], str(odd)], fanin=4)  # uploads are checked before sending
        with pytest.raises(ValidationError, match=r"directory .*empty has no files"):
            submit_filemean(c, tmp_path / "empty")
        with pytest.raises(ValidationError, match=r"no files match .*\*\.npz"):
            submit_filemean(c, str(tmp_path / "*.npz"))
        with pytest.raises(ValidationError, match=r"cannot open nosuchproto://bucket/x\.npy"):
            submit_filemean(c, "nosuchproto://bucket/x.npy")
        # memory:// is private to each process: the providers cannot read what the client names
        job = submit_filemean(c, [*paths[:6], "memory://elsewhere/x.npy", *paths[6:]], fanin=4, upload=False)
        with pytest.raises(JobFailed, match=r"cannot read memory://elsewhere/x\.npy: no such file"):
            job.result(timeout=60)
        assert len([p for p in c.providers() if p["state"] == "ready"]) == 2  # the cluster carries on
        np.testing.assert_array_equal(submit_filemean(c, paths, fanin=4).result(timeout=60), small[1])


@pytest.mark.slow
def test_provider_killed_mid_reduction(slow_cluster, thousand):
    root, expected = thousand
    with slow_cluster.client(timeout=10) as c:
        job = submit_filemean(c, root, fanin=8, upload=False)
        wait_until(lambda: job.status()["done"] >= 30, timeout=60)
        slow_cluster.providers[0].kill()  # SIGKILL while it holds a level-1 task
        killed_at = time.monotonic()
        mean = job.result(timeout=120)
        summary = job.status()
    np.testing.assert_array_equal(mean, expected)
    assert summary["reruns"] >= 1
    print(f"\nFIGURE filemean provider kill -9 at 30/{summary['total']} tasks: done {time.monotonic() - killed_at:.2f}s "
          f"later, {summary['reruns']} task(s) re-run")


def test_slow_provider_gets_a_speculative_copy(cluster, small):
    paths, expected = small
    slow = cluster.add_provider(env={"ZCOMPUTE_FAULTS": "delay:compute=1.0"})
    try:
        cluster.wait_for_providers(3)
        with cluster.client() as c:
            before = c.stats()["speculative_launches"]
            mean = submit_filemean(c, paths, fanin=8, upload=False).result(timeout=60)  # 1, 5, 1 tasks
            assert c.stats()["speculative_launches"] > before
    finally:
        slow.terminate()  # drains and deregisters: the module's other tests see two providers again
        slow.wait(10)
    np.testing.assert_array_equal(mean, expected)


@pytest.mark.slow
def test_head_restart_resumes_at_the_level_it_was_on(slow_cluster, thousand):
    cluster = slow_cluster
    root, _ = thousand
    paths = sorted(str(p) for p in root.glob("*.npy"))[:300]
    expected = np.mean([np.load(p) for p in paths], axis=0)
    with cluster.client(timeout=2, retries=1) as c:
        job = submit_filemean(c, paths, fanin=3, upload=False)  # probe, then 100, 34, 12, 4, 2, 1 tasks
        computed_before = sum(p["computed"] for p in c.providers())
        at_kill = wait_until(lambda: (s := job.status())["round"] >= 3 and s, timeout=60)  # level 2 running
        cluster.kill_head()
        cluster.start_head()
        mean = job.result(timeout=60)
        summary = job.status()
        wait_until(lambda: sum(p["computed"] for p in c.providers()) >= computed_before + summary["total"], 10)
        computed = sum(p["computed"] for p in c.providers()) - computed_before
    np.testing.assert_array_equal(mean, expected)
    recovered = [json.loads(line) for line in cluster.log_tail("head", 400).splitlines()
                 if '"job.recovered"' in line]
    assert recovered and recovered[-1]["round"] >= 3
    assert computed - summary["total"] <= 3  # finished levels are not recomputed; at most the tasks in flight
    print(f"\nFIGURE filemean head kill -9 in round {at_kill['round']} ({at_kill['done']}/{at_kill['total']} "
          f"tasks): resumed at round {recovered[-1]['round']}, {computed - summary['total']} task(s) computed twice")


def test_cli_submit_filemean(cluster, small, tmp_path):
    from user_client.cli import cli, submit
    from user_client.cli_filemean import filemean_command

    submit.add_command(filemean_command)  # what cli.py does
    paths, expected = small
    out = tmp_path / "mean.npy"
    args = ["--head", str(cluster.address), "--insecure", "submit", "filemean", "--input",
            str(os.path.dirname(paths[0])) + "/*.npy", "--fanin", "8", "--no-upload", "--wait", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "submitted job" in result.output and "succeeded" in result.output
    np.testing.assert_array_equal(np.load(out), expected)
    result = CliRunner().invoke(cli, args[:5] + ["--input", str(tmp_path / "nothing-*.npy")])
    assert result.exit_code == 1 and "no files match" in result.output


# -- S3 through moto's server mode -----------------------------------------------------------------

def test_s3_inputs_and_intermediates(cluster, small, s3_endpoint, monkeypatch):
    if s3_endpoint is None:
        pytest.skip(f"the S3 test needs {', '.join(S3_MISSING)} (pip install -e '.[test]')")
    import boto3
    import fsspec.config

    for key, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    # the client lists s3:// itself; fsspec read FSSPEC_* at import, so give this process the endpoint here
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_endpoint})
    paths, expected = small
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="bucket")
    for path in paths:
        s3.upload_file(path, "bucket", f"run7/{os.path.basename(path)}")
    with cluster.client() as c:
        job = submit_filemean(c, "s3://bucket/run7/*.npy", fanin=4, intermediate="s3://bucket/tmp")
        mean = job.result(timeout=60)
        missing = submit_filemean(c, ["s3://bucket/run7/f0000.npy", "s3://bucket/run7/gone.npy"], fanin=4)
        with pytest.raises(JobFailed, match=r"cannot read s3://bucket/run7/gone\.npy"):
            missing.result(timeout=60)
    np.testing.assert_array_equal(mean, expected)
    listed = s3.list_objects_v2(Bucket="bucket", Prefix=f"tmp/{job.id}/")
    assert len(listed.get("Contents", [])) == sum(tree_sizes(len(paths), 4)[1:-1])  # partial sums went to S3
