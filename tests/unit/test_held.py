"""Held status and fetch requests (``head_node.api``) on a head without sockets."""

from __future__ import annotations

import time

import pytest

from common import protocol
from common.config import HeadConfig
from head_node.api import Held
from head_node.auth import INSECURE
from head_node.server import HeadNode


@pytest.fixture
def head(tmp_path):
    node = HeadNode(HeadConfig(data_dir=tmp_path, insecure=True, http_port=0))
    node.publish = lambda provider_id, msg: None  # no task socket
    yield node
    node.close()


def test_a_held_fetch_waits_and_a_failing_answer_spoils_no_other(head):
    api = head.api
    job_id = api._on_submit(protocol.Submit(task_type="noop", params={"shards": 2}), INSECURE).job_id
    held = api._on_fetch(protocol.Fetch(job_id=job_id, wait=5), INSECURE)
    assert isinstance(held, Held) and held.deadline > time.monotonic() + 4  # unfinished: not answered yet
    api.hold(held, [b"fetch"], "r1")

    def boom(job):
        raise OSError("disk gone")

    api.hold(Held(job_id, time.monotonic() + 5, boom), [b"broken"], "r2")
    api.hold(api._on_status(protocol.Status(job_id=job_id, wait=5), INSECURE), [b"status"], "r3")
    assert api.due(time.monotonic()) == []  # before the end and the deadline: all still held
    head.jobs[job_id].status = "succeeded"
    replies = {envelope[0]: reply for envelope, reply in api.due(time.monotonic(), finished=job_id)}
    assert isinstance(replies[b"fetch"], protocol.JobResult) and replies[b"fetch"].id == "r1"
    assert replies[b"fetch"].arrays["done"].shape == (2,)  # the outputs ride with the held reply
    assert isinstance(replies[b"broken"], protocol.Error) and replies[b"broken"].code == "internal"
    assert isinstance(replies[b"status"], protocol.JobStatus) and replies[b"status"].job["status"] == "succeeded"
    assert head.counters["internal_errors"] == 1


def test_a_held_fetch_is_answered_at_its_deadline_without_outputs(head):
    api = head.api
    job_id = api._on_submit(protocol.Submit(task_type="noop", params={"shards": 1}), INSECURE).job_id
    api.hold(api._on_fetch(protocol.Fetch(job_id=job_id, wait=0.05), INSECURE), [b"e"], "r1")
    time.sleep(0.06)
    [(envelope, reply)] = api.due(time.monotonic())
    assert reply.job["status"] in ("queued", "running") and not reply.arrays and not reply.local_arrays
