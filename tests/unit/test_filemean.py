"""filemean without a cluster: file reading, the sliding window, its memory bound, the tree, replays."""

from __future__ import annotations

import gzip
import math
import threading
import tracemalloc
import weakref

import msgpack
import numpy as np
import pytest

from common.errors import TaskError, ValidationError
from common.tasks.filemean import FileMeanTask, encode_names, tree_sizes
from common.tasks.numberfiles import MAX_OPEN, read_numbers, sum_files
from user_client.filemean import expand_inputs, upload_arrays


class FakeJob:
    """An in-memory ``JobView``; ``restarted()`` is what a head restart keeps (journaled state, outputs on disk)."""

    def __init__(self, job_id: str, params: dict, arrays: dict):
        self.job_id, self.params, self.state, self.ready_slots = job_id, params, {}, 2
        self.arrays, self.outs = dict(arrays), {}

    def input(self, name):
        return self.arrays[name]

    def input_names(self):
        return sorted(self.arrays)

    def allocate(self, name, shape, dtype):
        self.outs[name] = np.zeros(shape, dtype)
        return self.outs[name]

    def output(self, name):
        return self.outs[name]

    def restarted(self) -> "FakeJob":
        job = FakeJob(self.job_id, self.params, self.arrays)
        job.state = msgpack.unpackb(msgpack.packb(self.state), strict_map_key=False)
        job.outs = {k: v.copy() for k, v in self.outs.items()}
        return job


def wire(params: dict) -> dict:
    return msgpack.unpackb(msgpack.packb(params))  # what a provider receives


def run_round(task, job, shards):
    for shard in shards:
        task.merge(job, shard, task.compute(wire(shard.params), task.inputs(job, shard), "cpu"))


def run(task, job) -> tuple[np.ndarray, list[list[int]]]:
    """Drive a job to the end as the head would; returns the mean and the shard indices of each round."""
    shards, rounds = task.plan(job), []
    while shards:
        rounds.append([s.index for s in shards])
        run_round(task, job, shards)
        shards = task.next_round(job)
    return task.outputs(job)["mean"], rounds


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """37 files of 50 integer-valued numbers: every sum is exact, so the tree equals np.mean bit for bit."""
    root = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(3)
    stack = rng.integers(-10_000, 10_000, size=(37, 50)).astype(np.float64) / 4
    paths = []
    for i, row in enumerate(stack):
        paths.append(str(root / f"f{i:03d}.npy"))
        np.save(paths[-1], row)
    return paths, stack


def job_for(task, params, arrays, job_id="job1"):
    return FakeJob(job_id, task.validate(params, arrays), arrays)


# -- reading ---------------------------------------------------------------------------------------

def test_reads_npy_of_any_real_dtype_and_shape_flat(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(6, dtype=np.int16).reshape(2, 3))
    np.save(tmp_path / "b.npy", np.ones(3, np.float32))
    np.testing.assert_array_equal(read_numbers(str(tmp_path / "a.npy")), np.arange(6))
    assert read_numbers("file://" + str(tmp_path / "b.npy")).dtype == np.float32


def test_reads_text_one_number_per_line_and_gzip(tmp_path):
    (tmp_path / "a.txt").write_text("1.5\n-2\n\n3e2\n")
    with gzip.open(tmp_path / "b.txt.gz", "wt") as f:
        f.write("1\n2\n3\n")
    np.testing.assert_array_equal(read_numbers(str(tmp_path / "a.txt")), [1.5, -2.0, 300.0])
    np.testing.assert_array_equal(read_numbers(str(tmp_path / "b.txt.gz"), length=3), [1, 2, 3])


@pytest.mark.parametrize("content, length, match", [
    ("1\n2\nthree\n", None, r"a\.txt, line 3: 'three' is not a number"),
    ("1\n2\n", 3, r"a\.txt has 2 numbers but ref\.npy has 3"),
    ("1\n2\n3\n4\n", 3, r"a\.txt has 4 numbers but ref\.npy has 3"),
])
def test_bad_text_files_are_named(tmp_path, content, length, match):
    (tmp_path / "a.txt").write_text(content)
    with pytest.raises(TaskError, match=match):
        read_numbers(str(tmp_path / "a.txt"), length=length, ref="ref.npy")


def test_unreadable_and_unsuitable_files_are_named(tmp_path):
    with pytest.raises(TaskError, match=r"cannot read .*nope\.npy: no such file"):
        read_numbers(str(tmp_path / "nope.npy"))
    np.save(tmp_path / "c.npy", np.ones(2, np.complex128))
    with pytest.raises(TaskError, match=r"c\.npy holds complex128 values"):
        read_numbers(str(tmp_path / "c.npy"))
    np.save(tmp_path / "o.npy", np.array([{}], dtype=object), allow_pickle=True)
    with pytest.raises(TaskError, match=r"cannot read .*o\.npy"):
        read_numbers(str(tmp_path / "o.npy"))
    with pytest.raises(TaskError, match=r"cannot read nosuchproto://x"):
        read_numbers("nosuchproto://x")


def test_sum_files_adds_in_order_and_names_a_mismatched_file(files, tmp_path):
    paths, stack = files
    expected = np.zeros(50)
    for row in stack[:12]:
        expected += row
    np.testing.assert_array_equal(sum_files(paths[:12], 50), expected)
    np.save(tmp_path / "short.npy", np.ones(49))
    with pytest.raises(TaskError, match=r"short\.npy has 49 numbers but f000\.npy has 50"):
        sum_files([*paths[:7], str(tmp_path / "short.npy"), *paths[7:9]], 50, ref="f000.npy")


def test_the_window_holds_at_most_five_files(files):
    paths, _ = files
    lock, alive, most = threading.Lock(), [0], [0]

    def counted_read(url):
        arr = read_numbers(url)
        with lock:
            alive[0] += 1
            most[0] = max(most[0], alive[0])

        def gone():
            with lock:
                alive[0] -= 1

        weakref.finalize(arr.base if arr.base is not None else arr, gone)
        return arr

    sum_files(paths, 50, read=counted_read)
    assert most[0] <= MAX_OPEN
    assert alive[0] == 0


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", ["npy", "text"])
def test_a_task_holds_at_most_five_files_and_an_accumulator_whatever_the_fanin(tmp_path, kind):
    c = 200_000 if kind == "npy" else 20_000
    file_bytes = 8 * c
    paths = []
    fanins = (5, 20, 60) if kind == "npy" else (5, 15)  # (tracemalloc makes parsing text slow)
    for i in range(fanins[-1]):
        path = tmp_path / f"f{i:02d}.{kind}"
        if kind == "npy":
            np.save(path, np.full(c, i, np.float64))
        else:
            path.write_text("\n".join([str(i)] * c) + "\n")
        paths.append(str(path))
    task = FileMeanTask()
    task.compute({"op": "sum", "urls": paths[:2], "length": c}, {}, "cpu")  # warm up reader threads, imports
    peaks = {}
    for fanin in fanins:
        params = {"op": "sum", "urls": paths[:fanin], "length": c, "ref": paths[0]}
        peaks[fanin] = _peak_bytes(lambda: task.compute(params, {}, "cpu"))
    bound = (MAX_OPEN + 1) * file_bytes
    slack = 256 * 1024  # interpreter bookkeeping (futures, frames, file headers), not data
    print(f"\nFIGURE filemean compute peak ({kind}, file {file_bytes / 1e6:.1f} MB): "
          + ", ".join(f"P={p}: {v / file_bytes:.2f} files" for p, v in peaks.items())
          + f"; bound: 5 files + accumulator = {MAX_OPEN + 1}")
    assert all(v <= bound + slack for v in peaks.values()), peaks
    assert peaks[fanins[-1]] - peaks[fanins[-2]] < file_bytes / 2  # flat in P


# -- the tree --------------------------------------------------------------------------------------

def test_tree_sizes():
    assert tree_sizes(1000, 2) == [1000, 500, 250, 125, 63, 32, 16, 8, 4, 2, 1]
    assert tree_sizes(1000, 16) == [1000, 63, 4, 1]
    assert tree_sizes(1, 8) == [1, 1]
    assert tree_sizes(8, 8) == [8, 1]
    for f, p in [(1000, 2), (1000, 5), (1000, 16), (37, 3)]:
        assert len(tree_sizes(f, p)) - 1 == math.ceil(math.log(f, p) - 1e-9)


@pytest.mark.parametrize("mode", ["urls", "upload", "intermediate", "upload+intermediate"])
@pytest.mark.parametrize("count, fanin", [(1, 2), (2, 2), (7, 3), (37, 2), (37, 5), (37, 16), (37, 40)])
def test_the_tree_equals_numpy_mean(files, tmp_path, mode, count, fanin):
    paths, stack = files
    paths, stack = paths[:count], stack[:count]
    task = FileMeanTask()
    params = {"fanin": fanin}
    if "intermediate" in mode:
        params["intermediate"] = f"file://{tmp_path}/partials"
    arrays = upload_arrays(paths) if "upload" in mode else {"urls": encode_names(paths)}
    job = job_for(task, params, arrays)
    first = task.shard_count(job.params)
    mean, rounds = run(task, job)
    assert first == len(rounds[0])
    np.testing.assert_array_equal(mean, np.mean(stack, axis=0))
    sizes = tree_sizes(count, fanin)
    assert [len(r) for r in rounds] == ([] if "upload" in mode else [1]) + sizes[1:]  # the probe, then levels
    flat = [i for r in rounds for i in r]
    assert len(flat) == len(set(flat))  # shard indices are unique across rounds
    assert task.progress(job) == (len(rounds), len(rounds))
    if "intermediate" in mode and len(sizes) > 2:  # every level but the last went through the store
        stored = sorted((tmp_path / "partials" / "job1").glob("level*/*.npy"))
        assert len(stored) == sum(sizes[1:-1])
        assert not list((tmp_path / "partials").rglob("*.tmp"))


def test_random_floats_within_float64_rounding(tmp_path):
    rng = np.random.default_rng(5)
    stack = rng.standard_normal((200, 300)) * 1e3
    paths = []
    for i, row in enumerate(stack):
        paths.append(str(tmp_path / f"r{i}.npy"))
        np.save(paths[-1], row)
    task = FileMeanTask()
    mean, _ = run(task, job_for(task, {"fanin": 7}, {"urls": encode_names(paths)}))
    np.testing.assert_allclose(mean, np.mean(stack, axis=0), rtol=1e-12, atol=1e-12)


def test_replayed_merges_and_a_restart_at_any_level_change_nothing(files):
    """A head restart replays unjournaled merges and resumes from the journaled state and outputs."""
    paths, stack = files
    task = FileMeanTask()
    arrays = {"urls": encode_names(paths)}
    job = job_for(task, {"fanin": 3}, arrays)
    shards = task.plan(job)
    levels_seen = []
    while shards:
        run_round(task, job, shards)
        run_round(task, job, shards[:2])  # duplicates: merged twice
        levels_seen.append(job.state["level"])
        job = job.restarted()  # the round's merges are flushed, its state journaled
        task = FileMeanTask()  # a new process: nothing kept in the instance
        run_round(task, job, shards[-1:])  # the last result replayed after the restart
        shards = task.next_round(job)
    assert levels_seen == list(range(len(tree_sizes(37, 3))))
    np.testing.assert_array_equal(task.outputs(job)["mean"], np.mean(stack, axis=0))


def test_a_mismatched_file_fails_its_task_naming_it(files, tmp_path):
    paths, _ = files
    bad = tmp_path / "odd.txt"
    bad.write_text("1\n" * 49)
    task = FileMeanTask()
    job = job_for(task, {"fanin": 4}, {"urls": encode_names([*paths[:9], str(bad), *paths[9:12]])})
    run_round(task, job, task.plan(job))  # the probe learns 50 from the first file
    shards = task.next_round(job)
    with pytest.raises(TaskError, match=r"odd\.txt has 49 numbers but .*f000\.npy has 50"):
        run_round(task, job, shards)


def test_an_empty_first_file_fails_the_probe(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    task = FileMeanTask()
    job = job_for(task, {"fanin": 4}, {"urls": encode_names([str(tmp_path / "empty.txt")])})
    with pytest.raises(TaskError, match=r"empty\.txt holds no numbers"):
        run_round(task, job, task.plan(job))


# -- requests --------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, arrays, match", [
    ({"fanin": 1}, {"urls": encode_names(["a"])}, "fanin must be an integer from 2"),
    ({"fanin": True}, {"urls": encode_names(["a"])}, "fanin must be an integer"),
    ({"splits": 2}, {"urls": encode_names(["a"])}, "unknown parameters"),
    ({}, {}, "takes 'urls'"),
    ({}, {"urls": np.zeros(0, np.uint8)}, "at least one file"),
    ({}, {"urls": np.array([1.0])}, "uint8"),
    ({}, {"urls": encode_names(["a"]), "data": np.ones(2)}, "comes alone"),
    ({}, {"data": np.ones(5), "lengths": np.array([3, 3])}, "add up to 6"),
    ({}, {"data": np.ones(5), "lengths": np.array([3, 2]), "names": encode_names(["x.npy", "y.txt"])},
     r"file y\.txt has 2 numbers but x\.npy has 3"),
    ({}, {"data": np.ones(0), "lengths": np.array([0])}, "holds no numbers"),
    ({"fanin": 5000}, {"urls": encode_names(["s3://bucket/" + "x" * 100])}, "use fanin 1129 or less"),
])
def test_bad_requests_are_refused_clearly(params, arrays, match):
    with pytest.raises(ValidationError, match=match):
        FileMeanTask().validate(params, arrays)


def test_client_expands_directories_and_globs(tmp_path):
    for name in ("b.npy", "a.npy", "c.txt", ".hidden"):
        (tmp_path / name).write_text("1\n")
    (tmp_path / "sub").mkdir()
    assert expand_inputs(tmp_path) == [str(tmp_path / n) for n in ("a.npy", "b.npy", "c.txt")]
    assert expand_inputs(str(tmp_path / "*.npy")) == [str(tmp_path / n) for n in ("a.npy", "b.npy")]
    assert expand_inputs([tmp_path / "c.txt", str(tmp_path / "a.npy")]) == [str(tmp_path / "c.txt"),
                                                                          str(tmp_path / "a.npy")]
    with pytest.raises(ValidationError, match=r"directory .*sub has no files"):
        expand_inputs(tmp_path / "sub")
    with pytest.raises(ValidationError, match=r"no files match .*\*\.csv"):
        expand_inputs(str(tmp_path / "*.csv"))
    with pytest.raises(ValidationError, match=r"no such file: .*missing\.npy"):
        expand_inputs(tmp_path / "missing.npy")
    with pytest.raises(ValidationError, match="no input"):
        expand_inputs([])


def test_client_upload_names_a_mismatched_file_before_sending(files, tmp_path):
    paths, _ = files
    np.save(tmp_path / "long.npy", np.ones(51))
    arrays = upload_arrays([*paths[:3], str(tmp_path / "long.npy")])
    assert arrays["data"].size == 3 * 50 + 51
    with pytest.raises(ValidationError, match=r"long\.npy has 51 numbers but .*f000\.npy has 50"):
        FileMeanTask().validate({}, arrays)
