"""Malformed frames on every head socket: a clear error reply where there is one, no crash, no state change."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq

from common import protocol, wire


def raw_request(url: str, frames: list[bytes], timeout_ms: int = 5000) -> protocol.Message:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    try:
        sock.send_multipart(frames)
        assert sock.poll(timeout_ms), "the head did not answer"
        return wire.decode(sock.recv_multipart())
    finally:
        sock.close()


def header(**overrides) -> bytes:
    h = {"v": 1, "type": "status", "id": "req-1", "token": None, "body": {"job_id": "x"}, "arrays": []}
    h.update(overrides)
    return msgpack.packb(h)


BAD_FRAMES = {
    "not msgpack": [b"\xc1\xc1\xc1"],
    "not a map": [msgpack.packb([1, 2, 3])],
    "wrong version": [header(v=99)],
    "unknown type": [header(type="launch_missiles")],
    "missing field": [header(body={})],
    "unknown field": [header(body={"job_id": "x", "extra": 1})],
    "wrong field type": [header(body={"job_id": 5})],
    "array count mismatch": [header(arrays=[{"name": "a", "dtype": "<f4", "shape": [1], "codec": "raw",
                                             "nbytes": 4}])],
    "object dtype": [header(type="submit", body={"task_type": "matmul", "params": {}},
                            arrays=[{"name": "a", "dtype": "|O", "shape": [1], "codec": "raw", "nbytes": 8}]),
                     b"\x00" * 8],
    "shape/bytes mismatch": [header(type="submit", body={"task_type": "matmul", "params": {}},
                                    arrays=[{"name": "a", "dtype": "<f4", "shape": [4], "codec": "raw",
                                             "nbytes": 16}]), b"\x00" * 12],
    "message type for another socket": [header(type="heartbeat_reply", body={"epoch": "e", "known": True})],
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_api_socket_answers_bad_frames_with_a_clear_error(shared_cluster, case):
    url = shared_cluster.address.url("api")
    with shared_cluster.client() as c:
        before = c.jobs()
        reply = raw_request(url, BAD_FRAMES[case])
        assert isinstance(reply, protocol.Error)
        assert reply.code == "bad_message" and reply.message
        assert c.jobs() == before
        assert len(c.providers()) == 2  # still up, still serving


@pytest.mark.parametrize("role", ["registration", "heartbeat"])
def test_provider_sockets_answer_garbage_with_an_error(shared_cluster, role):
    reply = raw_request(shared_cluster.address.url(role), [b"garbage"])
    assert isinstance(reply, protocol.Error) and reply.code == "bad_message"
    reply = raw_request(shared_cluster.address.url(role), wire.encode(protocol.ListJobs()))
    assert isinstance(reply, protocol.Error) and "not accepted on this socket" in reply.message


def test_registration_with_bad_values_is_refused(shared_cluster):
    msg = protocol.Register(provider_id="p" * 100, name="x", platform="linux", devices=[], memory_bytes=0, cores=1,
                            slots=0, gflops=1.0, torch=False, task_types=["matmul"], version="0")
    reply = raw_request(shared_cluster.address.url("registration"), wire.encode(msg))
    assert isinstance(reply, protocol.Error) and "registration refused" in reply.message
    with shared_cluster.client() as c:
        assert len(c.providers()) == 2


def test_garbage_and_forged_results_on_the_results_socket_change_nothing(shared_cluster):
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(shared_cluster.address.url("results"))
    with shared_cluster.client() as c:
        job = c.submit("noop", {"shards": 2, "sleep": 0.3})
        push.send_multipart([b"\x00garbage"])
        push.send_multipart([b""])
        # a result for a shard nobody leased to this (unknown) provider
        forged = protocol.Result(provider_id="intruder", task_id=f"{job.id}.0", attempt=0, elapsed=0.0,
                                 arrays={"data": np.zeros(3, np.uint8)})
        push.send_multipart(wire.encode(forged))
        assert job.wait(timeout=30)["status"] == "succeeded"
        assert job.status()["shards_by_provider"].keys() <= {"local-0", "local-1"}
        assert len(c.providers()) == 2
    push.close()


def test_unknown_heartbeat_is_told_to_register_again(shared_cluster):
    msg = protocol.Heartbeat(provider_id="stranger", epoch="old", running=[], outbox=[], free_slots=1)
    reply = raw_request(shared_cluster.address.url("heartbeat"), wire.encode(msg))
    assert isinstance(reply, protocol.HeartbeatReply) and reply.known is False


@pytest.mark.parametrize("task_type,params,priority,message", [
    ("noop", {"shards": 1, "sleep": float("nan")}, 0, "sleep must be seconds from 0 to 3600"),
    ("noop", {"shards": 1, "sleep": float("inf")}, 0, "sleep must be seconds"),
    ("noop", {"shards": 1, "sleep": 1e308}, 0, "sleep must be seconds"),  # would hold a slot for good
    ("noop", {"shards": 2, "sleep": {"0": "abc"}}, 0, "sleep must be seconds"),
    ("noop", {"shards": 3, "bogus": 1}, 0, "noop: unknown parameters ['bogus']"),
    ("matmul", {"splits": [1, 1], "split": 2}, 0, "matmul: unknown parameters ['split']"),
    ("noop", {"shards": 1}, 5000, "priority must be an integer from -1000 to 1000"),
])
def test_submit_values_a_task_cannot_run_are_refused(shared_cluster, task_type, params, priority, message):
    """Sent as the head's own protocol (a client of any version): refused with the reason, nothing queued."""
    arrays = {"a": np.ones((2, 2)), "b": np.ones((2, 2))} if task_type == "matmul" else {}
    msg = protocol.Submit(task_type=task_type, params=params, priority=priority, arrays=arrays)
    with shared_cluster.client() as c:
        before = c.jobs()
        reply = raw_request(shared_cluster.address.url("api"), wire.encode(msg))
        assert isinstance(reply, protocol.Error) and reply.code == "invalid", reply
        assert message in reply.message
        assert c.jobs() == before


def test_the_python_client_refuses_a_priority_the_head_would_not_take(shared_cluster):
    from user_client import ValidationError

    with shared_cluster.client() as c:
        for priority in (10**30, 1001, 1.5):  # 10**30 would not even encode
            with pytest.raises(ValidationError, match="priority must be an integer from -1000 to 1000"):
                c.submit("noop", {"shards": 1}, priority=priority)
