"""matmul: block bounds, the splits parameter, validation, and plan/inputs/compute/merge against numpy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ValidationError
from common.tasks.base import Shard
from common.tasks.matmul import AUTO_SHARDS_PER_SLOT, MAX_SPLITS, MatmulTask, block_bounds, parse_splits


class FakeJob:
    """An in-memory JobView: inputs in a dict, outputs allocated on demand."""

    def __init__(self, params: dict[str, Any], arrays: dict[str, np.ndarray], ready_slots: int = 1):
        self.job_id = "job1"
        self.params = params
        self.state: dict[str, Any] = {}
        self.ready_slots = ready_slots
        self._inputs = arrays
        self._outputs: dict[str, np.ndarray] = {}

    def input(self, name: str) -> np.ndarray:
        return self._inputs[name]

    def input_names(self) -> list[str]:
        return sorted(self._inputs)

    def allocate(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        # NaN-filled (or max) so a block that is never merged shows up in the comparison
        fill = np.nan if np.dtype(dtype).kind in "fc" else np.iinfo(dtype).max
        self._outputs[name] = np.full(shape, fill, dtype=dtype)
        return self._outputs[name]

    def output(self, name: str) -> np.ndarray:
        return self._outputs[name]


# -- block_bounds -------------------------------------------------------------------


@st.composite
def n_and_parts(draw):
    n = draw(st.integers(min_value=1, max_value=10_000))
    return n, draw(st.integers(min_value=1, max_value=min(n, 500)))


@settings(max_examples=200, deadline=None)
@given(n_and_parts())
def test_block_bounds_properties(np_):
    n, parts = np_
    bounds = block_bounds(n, parts)
    assert len(bounds) == parts
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (_, end), (start, _) in zip(bounds, bounds[1:]):
        assert end == start  # contiguous, no overlap
    sizes = [e - s for s, e in bounds]
    assert min(sizes) >= 1
    assert max(sizes) - min(sizes) <= 1
    size, extra = divmod(n, parts)
    assert sizes == [size + 1] * extra + [size] * (parts - extra)  # the first n % parts are the longer ones
    for b, (start, end) in enumerate(bounds):
        assert start == b * size + min(b, extra)
        assert end - start == size + (b < extra)


@pytest.mark.parametrize(("n", "parts", "want"), [
    (10, 3, [(0, 4), (4, 7), (7, 10)]),
    (7, 7, [(i, i + 1) for i in range(7)]),
    (5, 1, [(0, 5)]),
    (8, 4, [(0, 2), (2, 4), (4, 6), (6, 8)]),
    (11, 4, [(0, 3), (3, 6), (6, 9), (9, 11)]),
])
def test_block_bounds_examples(n, parts, want):
    assert block_bounds(n, parts) == want


# -- parse_splits -------------------------------------------------------------------


@pytest.mark.parametrize(("value", "want"), [
    ("auto", "auto"),
    (None, "auto"),
    (4, (4, 1)),
    ("2x3", (2, 3)),
    ("2X3", (2, 3)),
    ("2×3", (2, 3)),
    (" 2 x 3 ", (2, 3)),
    ([3, 2], (3, 2)),
    ((1, 5), (1, 5)),
    ([MAX_SPLITS, MAX_SPLITS], (MAX_SPLITS, MAX_SPLITS)),
])
def test_parse_splits_accepts(value, want):
    assert parse_splits(value) == want


def test_parse_splits_accepts_a_row_count_as_text():
    assert parse_splits("4") == (4, 1)


@pytest.mark.parametrize(("value", "match"), [
    ("fast", "is not 'auto', N or RxC"),
    ("x", "is not 'auto', N or RxC"),
    ("2x", "is not 'auto', N or RxC"),
    ("2.5x2", "is not 'auto', N or RxC"),
    ("2x3x4", "is not 'auto', N or a pair"),
    (True, "is not 'auto', N or a pair"),
    (2.0, "is not 'auto', N or a pair"),
    ([2], "is not 'auto', N or a pair"),
    ([2, 2, 2], "is not 'auto', N or a pair"),
    ([2, "3"], "is not 'auto', N or a pair"),
    ([2, True], "is not 'auto', N or a pair"),
    ({"rows": 2}, "is not 'auto', N or a pair"),
    (0, "both counts must be at least 1"),
    ([2, 0], "both counts must be at least 1"),
    ("-1x2", "both counts must be at least 1"),
    ([MAX_SPLITS + 1, 1], f"at most {MAX_SPLITS} per dimension"),
    ([1, MAX_SPLITS + 1], f"at most {MAX_SPLITS} per dimension"),
])
def test_parse_splits_refuses(value, match):
    with pytest.raises(ValidationError, match=match):
        parse_splits(value)


# -- validate -----------------------------------------------------------------------

_A = np.ones((4, 3), np.float32)
_B = np.ones((3, 5), np.float32)


def test_validate_normalizes_params():
    task = MatmulTask()
    assert task.validate({}, {"a": _A, "b": _B}) == {"splits": "auto"}
    assert task.validate({"splits": "2x5"}, {"a": _A, "b": _B}) == {"splits": [2, 5]}
    assert task.validate({"splits": 4}, {"a": _A, "b": _B}) == {"splits": [4, 1]}
    assert task.validate({"splits": "auto"}, {"a": _A.astype(np.int64), "b": _B.astype(np.complex64)}) == {
        "splits": "auto"}


@pytest.mark.parametrize(("params", "arrays", "match"), [
    ({}, {"a": _A, "b": np.ones((4, 5), np.float32)}, r"inner dimensions differ: A is \(4, 3\), B is \(4, 5\)"),
    ({}, {"a": np.array([["x", "y", "z"]] * 4), "b": _B}, "A has dtype <U1; matmul needs a numeric dtype"),
    ({}, {"a": _A, "b": np.ones((3, 5), bool)}, "B has dtype bool; matmul needs a numeric dtype"),
    ({}, {"a": np.empty((4, 3), object), "b": _B}, "A has dtype object"),
    ({}, {"a": np.ones((0, 3), np.float32), "b": _B}, r"A is empty \(shape \(0, 3\)\)"),
    ({}, {"a": np.ones((0, 0)), "b": np.ones((0, 5))}, "A is empty"),
    ({}, {"a": np.ones(3), "b": _B}, r"A must be 2-D, got shape \(3,\)"),
    ({}, {"a": _A, "b": np.ones((3, 5, 1))}, "B must be 2-D"),
    ({}, {"a": _A, "b": np.float64(2.0)}, "B must be 2-D"),
    ({}, {"b": _B}, "matmul needs an array 'a'"),
    ({}, {"a": _A}, "matmul needs an array 'b'"),
    ({"splits": [5, 1]}, {"a": _A, "b": _B}, "splits 5x1 is larger than the result 4x5"),
    ({"splits": "1x6"}, {"a": _A, "b": _B}, "splits 1x6 is larger than the result 4x5"),
    ({"splits": "bad"}, {"a": _A, "b": _B}, "is not 'auto'"),
    ({}, {"a": _A, "b": _B, "c": _B, "bias": _B}, r"arrays 'a' and 'b' only, got also \['bias', 'c'\]"),
])
def test_validate_refuses(params, arrays, match):
    with pytest.raises(ValidationError, match=match):
        MatmulTask().validate(params, arrays)


# -- plan, inputs, compute, merge -------------------------------------------------------


def _run(a: np.ndarray, b: np.ndarray, splits: Any, ready_slots: int = 1, order: list[int] | None = None):
    task = MatmulTask()
    params = task.validate({"splits": splits}, {"a": a, "b": b})
    job = FakeJob(params, {"a": a, "b": b}, ready_slots)
    shards = task.plan(job)
    assert [s.index for s in shards] == list(range(len(shards)))
    for i in order or range(len(shards)):
        shard = shards[i]
        inputs = task.inputs(job, shard)
        (r0, r1), (c0, c1) = shard.params["rows"], shard.params["cols"]
        assert inputs["a"].shape == (r1 - r0, a.shape[1])
        assert inputs["b"].shape == (b.shape[0], c1 - c0)
        task.merge(job, shard, task.compute(shard.params, inputs, "cpu"))
    return job, shards, task.outputs(job)["c"]


_SHAPES = [(1, 1, 1), (1, 7, 1), (2, 3, 4), (7, 5, 3), (10, 10, 10), (13, 4, 17), (64, 32, 48), (3, 100, 2)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("m", "k", "n"), _SHAPES, ids=lambda v: str(v))
def test_plan_and_merge_reproduce_matmul(m, k, n, dtype):
    rng = np.random.default_rng(m * 10_000 + k * 100 + n)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    want = a @ b
    rtol = 1e-5 if dtype is np.float32 else 1e-12
    for r in sorted({1, 2, 3, m}):
        for c in sorted({1, 2, n}):
            if r > m or c > n:
                continue
            job, shards, got = _run(a, b, [r, c])
            assert len(shards) == r * c
            assert job.state["grid"] == [r, c]
            assert got.dtype == dtype
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * k)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 12), n=st.integers(1, 40), data=st.data())
def test_any_grid_reproduces_matmul_in_any_merge_order(m, k, n, data):
    r, c = data.draw(st.integers(1, m)), data.draw(st.integers(1, n))
    a = np.arange(m * k, dtype=np.float64).reshape(m, k) % 7
    b = np.arange(k * n, dtype=np.float64).reshape(k, n) % 5
    order = data.draw(st.permutations(range(r * c)))
    _, shards, got = _run(a, b, [r, c], order=list(order))
    np.testing.assert_array_equal(got, a @ b)  # integer-valued: exact
    # shards tile the result exactly once
    cover = np.zeros((m, n), int)
    for s in shards:
        (r0, r1), (c0, c1) = s.params["rows"], s.params["cols"]
        cover[r0:r1, c0:c1] += 1
    assert (cover == 1).all()


def test_one_by_k_times_k_by_one():
    a = np.arange(1, 9, dtype=np.float64).reshape(1, 8)
    b = np.arange(1, 9, dtype=np.float64).reshape(8, 1)
    _, shards, got = _run(a, b, [1, 1])
    assert len(shards) == 1
    assert got.shape == (1, 1) and got[0, 0] == 204.0


@pytest.mark.parametrize(("m", "slots", "want_rows"), [(100, 3, 3 * AUTO_SHARDS_PER_SLOT), (4, 8, 4), (9, 0, 1)])
def test_auto_splits_rows_over_ready_slots(m, slots, want_rows):
    a, b = np.ones((m, 3)), np.ones((3, 2))
    job, shards, got = _run(a, b, "auto", ready_slots=slots)
    assert job.state["grid"] == [want_rows, 1]
    assert len(shards) == want_rows
    assert all(s.params["cols"] == [0, 2] for s in shards)
    np.testing.assert_array_equal(got, np.full((m, 2), 3.0))


def test_mixed_dtypes_allocate_the_result_type():
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    b = np.ones((3, 2), np.float32)
    _, _, got = _run(a, b, [2, 2])
    assert got.dtype == np.result_type(np.int32, np.float32)
    np.testing.assert_array_equal(got, a @ b)


def test_inputs_are_views_and_full_width_b_is_not_sliced():
    a, b = np.ones((6, 4)), np.ones((4, 6))
    task = MatmulTask()
    job = FakeJob(task.validate({"splits": [3, 1]}, {"a": a, "b": b}), {"a": a, "b": b})
    shard = task.plan(job)[1]
    inputs = task.inputs(job, shard)
    assert inputs["b"] is b
    assert np.shares_memory(inputs["a"], a)
    assert shard.params == {"rows": [2, 4], "cols": [0, 6]}


def test_merge_refuses_a_block_of_the_wrong_shape():
    a, b = np.ones((4, 2)), np.ones((2, 4))
    task = MatmulTask()
    job = FakeJob(task.validate({"splits": [2, 2]}, {"a": a, "b": b}), {"a": a, "b": b})
    shard = task.plan(job)[3]
    assert shard == Shard(3, {"rows": [2, 4], "cols": [2, 4]})
    with pytest.raises(ValidationError, match=r"shard 3: result block has shape \(3, 2\), expected \(2, 2\)"):
        task.merge(job, shard, {"c": np.ones((3, 2))})
    with pytest.raises(ValidationError, match="shard 3: result block has shape None"):
        task.merge(job, shard, {})
