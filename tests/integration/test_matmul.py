"""Matmul through real head and provider processes over tcp loopback, checked against numpy."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from user_client import ValidationError
from common.errors import DecodeError
from tests.helpers import wait_until

SHAPES = [
    # (m, k, n, splits)
    (64, 32, 48, (2, 2)),
    (101, 37, 53, (3, 4)),  # the split divides neither dimension
    (1, 50, 1, (1, 1)),  # 1xk @ kx1
    (7, 5, 300, (1, 7)),
    (300, 5, 7, (7, 1)),  # row partition
    (257, 129, 65, "auto"),
    (20, 20, 20, (20, 20)),  # one element per block
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,k,n,splits", SHAPES)
def test_matmul_matches_numpy(shared_cluster, m, k, n, splits, dtype):
    rng = np.random.default_rng(m * 1000 + n)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    with shared_cluster.client() as c:
        job = c.matmul(a, b, splits=splits)
        got = job.result(timeout=60)
        summary = job.status()
    assert got.dtype == dtype and got.shape == (m, n)
    np.testing.assert_allclose(got, a @ b, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-4)
    if splits != "auto":
        assert summary["total"] == splits[0] * splits[1]
    assert summary["status"] == "succeeded" and summary["done"] == summary["total"]


def test_integer_inputs_follow_numpy_result_type(shared_cluster):
    a = np.arange(12, dtype=np.int32).reshape(3, 4)
    b = np.arange(8, dtype=np.int64).reshape(4, 2)
    with shared_cluster.client() as c:
        got = c.matmul(a, b, splits=(3, 2)).result(timeout=30)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, a @ b)


@pytest.mark.parametrize("a_shape,b_shape,a_dtype,splits,message", [
    ((4, 3), (4, 2), np.float32, (1, 1), "inner dimensions differ"),
    ((4, 3), (3, 2), np.float32, (5, 1), "larger than the result"),
    ((4, 3), (3, 2), np.float32, (1, 3), "larger than the result"),
    ((0, 3), (3, 2), np.float32, (1, 1), "empty"),
    ((4, 3), (3, 2), np.bool_, (1, 1), "numeric dtype"),
    ((4, 3), (3, 2), np.float32, (0, 1), "at least 1"),
    ((4, 3), (3, 2), np.float32, "2y2", "not 'auto'"),
])
def test_bad_matmul_is_refused_at_submit_and_changes_nothing(shared_cluster, a_shape, b_shape, a_dtype, splits,
                                                              message):
    with shared_cluster.client() as c:
        before = c.jobs()
        with pytest.raises(ValidationError, match=message):
            c.matmul(np.ones(a_shape, a_dtype), np.ones(b_shape, np.float32), splits=splits)
        assert c.jobs() == before


def test_non_numeric_arrays_cannot_even_be_sent(shared_cluster):
    with shared_cluster.client() as c, pytest.raises(DecodeError, match="cannot travel"):
        c.matmul(np.array([["a", "b"]]), np.ones((2, 1)))


def test_many_jobs_from_two_clients_at_once(shared_cluster):
    rng = np.random.default_rng(7)
    inputs = [(rng.standard_normal((80 + i, 40)), rng.standard_normal((40, 30 + i))) for i in range(8)]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def run(worker: int) -> None:
        try:
            with shared_cluster.client() as c:
                mine = range(worker, len(inputs), 2)
                jobs = {i: c.matmul(*inputs[i], splits=(2, 2)) for i in mine}  # all in flight first
                for i, job in jobs.items():
                    results[i] = job.result(timeout=60)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors
    assert sorted(results) == list(range(len(inputs)))
    for i, (a, b) in enumerate(inputs):
        np.testing.assert_allclose(results[i], a @ b, rtol=1e-12)


def test_shards_are_spread_over_both_providers(shared_cluster):
    a = np.ones((64, 64), np.float32)
    with shared_cluster.client() as c:
        job = c.matmul(a, a, splits=(8, 1))
        job.result(timeout=30)
        by_provider = job.status()["shards_by_provider"]
    assert sum(by_provider.values()) == 8
    assert len(by_provider) == 2


def test_providers_encode_their_results_for_the_link_the_head_reckons_with(tmp_path):
    """A head told the network runs at 20 Mbit/s passes that on in its heartbeat replies, so its providers
    compress result blocks that shrink only to ~0.9 (the codec's guess alone sends those raw)."""
    from user_client import LocalCluster

    noise = np.random.default_rng(5).standard_normal((300, 400)).astype(np.float32)
    for link_args, compressed in (([], False), (["--link-mbit", "20"], True)):
        # --no-local-data: results travel as bytes, as from another machine
        with LocalCluster(2, insecure=True, data_dir=tmp_path / str(compressed),
                          head_args=["--no-local-data", *link_args]) as cluster, cluster.client(timeout=30) as c:
            if link_args:  # every provider has had a heartbeat reply since it became ready
                seen = {p["name"]: p["last_seen"] for p in c.providers()}
                wait_until(lambda: all(p["last_seen"] > seen[p["name"]] for p in c.providers()), timeout=10)
            before = c.stats()
            np.testing.assert_allclose(c.matmul(noise, noise.T, splits=(4, 1)).result(timeout=60), noise @ noise.T,
                                       rtol=1e-4, atol=1e-3)
            after = c.stats()
        # the head received the inputs from the client (raw: the client was told no link speed), then the blocks
        inputs = 2 * noise.nbytes
        raw = after["array_bytes_raw_received"] - before["array_bytes_raw_received"] - inputs
        wire = after["array_bytes_wire_received"] - before["array_bytes_wire_received"] - inputs
        assert raw == noise.shape[0] ** 2 * 4  # each result block received once
        assert (wire < 0.95 * raw) is compressed, (link_args, wire, raw)
