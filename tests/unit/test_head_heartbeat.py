"""The head's heartbeat handling (``head_node.providers``) on a head without sockets: messages in, replies out."""

from __future__ import annotations

import time
import types
import uuid

import pytest

from common import codec, protocol, wire
from common.config import HeadConfig
from head_node.auth import INSECURE
from head_node.events import Republish, Tick
from head_node.server import HeadNode


@pytest.fixture
def head(tmp_path):
    node = HeadNode(HeadConfig(data_dir=tmp_path, insecure=True, http_port=0))
    node.published = []
    node.publish = lambda provider_id, msg: node.published.append((provider_id, msg))  # no task socket
    yield node
    node.close()


def ready_provider(head: HeadNode) -> str:
    pid = uuid.uuid4().hex
    channel = head.providers
    channel._on_register(protocol.Register(
        provider_id=pid, name="p", platform="linux", devices=[{"kind": "cpu", "name": "cpu", "memory_bytes": 0}],
        memory_bytes=0, cores=1, slots=1, gflops=1.0, torch=False, task_types=["noop"], version="test"), INSECURE)
    channel._on_probe_ack(protocol.ProbeAck(provider_id=pid, probe_id=channel.registry[pid].probe_id), INSECURE)
    return pid


def heartbeat(head: HeadNode, pid: str, running=(), outbox=()) -> protocol.HeartbeatReply:
    return head.providers._on_heartbeat(protocol.Heartbeat(
        provider_id=pid, epoch=head.epoch, running=list(running), outbox=list(outbox), free_slots=0), INSECURE)


def test_a_task_in_the_heartbeat_outbox_is_not_republished(head):
    pid = ready_provider(head)
    head.api.handlers[protocol.MsgType.SUBMIT](protocol.Submit(task_type="noop", params={"shards": 1}), INSECURE)
    (_, task), = [(p, m) for p, m in head.published if isinstance(m, protocol.Task)]
    key = f"{task.task_id}#{task.attempt}"
    # the provider finished it (its result is still queued at the head) and says so in a heartbeat
    reply = heartbeat(head, pid, outbox=[key])
    assert reply.known and reply.acked == []  # not merged yet: the provider keeps it
    later = time.monotonic() + 2 * head.config.timing.ack_timeout  # past the ack deadline, not dead yet
    assert not [a for a in head.sched.handle(Tick(later)) if isinstance(a, Republish)]


def test_a_task_never_taken_is_republished(head):
    pid = ready_provider(head)
    head.api.handlers[protocol.MsgType.SUBMIT](protocol.Submit(task_type="noop", params={"shards": 1}), INSECURE)
    heartbeat(head, pid)  # alive, but the task message was lost on its way
    later = time.monotonic() + 2 * head.config.timing.ack_timeout
    republished = [a for a in head.sched.handle(Tick(later)) if isinstance(a, Republish)]
    assert [(a.provider_id, a.reason) for a in republished] == [(pid, "no_ack")]


def test_a_merged_result_is_acknowledged_once_journaled(head):
    pid = ready_provider(head)
    head.api.handlers[protocol.MsgType.SUBMIT](protocol.Submit(task_type="noop", params={"shards": 2}), INSECURE)
    (_, task), = [(p, m) for p, m in head.published if isinstance(m, protocol.Task)]
    key = f"{task.task_id}#{task.attempt}"
    head.providers._on_result(protocol.Result(provider_id=pid, task_id=task.task_id, attempt=task.attempt,
                                              elapsed=0.01), INSECURE)
    assert not head.committed(task.job_id, task.index)
    assert heartbeat(head, pid, outbox=[key]).acked == []  # merged but not yet journaled: next beat
    head.commit.start()
    assert heartbeat(head, pid, outbox=[key]).acked == []  # its file on its way to disk: not journaled yet
    head.commit.flush()
    assert heartbeat(head, pid, outbox=[key]).acked == [key]


@pytest.mark.parametrize("count", [1, 700])
def test_long_listings_come_a_page_at_a_time(head, count):
    for _ in range(count):
        ready_provider(head)
    list_providers = head.api.handlers[protocol.MsgType.LIST_PROVIDERS]
    seen, offset, pages = [], 0, 0
    while offset is not None:
        reply = list_providers(protocol.ListProviders(offset=offset), INSECURE)
        frames = wire.encode(reply)
        assert len(bytes(frames[0])) < head.config.limits.max_header_bytes  # each page fits in a reply
        seen += [p["provider_id"] for p in reply.providers]
        offset, pages = reply.next_offset, pages + 1
    assert sorted(seen) == sorted(head.providers.registry) and len(set(seen)) == count
    assert pages == 1 if count == 1 else pages >= 2


def test_heartbeats_are_served_between_the_steps_of_a_large_submit(head):
    pids = [ready_provider(head) for _ in range(3)]
    served = []

    def serve():  # what the loop does there: answer the heartbeats waiting in its queue
        served.append(heartbeat(head, pids[len(served) % 3]).known)

    head.serve_heartbeats = serve
    job_id = head.api.handlers[protocol.MsgType.SUBMIT](
        protocol.Submit(task_type="noop", params={"shards": 50}), INSECURE).job_id
    assert len(served) >= 3 and all(served)
    leased = [m for _, m in head.published if isinstance(m, protocol.Task)]
    # a heartbeat in between may already have leased shards; no provider got more than its one slot
    assert sorted(p for p, m in head.published if isinstance(m, protocol.Task)) == sorted(pids)
    assert len({m.task_id for m in leased}) == 3 and head.jobs[job_id].status in ("queued", "running")


def test_a_remote_provider_s_link_is_measured_once_it_is_ready(head):
    from head_node import linkprobe

    head.outbox = types.SimpleNamespace(link_bits={})  # what the loop's encoder reads per topic
    pid = ready_provider(head)  # not on the head's machine: no local proof in its probe ack
    probes = [m for _, m in head.published if isinstance(m, protocol.Probe) and m.probe_id.startswith("link-")]
    assert [m.arrays["pad"].nbytes if m.arrays else 0 for m in probes] == [0, *[linkprobe.PROBE_BYTES] * 2]
    assert head.providers.registry[pid].summary()["link_mbit"] is None
    assert heartbeat(head, pid).link_mbit is None  # not measured yet: the provider keeps its guess
    # its acknowledgements came back in one batch; its own clock says each big one took 42 ms
    for probe, received in zip(probes, (500.0, 500.042, 500.084)):
        head.providers._on_probe_ack(protocol.ProbeAck(provider_id=pid, probe_id=probe.probe_id, received=received),
                                     INSECURE)
    info = head.providers.registry[pid]
    assert info.summary()["link_mbit"] == pytest.approx(99.9, abs=0.1)  # 512 KiB / 42 ms
    assert head.outbox.link_bits == {head.providers.topic(pid): info.link_bits} and info.state == "ready"
    assert heartbeat(head, pid).link_mbit == pytest.approx(99.9, abs=0.1)  # its results are encoded for it too
    # probes not all acknowledged (one dropped at the high-water mark) go out again after a while
    head.published.clear()
    retry = head.providers.links.start(pid)
    head.providers.links._pending[pid].sent -= linkprobe.RETRY_AFTER
    head.providers.send_probes()
    again = [m for _, m in head.published if isinstance(m, protocol.Probe) and m.probe_id.startswith("link-")]
    assert len(again) == 3 and not {m.probe_id for m in again} & {m.probe_id for m in retry}
    head.providers.links.forget(pid)
    head.providers._on_register(protocol.Register(  # registers afresh: measured again once ready
        provider_id=pid, name="p", platform="linux", devices=[{"kind": "cpu", "name": "cpu", "memory_bytes": 0}],
        memory_bytes=0, cores=1, slots=1, gflops=1.0, torch=False, task_types=["noop"], version="test"), INSECURE)
    assert head.outbox.link_bits == {} and not head.providers.links.owns(pid, probes[0].probe_id)
    assert heartbeat(head, pid).link_mbit is None
    head.outbox.link_bits[head.providers.topic(pid)] = 1e9
    head.providers.mark_dead(pid)
    assert head.outbox.link_bits == {}  # its figure goes with it


def test_link_probes_go_out_before_the_first_task_and_only_for_auto(tmp_path):
    for compression, probed in (("auto", True), ("raw", False)):
        node = HeadNode(HeadConfig(data_dir=tmp_path / compression, insecure=True, http_port=0,
                                   compression=compression))
        node.published = []
        node.publish = lambda provider_id, msg, node=node: node.published.append((provider_id, msg))
        try:
            node.api.handlers[protocol.MsgType.SUBMIT](protocol.Submit(task_type="noop", params={"shards": 1}),
                                                       INSECURE)
            ready_provider(node)
            kinds = [("link" if m.probe_id.startswith("link-") else "probe") if isinstance(m, protocol.Probe)
                     else type(m).__name__ for _, m in node.published]
            assert kinds == (["link"] * 3 if probed else []) + ["Task"], kinds
        finally:
            node.close()


def test_no_link_probe_when_the_operator_gave_the_link_speed(tmp_path):
    node = HeadNode(HeadConfig(data_dir=tmp_path, insecure=True, http_port=0, link_mbit=100.0))
    node.published = []
    node.publish = lambda provider_id, msg: node.published.append((provider_id, msg))
    try:
        pid = ready_provider(node)
        assert not [m for _, m in node.published if isinstance(m, protocol.Probe) and m.probe_id.startswith("link-")]
        assert heartbeat(node, pid).link_mbit == 100.0  # the operator's figure goes to the provider too
        node.providers.registry[pid].local = True
        assert heartbeat(node, pid).link_mbit is None  # on the head's machine: its results go by file
    finally:
        node.close()
        codec.set_link_speed(None)  # the head set it for the whole process


def test_uploads_a_client_never_submitted_are_removed_by_the_running_head(head, tmp_path):
    """Not only at start: a client stopped between writing its arrays and submitting them leaves files that
    the head removes once they are an hour old, from its timer."""
    import os

    import numpy as np

    from common import localdata

    def upload(age: float) -> str:
        name = localdata.write_upload(tmp_path, np.ones(10))
        os.utime(tmp_path / localdata.UPLOADS / name, (0, 0) if age else None)
        return name

    upload(age=2 * 3600)
    fresh = upload(age=0)
    head.tick()  # the first tick looks (as at start)
    assert os.listdir(tmp_path / localdata.UPLOADS) == [fresh]
    upload(age=2 * 3600)  # left behind later
    head.tick()
    assert len(os.listdir(tmp_path / localdata.UPLOADS)) == 2  # not due yet
    head.retention._next_uploads = 0.0  # 10 minutes on
    head.tick()
    assert os.listdir(tmp_path / localdata.UPLOADS) == [fresh]
