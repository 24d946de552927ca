"""Tenant isolation: a client sees, fetches and cancels only its own jobs; admin and viewer see all."""

from __future__ import annotations

import numpy as np
import pytest

from common import protocol
from common.errors import UnknownJobError
from tests.helpers import wait_until
from tests.security.support import client, delta, invite, unique

A = np.arange(20.0).reshape(4, 5)


@pytest.fixture(scope="module")
def alice(cluster):
    with client(cluster, invite(cluster, "client", unique("alice")), timeout=5.0) as c:
        yield c


@pytest.fixture(scope="module")
def bob(cluster):
    with client(cluster, invite(cluster, "client", unique("bob")), timeout=5.0) as c:
        yield c


def test_alice_cannot_see_fetch_or_cancel_bobs_job(cluster, admin, alice, bob):
    mine = alice.matmul(A, A.T, splits=(2, 1))
    np.testing.assert_allclose(mine.result(timeout=30), A @ A.T)
    theirs = bob.submit("noop", {"shards": 4, "sleep": 0.3})  # still running while alice tries
    wait_until(lambda: theirs.status()["status"] == "running", 10)
    before = admin.stats()

    for attempt in (lambda: alice.job(theirs.id).status(),
                    lambda: alice.request(protocol.Fetch(job_id=theirs.id)),
                    lambda: alice.job(theirs.id).cancel(),
                    lambda: alice.job(theirs.id).delete()):
        with pytest.raises(UnknownJobError, match=f"no job '{theirs.id}'"):  # as if it did not exist
            attempt()
    assert delta(before, admin.stats(), "rejected_unknown_job") >= 4

    assert [j["job_id"] for j in alice.jobs()] == [mine.id]
    assert [j["job_id"] for j in alice.jobs(state="running")] == []
    assert [j["job_id"] for j in bob.jobs()] == [theirs.id]
    assert {mine.id, theirs.id} <= {j["job_id"] for j in admin.jobs()}
    with client(cluster, invite(cluster, "viewer")) as viewer:
        assert {mine.id, theirs.id} <= {j["job_id"] for j in viewer.jobs()}

    # bob's job was not touched: it finishes, and only bob (and admin) can fetch it
    assert theirs.wait(timeout=30)["status"] == "succeeded"
    with pytest.raises(UnknownJobError):  # finished now, and still not hers to delete
        alice.job(theirs.id).delete()
    np.testing.assert_array_equal(theirs.result(), np.ones(4, np.uint8))
    np.testing.assert_array_equal(admin.job(theirs.id).result(), np.ones(4, np.uint8))
    with pytest.raises(UnknownJobError):
        alice.job(theirs.id).result(timeout=5)


def test_a_replayed_request_id_does_not_leak_another_clients_job(cluster, alice, bob):
    """The head answers a resent submit idempotently, but only to the peer that sent it first."""
    request = protocol.Submit(task_type="matmul", params={"splits": [1, 1]}, arrays={"a": A, "b": A.T})
    bobs = bob.request(request).job_id
    replay = protocol.Submit(id=request.id, task_type="matmul", params={"splits": [1, 1]},
                             arrays={"a": A, "b": A.T})
    alices = alice.request(replay).job_id
    assert alices != bobs
    assert bob.request(protocol.Submit(id=request.id, task_type="matmul", params={}, arrays={"a": A, "b": A.T})
                       ).job_id == bobs  # bob's own resend is the idempotent one
    np.testing.assert_allclose(alice.job(alices).result(timeout=30), A @ A.T)
    with pytest.raises(UnknownJobError):
        alice.job(bobs).status()


def test_admin_can_cancel_anyones_job(cluster, admin, bob):
    job = bob.submit("noop", {"shards": 6, "sleep": 0.3})
    assert admin.job(job.id).cancel()["status"] == "cancelled"
    assert job.status()["status"] == "cancelled"
