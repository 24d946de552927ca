"""Cluster behaviour with real processes: providers coming and going, scheduling, cancel, failures."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from common.errors import HeadUnreachable
from tests.helpers import wait_until
from user_client import Client, JobCancelled, JobFailed, QueueFullError, UnknownJobError, ValidationError


def test_idle_provider_killed_is_marked_dead_and_a_new_one_joins(make_cluster):
    cluster = make_cluster(2)
    with cluster.client() as c:
        victim = cluster.providers[0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(5)
        start = time.monotonic()
        wait_until(lambda: len(c.providers()) == 1, timeout=10)
        detection = time.monotonic() - start
        assert detection < 5, f"dead provider detected after {detection:.1f}s"
        cluster.add_provider()
        cluster.wait_for_providers(2, timeout=20)
        names = sorted(p["name"] for p in c.providers())
        assert names == ["local-1", "local-2"]
        a = np.arange(20.0).reshape(4, 5)
        job = c.matmul(a, a.T, splits=(4, 1))
        np.testing.assert_allclose(job.result(timeout=30), a @ a.T)
        assert set(job.status()["shards_by_provider"]) == {"local-1", "local-2"}


def test_auto_splits_over_decompose_and_faster_provider_takes_more(make_cluster):
    cluster = make_cluster(0)
    cluster.add_provider(env={"ZCOMPUTE_FAULTS": "delay:compute=0.5"})  # local-0: slow
    cluster.add_provider("--slots", "2")  # local-1: fast, two slots
    cluster.wait_for_providers(2)
    with cluster.client() as c:
        assert {p["name"]: p["slots"] for p in c.providers()} == {"local-0": 1, "local-1": 2}
        a = np.random.default_rng(1).standard_normal((400, 200))
        job = c.matmul(a, a.T, splits="auto")
        np.testing.assert_allclose(job.result(timeout=30), a @ a.T, rtol=1e-10)
        summary = job.status()
    assert summary["total"] == 2 * 3  # AUTO_SHARDS_PER_SLOT x ready slots
    assert summary["shards_by_provider"]["local-1"] >= 5


def test_cancel_a_running_job(make_cluster):
    cluster = make_cluster(2)
    with cluster.client() as c:
        job = c.submit("noop", {"shards": 20, "sleep": 0.5})
        wait_until(lambda: job.status()["status"] == "running", timeout=10)
        assert job.cancel()["status"] == "cancelled"
        with pytest.raises(JobCancelled):
            job.result(timeout=5)
        # the cluster carries on
        assert c.submit("noop", {"shards": 4}).wait(timeout=20)["status"] == "succeeded"


def test_poison_shard_fails_its_job_with_the_provider_error_and_others_continue(make_cluster):
    cluster = make_cluster(2)
    with cluster.client() as c:
        bad = c.submit("noop", {"shards": 4, "fail": [2]})
        good = c.submit("noop", {"shards": 6})
        with pytest.raises(JobFailed, match="noop shard asked to fail"):
            bad.result(timeout=30)
        assert "failed 3 times" in bad.status()["error"]
        assert good.wait(timeout=30)["status"] == "succeeded"


def test_queue_full_is_a_clear_error_and_changes_nothing(make_cluster):
    cluster = make_cluster(1, head_args=["--max-queued-jobs", "2"])
    with cluster.client() as c:
        jobs = [c.submit("noop", {"shards": 1, "sleep": 1.0}) for _ in range(2)]
        with pytest.raises(QueueFullError, match="queue full"):
            c.submit("noop", {"shards": 1})
        assert len(c.jobs()) == 2
        for job in jobs:
            job.wait(timeout=20)
        assert c.submit("noop", {"shards": 1}).wait(timeout=20)["status"] == "succeeded"


def test_priority_runs_first(make_cluster):
    cluster = make_cluster(1)
    with cluster.client() as c:
        blocker = c.submit("noop", {"shards": 1, "sleep": 0.5})
        low = c.submit("noop", {"shards": 3, "sleep": 0.05}, priority=0)
        high = c.submit("noop", {"shards": 3, "sleep": 0.05}, priority=5)
        for job in (blocker, low, high):
            job.wait(timeout=30)
        assert high.status()["finished_at"] < low.status()["finished_at"]


def test_unknown_job_and_unknown_task_type_are_clear_errors(shared_cluster):
    with shared_cluster.client() as c:
        with pytest.raises(UnknownJobError, match="no job 'nope'"):
            c.job("nope").status()
        with pytest.raises(ValidationError, match="unknown task type .fft."):
            c.submit("fft", {})


def test_client_gives_up_on_a_dead_head_after_its_retries():
    from common.lifecycle import free_port_base

    base = free_port_base()
    start = time.monotonic()
    with Client(f"tcp://127.0.0.1:{base}", insecure=True, timeout=0.2, retries=2) as c:
        with pytest.raises(HeadUnreachable, match="after 3 tries"):
            c.providers()
    assert 0.5 < time.monotonic() - start < 5


def test_stop_leaves_nothing_running(make_cluster):
    cluster = make_cluster(2)
    procs = [cluster.head, *cluster.providers]
    cluster.stop()
    assert all(p.poll() is not None for p in procs)
    assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]


def test_providers_sharing_one_join_string_get_only_their_own_shards(make_cluster):
    cluster = make_cluster(0, insecure=False)
    shared = cluster.invite("provider", "shared")  # as docker-compose replicas do
    cluster.add_provider(env={"ZCOMPUTE_JOIN": shared})
    cluster.add_provider(env={"ZCOMPUTE_JOIN": shared})
    cluster.wait_for_providers(2)
    with cluster.client() as c:
        job = c.submit("noop", {"shards": 20, "sleep": 0.02})
        assert job.wait(timeout=30)["status"] == "succeeded"
        # each shard computed once: neither provider also received the other's tasks
        computed = wait_until(lambda: (n := sum(p["computed"] for p in c.providers())) >= 20 and n, timeout=5)
        time.sleep(0.5)
        assert sum(p["computed"] for p in c.providers()) == computed == 20


def test_finished_jobs_are_deleted_on_request_and_after_keep_finished(make_cluster):
    cluster = make_cluster(2, head_args=["--keep-finished", "2"])
    jobs_dir = cluster.data_dir / "head" / "jobs"
    with cluster.client() as c:
        a = np.arange(20.0).reshape(4, 5)
        kept = c.matmul(a, a.T, splits=(2, 1))
        np.testing.assert_allclose(kept.result(timeout=30), a @ a.T)
        running = c.submit("noop", {"shards": 4, "sleep": 0.5})
        with pytest.raises(ValidationError, match="cancel it first"):
            running.delete()
        assert running.wait(timeout=30)["status"] == "succeeded"  # the refusal changed nothing
        running.delete()
        assert not (jobs_dir / running.id).exists()
        with pytest.raises(UnknownJobError):
            running.status()
        assert running.id not in {j["job_id"] for j in c.jobs()}
        assert c.stats()["jobs_deleted"] >= 1  # the other one may have expired already
        # the other one goes by itself, about 2 s after it finished
        wait_until(lambda: kept.id not in {j["job_id"] for j in c.jobs()}, timeout=15)
        assert c.stats()["jobs_deleted"] == 2
        wait_until(lambda: not list(jobs_dir.iterdir()), timeout=10)  # files are removed on a thread
    cluster.kill_head()
    cluster.start_head()
    with cluster.client() as c:
        wait_until(lambda: c.stats() is not None, timeout=20)
        assert c.jobs() == []  # neither came back with the restarted head
