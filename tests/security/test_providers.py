"""Providers: a provider reports only shards leased to it and speaks only for its own provider id."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import zmq

from common import protocol
from common.errors import AuthError
from common.security import topic_for
from tests.helpers import wait_until
from tests.security.support import (
    RawPeer, delta, head_log_events, invite, register_msg, unique, wait_counted,
)

# each shard takes 0.5 s, so the leases are live while the intruder reports
CLUSTER = {"providers": 2, "env": {"ZCOMPUTE_FAULTS": "delay:compute=0.5"}}
A = np.random.default_rng(4).standard_normal((6, 5))


@pytest.fixture(scope="module")
def intruder(cluster):
    """A provider peer with a valid token that registered its own provider id (never ready: no shards)."""
    join = invite(cluster, "provider", unique("intruder"))
    provider_id = uuid.uuid4().hex
    with RawPeer(cluster) as raw:
        reply = raw.request("registration", join, register_msg(provider_id, name="intruder"))
    assert isinstance(reply, protocol.Registered), reply
    return join, provider_id


def _running_job(admin, rows: int = 2):
    job = admin.matmul(A, A.T, splits=(rows, 1))
    wait_until(lambda: job.status()["status"] == "running", 10)
    return job


def _block(job_id: str, index: int, provider_id: str, value: float = 0.0) -> protocol.Result:
    return protocol.Result(provider_id=provider_id, task_id=f"{job_id}.{index}", attempt=0, elapsed=0.1,
                           arrays={"c": np.full((3, 6), value)})


def _real_providers(admin) -> dict[str, str]:
    return {p["name"]: p["provider_id"] for p in admin.providers() if p["name"].startswith("local-")}


def test_result_for_a_shard_leased_to_another_provider_is_fenced(cluster, admin, raw, intruder):
    join, intruder_id = intruder
    before = admin.stats()
    job = _running_job(admin)
    forged = [_block(job.id, i, intruder_id, value=666.0) for i in (0, 1)]
    raw.push(join, [*forged,
                    protocol.Accepted(provider_id=intruder_id, task_id=f"{job.id}.0", attempt=0),
                    protocol.Failure(provider_id=intruder_id, task_id=f"{job.id}.1", attempt=0, error="forged")])
    after = wait_counted(admin, before, "results_fenced", 2)
    np.testing.assert_allclose(job.result(timeout=30), A @ A.T)  # the genuine blocks, not 666
    summary = job.status()
    assert summary["reruns"] == 0  # the forged failure did not requeue the shard
    assert set(summary["shards_by_provider"]) <= {"local-0", "local-1"}
    assert delta(before, after, "rejected_auth") == 0  # it may speak for itself; only fencing stops it
    dropped = [e for e in head_log_events(cluster) if e.get("event") == "task.result_dropped"
               and e.get("provider_id") == intruder_id and e.get("job_id") == job.id]
    assert len(dropped) >= 2 and all(e["reason"] == "not the lease holder" for e in dropped)


def test_result_in_the_name_of_another_provider_is_refused_and_counted(cluster, admin, raw, intruder):
    join, _ = intruder
    victims = _real_providers(admin)
    before = admin.stats()
    job = _running_job(admin)
    # the intruder claims to be each real provider, for each shard (one of them holds the lease)
    raw.push(join, [_block(job.id, i, pid, value=666.0) for pid in victims.values() for i in (0, 1)]
             + [protocol.Failure(provider_id=pid, task_id=f"{job.id}.{i}", attempt=0, error="forged")
                for pid in victims.values() for i in (0, 1)])
    after = wait_counted(admin, before, "rejected_auth", 8)
    assert delta(before, after, "auth_failures") >= 8
    np.testing.assert_allclose(job.result(timeout=30), A @ A.T)
    assert job.status()["reruns"] == 0
    assert any(e.get("event") == "message.rejected" and "belongs to another peer" in e.get("detail", "")
               for e in head_log_events(cluster))


def test_result_from_an_unregistered_provider_id_is_refused(cluster, admin, raw):
    join = invite(cluster, "provider")
    before = admin.stats()
    job = _running_job(admin)
    raw.push(join, [_block(job.id, 0, uuid.uuid4().hex, value=666.0)])
    wait_counted(admin, before, "rejected_bad_result", 1)
    np.testing.assert_allclose(job.result(timeout=30), A @ A.T)


@pytest.mark.parametrize("kind", ["heartbeat", "register", "deregister"])
def test_requests_in_the_name_of_another_provider_are_refused(cluster, admin, raw, intruder, kind):
    join, _ = intruder
    victims = _real_providers(admin)
    before = admin.stats()
    for pid in victims.values():
        msg, role = {
            "heartbeat": (protocol.Heartbeat(provider_id=pid, epoch=admin.stats()["epoch"], running=[], outbox=[],
                                             free_slots=0, draining=True), "heartbeat"),
            "register": (register_msg(pid, name="hijacked", slots=256), "registration"),
            "deregister": (protocol.Deregister(provider_id=pid, reason="hijacked"), "registration"),
        }[kind]
        with pytest.raises(AuthError, match=f"^provider {pid} belongs to another peer$"):
            raw.channel(role, join).request(msg)
    assert delta(before, admin.stats(), "auth_failures") >= len(victims)
    # the real providers are as they were, and still work
    now = {p["provider_id"]: p for p in admin.providers()}
    for name, pid in victims.items():
        assert now[pid]["name"] == name and now[pid]["state"] == "ready" and now[pid]["slots"] == 1
    job = admin.matmul(A, A.T, splits=(2, 1))
    np.testing.assert_allclose(job.result(timeout=30), A @ A.T)


def test_failure_for_a_shard_leased_to_another_provider_is_counted_as_fenced(cluster, admin, raw, intruder):
    join, intruder_id = intruder
    job = _running_job(admin)
    before = admin.stats()
    raw.push(join, [protocol.Failure(provider_id=intruder_id, task_id=f"{job.id}.{i}", attempt=0, error="forged")
                    for i in (0, 1)])
    np.testing.assert_allclose(job.result(timeout=30), A @ A.T)
    after = admin.stats()
    assert delta(before, after, "task_failures") == 0
    assert delta(before, after, "results_fenced") >= 2


def test_a_provider_cannot_read_shards_published_to_another(cluster, admin, raw, intruder):
    """The task socket applies a subscription only to the subscriber's own topic (from its CURVE key)."""
    join, intruder_id = intruder
    before = admin.stats()
    sub = raw.socket(zmq.SUB, "tasks", join)
    sub.setsockopt(zmq.SUBSCRIBE, b"")  # everything: refused by the head
    own = topic_for(join.public, intruder_id).encode()
    sub.setsockopt(zmq.SUBSCRIBE, own)  # its own topic: allowed
    # our own readiness probes (we never acknowledge them) show the allowed subscription is live
    wait_until(lambda: sub.poll(100) and sub.recv_multipart()[0] == own, 10)
    for provider_id in _real_providers(admin).values():  # the topics other providers' shards go to
        sub.setsockopt(zmq.SUBSCRIBE, provider_id.encode())
    job = _running_job(admin)
    job.result(timeout=30)
    foreign = set()
    while sub.poll(0):
        topic = sub.recv_multipart()[0]
        if topic != own:
            foreign.add(topic)
    assert foreign == set(), f"received messages published to {sorted(foreign)}"
    wait_until(lambda: delta(before, admin.stats(), "subscriptions_refused") >= 3, 5)
