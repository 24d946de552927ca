"""Peers on the head's machine use its files in place (common/localdata.py); everyone else gets bytes.

Real head and provider processes. The head's counters tell which way the arrays went: ``local_*``
for references into its files, ``array_bytes_*`` for arrays encoded onto a socket.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from common import localdata, protocol
from common.errors import UnknownJobError, ValidationError
from tests.helpers import hidden_dir_wrapper, wait_until

RNG = np.random.default_rng(5)
A = RNG.standard_normal((600, 300)).astype(np.float32)  # 720 KB + 480 KB: over the 1 MiB upload threshold
B = RNG.standard_normal((300, 400)).astype(np.float32)


def _uploads(cluster) -> list[str]:
    return sorted(os.listdir(cluster.data_dir / "head" / localdata.UPLOADS))


def test_on_one_machine_no_array_crosses_a_socket(make_cluster):
    cluster = make_cluster(2)
    with cluster.client() as c:
        assert all(p["local"] for p in c.providers())
        before = c.stats()
        got = c.matmul(A, B, splits=(4, 2)).result(timeout=60)
        after = c.stats()
    np.testing.assert_allclose(got, A @ B, rtol=1e-5, atol=1e-4)
    assert got.flags.writeable  # a private copy-on-write map: the caller may change it
    got[0, 0] = 1e9
    delta = {k: after[k] - before.get(k, 0) for k in after if k.startswith(("local_", "array_bytes"))}
    assert delta["local_uploads"] == 2 and delta["local_fetches"] == 1
    assert delta["local_arrays_sent"] == 16 and delta["local_arrays_written"] == 8  # a and b per shard; c per shard
    assert delta["array_bytes_raw_sent"] == 0 and delta["array_bytes_raw_received"] == 0
    assert _uploads(cluster) == []  # taken into the job's directory
    with cluster.client() as c:  # the fetched copy was private: the job's output is unchanged
        np.testing.assert_allclose(c.job(c.jobs()[-1]["job_id"]).result(), A @ B, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("splits", [(3, 1), (2, 3), "auto"])
def test_with_local_data_off_arrays_travel_and_b_is_sent_once(make_cluster, splits):
    cluster = make_cluster(2, head_args=["--no-local-data"])
    with cluster.client() as c:
        assert not any(p["local"] for p in c.providers())
        got = c.matmul(A, B, splits=splits).result(timeout=60)
        stats = c.stats()
    np.testing.assert_allclose(got, A @ B, rtol=1e-5, atol=1e-4)
    assert stats["local_arrays_sent"] == stats["local_uploads"] == stats["local_fetches"] == 0
    assert stats["array_bytes_raw_received"] >= A.nbytes + B.nbytes  # the upload came over the socket
    if splits == (3, 1):  # one B band, three shards over two providers: some shard reused a cached B
        assert stats["cached_arrays_reused"] >= 1


def test_a_client_may_keep_its_arrays_on_the_socket(shared_cluster):
    with shared_cluster.client(local_data=False) as c:
        before = c.stats()
        got = c.matmul(A, B, splits=(2, 1)).result(timeout=60)
        after = c.stats()
    np.testing.assert_allclose(got, A @ B, rtol=1e-5, atol=1e-4)
    assert after["local_uploads"] == before["local_uploads"]
    assert after["local_fetches"] == before["local_fetches"]
    assert after["array_bytes_raw_received"] - before["array_bytes_raw_received"] >= A.nbytes + B.nbytes


def test_a_provider_that_cannot_see_the_files_gets_bytes(make_cluster):
    """A provider proved it reads the head's probe file, but the job files are hidden from it (as in a
    container with part of the directory mounted): its shards fail with ``local_unavailable``, the head
    stops sending it references and resends the arrays over the socket, at no cost to the job."""
    cluster = make_cluster(0)
    head_dir = cluster.data_dir / "head"
    (head_dir / "jobs").mkdir(exist_ok=True)
    cluster.add_provider(wrapper=hidden_dir_wrapper(head_dir / "jobs"))
    cluster.wait_for_providers(1, timeout=30)
    with cluster.client() as c:
        assert c.providers()[0]["local"]
        got = c.matmul(A, B, splits=(2, 1)).result(timeout=60)
        provider, stats = c.providers()[0], c.stats()
    np.testing.assert_allclose(got, A @ B, rtol=1e-5, atol=1e-4)
    assert not provider["local"]
    assert stats["task_failures"] == 0 and stats["jobs_succeeded"] == 1  # not counted against the shard
    assert stats["array_bytes_raw_sent"] > 0 and stats["local_arrays_written"] == 0


def test_a_provider_on_another_machine_is_not_local(make_cluster):
    cluster = make_cluster(0)
    cluster.add_provider(wrapper=hidden_dir_wrapper(cluster.data_dir / "head"))
    cluster.wait_for_providers(1, timeout=30)
    with cluster.client() as c:
        assert not c.providers()[0]["local"]
        np.testing.assert_allclose(c.matmul(A, B, splits=(2, 1)).result(timeout=60), A @ B, rtol=1e-5, atol=1e-4)
        assert c.stats()["local_arrays_sent"] == 0


@pytest.mark.parametrize("files,message", [
    (lambda root: {"a": "0" * 32 + ".npy", "b": "1" * 32 + ".npy"}, "no uploaded file"),
    (lambda root: {"a": "../local-probe"}, "not an upload name"),
    (lambda root: {"a": "/etc/passwd"}, "not an upload name"),
    (lambda root: {"a": localdata.write_upload(root, A), "b": _garbage(root)}, "not a readable .npy"),
    (lambda root: {"a": localdata.write_upload(root, A), "b": localdata.write_upload(root, A)}, "inner dimensions"),
])
def test_bad_uploads_are_refused_and_removed(shared_cluster, files, message):
    root = shared_cluster.data_dir / "head"
    with shared_cluster.client() as c:
        jobs_before = len(c.jobs())
        msg = protocol.Submit(task_type="matmul", params={"splits": [1, 1]}, local_arrays=files(root))
        with pytest.raises(ValidationError, match=message):
            c.request(msg)
        assert len(c.jobs()) == jobs_before
    assert _uploads(shared_cluster) == []


def _garbage(root) -> str:
    name = "f" * 32 + ".npy"
    (root / localdata.UPLOADS / name).write_bytes(b"not numpy at all")
    return name


def test_long_poll_answers_when_the_job_ends(make_cluster):
    cluster = make_cluster(1, env={"ZCOMPUTE_FAULTS": "delay:compute=1.0"})
    with cluster.client() as c:
        job = c.matmul(A, B, splits=(1, 1))
        start = time.monotonic()
        held = c.status(job.id, wait=0.3)  # not done within the wait: the head answers at its end
        assert held["status"] in ("queued", "running") and 0.25 <= time.monotonic() - start < 1.0
        done = c.status(job.id, wait=10)
        took = time.monotonic() - start
        assert done["status"] == "succeeded" and took < 5  # answered at the job's end, not after 10 s
        assert c.status(job.id, wait=10)["status"] == "succeeded"  # a finished job: at once
        slow = c.matmul(A, B, splits=(1, 1))
        wait_until(lambda: c.status(slow.id)["status"] == "running", 10)
        start = time.monotonic()
        import threading
        answer = {}
        waiter = threading.Thread(target=lambda: answer.update(c.status(slow.id, wait=10)))
        waiter.start()
        time.sleep(0.1)
        slow.cancel()  # another thread's request is not blocked by the held one
        waiter.join(5)
        assert answer["status"] == "cancelled" and time.monotonic() - start < 3


def test_a_held_fetch_brings_the_outputs_when_the_job_ends(make_cluster):
    cluster = make_cluster(1, env={"ZCOMPUTE_FAULTS": "delay:compute=1.0"})
    with cluster.client() as c:
        job = c.matmul(A, B, splits=(2, 1))
        start = time.monotonic()
        early = c.held_request(protocol.Fetch(job_id=job.id, local=True, wait=0.3))
        assert early.job["status"] in ("queued", "running") and not early.arrays and not early.local_arrays
        assert 0.25 <= time.monotonic() - start < 1.0
        reply = c.held_request(protocol.Fetch(job_id=job.id, local=True, wait=10))
        assert reply.job["status"] == "succeeded" and time.monotonic() - start < 5  # at the end, not after 10 s
        np.testing.assert_allclose(c.local_files().array(reply.local_arrays["c"]), A @ B, rtol=1e-5, atol=1e-4)
        with pytest.raises(UnknownJobError):
            c.held_request(protocol.Fetch(job_id="nosuchjob", wait=1))
        with cluster.client(local_data=False) as remote:  # the same, with the arrays in the reply
            got = remote.held_request(protocol.Fetch(job_id=job.id, wait=10))
        np.testing.assert_allclose(got.arrays["c"], A @ B, rtol=1e-5, atol=1e-4)
