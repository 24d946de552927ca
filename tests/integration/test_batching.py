"""Tiny shards travel in batches both ways; a batch is checked whole before any of it is used."""

from __future__ import annotations

import numpy as np
import zmq

from common import protocol, wire
from tests.helpers import wait_until


def test_thousands_of_tiny_shards_go_out_and_come_back_batched_each_exactly_once(shared_cluster):
    with shared_cluster.client() as c:
        before = c.stats()
        job = c.submit("noop", {"shards": 3000})
        assert job.wait(timeout=120)["status"] == "succeeded"
        done = job.result()  # the one output, "done"
        after = c.stats()
    assert done.shape == (3000,) and done.all()  # every shard merged
    assert after["batches_sent"] > before["batches_sent"]  # assignments went out together
    assert after["batches_received"] > before["batches_received"]  # and results came back together
    assert after["results_fenced"] == before["results_fenced"]  # nothing computed twice on a quiet cluster


def _push(cluster) -> zmq.Socket:
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(cluster.address.url("results"))
    return push


def test_a_batch_with_one_bad_item_is_refused_whole(shared_cluster):
    push = _push(shared_cluster)
    with shared_cluster.client() as c:
        job = c.submit("noop", {"shards": 2, "sleep": 0.5})
        rejected = c.stats()["rejected_bad_result"]
        good = protocol.Accepted(provider_id="intruder", task_id=f"{job.id}.0", attempt=0)
        not_for_this_socket = protocol.Submit(task_type="noop", params={})
        push.send_multipart(wire.encode(wire.batch([good, not_for_this_socket])))
        bad_frames = wire.encode(wire.batch([good, good]))
        bad_frames[0] = bad_frames[0].replace(b"accepted", b"acceptex", 1)  # an unknown type in item 0
        push.send_multipart(bad_frames)
        wait_until(lambda: c.stats()["rejected_bad_result"] >= rejected + 2, timeout=10)
        assert job.wait(timeout=30)["status"] == "succeeded"
        assert c.stats()["rejected_bad_result"] == rejected + 2  # one rejection per batch, not per item
    push.close()


def test_a_forged_batch_of_results_changes_nothing(shared_cluster):
    push = _push(shared_cluster)
    with shared_cluster.client() as c:
        job = c.submit("noop", {"shards": 2, "sleep": 0.3})
        forged = [protocol.Result(provider_id="intruder", task_id=f"{job.id}.{i}", attempt=0, elapsed=0.0,
                                  arrays={"data": np.zeros(3, np.uint8)}) for i in range(2)]
        push.send_multipart(wire.encode(wire.batch(forged)))
        assert job.wait(timeout=30)["status"] == "succeeded"
        assert job.status()["shards_by_provider"].keys() <= {"local-0", "local-1"}
    push.close()
