"""Same-machine data (common/localdata.py): the probe handshake and array references into job files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from common import localdata
from head_node.store import JobFiles


@pytest.fixture
def files(tmp_path):
    job = JobFiles(tmp_path / "jobs" / "j1")
    a = np.arange(60, dtype=np.float32).reshape(6, 10)
    job.save_inputs({"a": a, "b": np.asfortranarray(a.T.astype(np.float64))})
    job.allocate("c", (6, 4), np.float32)
    return job, a


def test_probe_check_and_proof(tmp_path):
    token = localdata.write_probe(tmp_path)
    assert oct((tmp_path / localdata.PROBE_FILE).stat().st_mode & 0o777) == "0o600"
    assert localdata.read_probe(str(tmp_path), localdata.check_of(token)) == token
    assert localdata.read_probe(str(tmp_path), localdata.check_of("another head")) is None
    assert localdata.read_probe(str(tmp_path / "elsewhere"), localdata.check_of(token)) is None
    assert localdata.read_probe("", "") is None
    # what a peer answers differs from what the head publishes: the check alone proves nothing
    assert localdata.proof_of(token) != localdata.check_of(token)


@pytest.mark.parametrize("view", [
    lambda a: a, lambda a: a[2:5], lambda a: a[:, 3:7], lambda a: a[1:4, 2:9], lambda a: a[::2, ::3],
])
def test_a_view_of_an_input_is_read_back_through_its_reference(files, tmp_path, view):
    job, a = files
    expected = view(a)
    refs = job.locate({"x": view(job.input("a"))})
    peer = localdata.LocalFiles(tmp_path, "token")
    got = peer.array(refs["x"])
    np.testing.assert_array_equal(got, expected)
    assert not got.flags.writeable


def test_fortran_order_input(files, tmp_path):
    job, a = files
    b = job.input("b")
    ref = job.locate({"b": b[:, 1:3]})["b"]
    np.testing.assert_array_equal(localdata.LocalFiles(tmp_path, "t").array(ref), a.T.astype(np.float64)[:, 1:3])


def test_writing_through_a_reference_lands_in_the_output(files, tmp_path):
    job, _ = files
    ref = job.locate({"c": job.output("c")[2:4, 1:3]})["c"]
    target = localdata.LocalFiles(tmp_path, "t").array(ref, mode="r+")
    target[...] = 7
    out = job.output("c")
    assert (out[2:4, 1:3] == 7).all() and out.sum() == 7 * 4


def test_a_block_of_whole_rows_is_written_with_pwrite_and_lands(files, tmp_path):
    job, _ = files
    ref = job.locate({"c": job.output("c")[1:4]})["c"]
    assert localdata.pwrite_region(ref)
    rows = np.arange(12, dtype=np.float64).reshape(3, 4)  # cast to the file's float32 (same kind)
    assert localdata.LocalFiles(tmp_path, "t").write(ref, rows)
    out = np.load(job.root / "out-c.npy")  # read back through the file, not the head's map
    np.testing.assert_array_equal(out[1:4], rows)
    assert out[0].sum() == 0 and out[4:].sum() == 0


def test_a_region_that_is_not_one_run_is_left_to_the_mapping(files, tmp_path):
    job, _ = files
    ref = job.locate({"c": job.output("c")[2:4, 1:3]})["c"]
    assert not localdata.pwrite_region(ref)
    assert localdata.LocalFiles(tmp_path, "t").write(ref, np.ones((2, 2), np.float32)) is False
    assert localdata.LocalFiles(tmp_path, "t").write(job.locate({"c": job.output("c")})["c"],
                                                     np.ones((2, 2), np.float32)) is False  # wrong shape
    assert job.output("c").sum() == 0


def test_a_write_never_leaves_its_region(files, tmp_path):
    job, _ = files
    peer = localdata.LocalFiles(tmp_path, "t")
    ref = job.locate({"c": job.output("c")[4:]})["c"]
    size = (job.root / "out-c.npy").stat().st_size
    with pytest.raises(ValueError, match="past the file"):
        peer.write({**ref, "offset": ref["offset"] + 64}, np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="outside"):
        peer.write({**ref, "file": "../x.npy"}, np.ones((2, 4), np.float32))
    with pytest.raises(TypeError):
        peer.write(ref, np.ones((2, 4), np.complex64))  # complex into float32: not the same kind
    with pytest.raises(ValueError, match="past the file"):  # nor does a read
        peer.array({**ref, "offset": ref["offset"] + 64})
    assert (job.root / "out-c.npy").stat().st_size == size and job.output("c").sum() == 0


def test_a_copy_on_write_map_leaves_the_file_alone(files, tmp_path):
    job, _ = files
    ref = job.locate({"c": job.output("c")})["c"]
    mine = localdata.LocalFiles(tmp_path, "t").array(ref, mode="c")
    mine[...] = 5
    assert job.output("c").sum() == 0


@pytest.mark.parametrize("block", [np.s_[2:4, 1:3], np.s_[3:], np.s_[:, 2]])
def test_a_copy_on_write_map_of_a_block_reads_the_block(files, tmp_path, block):
    job, _ = files
    out = job.output("c")
    out[...] = np.arange(out.size, dtype=out.dtype).reshape(out.shape)
    mine = localdata.LocalFiles(tmp_path, "t").array(job.locate({"c": out[block]})["c"], mode="c")
    np.testing.assert_array_equal(mine, out[block])
    mine += 1  # the copy changes, the file does not
    np.testing.assert_array_equal(mine, out[block] + 1)


def test_arrays_outside_the_files_have_no_reference(files):
    job, a = files
    refs = job.locate({"copy": a.copy(), "reversed": job.input("a")[::-1], "empty": job.input("a")[:0],
                       "callable": lambda: a})
    assert refs == {}


def test_references_cannot_leave_the_data_directory(files, tmp_path):
    job, _ = files
    ref = job.locate({"a": job.input("a")})["a"]
    peer = localdata.LocalFiles(tmp_path / "jobs", "t")
    with pytest.raises(ValueError, match="outside"):
        peer.array({**ref, "file": "../../etc/passwd"})
    with pytest.raises(ValueError):
        peer.array({**ref, "strides": [-4, 4]})
    with pytest.raises(ValueError):
        peer.array({**ref, "dtype": "O"})
    with pytest.raises(ValueError):
        peer.array({"file": ref["file"]})
    peer = localdata.LocalFiles(tmp_path, "t")
    with pytest.raises(ValueError, match="past the file"):  # larger than the file, in every mode
        for mode in ("r", "r+", "c"):
            peer.array({**ref, "shape": [6000, 10]}, mode=mode)
    for bad in ({"shape": [-6, 10]}, {"shape": [6.0, 10]}, {"shape": [6]}, {"offset": True},
                {"shape": [1] * 65, "strides": [4] * 65}, {"strides": [40, "4"]}):
        with pytest.raises(ValueError, match="bad local array reference"):
            peer.array({**ref, **bad})
    probe = localdata.write_probe(tmp_path)  # readable in place; written only under jobs/
    probe_ref = {"file": localdata.PROBE_FILE, "offset": 0, "shape": [len(probe)], "strides": [1], "dtype": "|u1"}
    assert bytes(peer.array(probe_ref)) == probe.encode()
    with pytest.raises(ValueError, match="outside"):
        peer.write(probe_ref, np.zeros(len(probe), np.uint8))
    with pytest.raises(ValueError, match="outside"):
        peer.array(probe_ref, mode="r+")
    assert (tmp_path / localdata.PROBE_FILE).read_text().strip() == probe


def test_upload_names_are_checked(tmp_path):
    localdata.write_probe(tmp_path)
    name = localdata.write_upload(tmp_path, np.ones(3))
    assert localdata.upload_path(tmp_path, name).is_file()
    for bad in ["../local-probe", "x.npy", 5, name.replace(".npy", ".tmp")]:
        with pytest.raises(ValueError):
            localdata.upload_path(tmp_path, bad)
    link = tmp_path / localdata.UPLOADS / ("0" * 32 + ".npy")
    os.symlink(tmp_path / localdata.PROBE_FILE, link)
    with pytest.raises(ValueError, match="no uploaded file"):
        localdata.upload_path(tmp_path, link.name)


def test_a_map_lives_as_long_as_its_array(files, tmp_path):
    job, _ = files
    import weakref
    arr = localdata.LocalFiles(tmp_path, "t").array(job.locate({"a": job.input("a")})["a"])
    mm = weakref.ref(arr.base)
    assert mm() is not None
    del arr
    assert mm() is None  # unmapped with its array: a provider's RSS holds the shard at hand only


def test_matmul_computes_straight_into_a_target_of_the_right_kind():
    from common.tasks.base import writes_into
    from common.tasks.matmul import MatmulTask
    from common.tasks.noop import NoopTask

    task = MatmulTask()
    assert writes_into(task) and not writes_into(NoopTask())
    a, b = np.ones((3, 4), np.float32), np.ones((4, 2), np.float32)
    target = np.zeros((3, 2), np.float32)
    assert task.compute({}, {"a": a, "b": b}, "cpu", out={"c": target})["c"] is target
    assert (target == 4).all()
    wrong = np.zeros((3, 2), np.float64)  # another dtype: a result of its own, copied (or sent) later
    got = task.compute({}, {"a": a, "b": b}, "cpu", out={"c": wrong})["c"]
    assert got is not wrong and got.dtype == np.float32 and not wrong.any()


@pytest.mark.parametrize("has_pwrite", [True, False])
def test_a_provider_writes_results_into_their_regions(files, tmp_path, monkeypatch, has_pwrite):
    """Whole rows go by pwrite where there is one; a column block, or any block without pwrite (Windows),
    through a mapped target; a result of the wrong shape stays in ``out`` to be sent."""
    from common.provider import inplace

    if not has_pwrite:
        monkeypatch.delattr(os, "pwrite")
    job, _ = files
    refs = {"rows": job.locate({"c": job.output("c")[0:2]})["c"],
            "cols": job.locate({"c": job.output("c")[2:6, 1:3]})["c"],
            "bad": job.locate({"c": job.output("c")[2:3]})["c"]}
    local = localdata.LocalFiles(tmp_path, "t")
    targets = inplace.output_targets(local, refs, "p1")
    assert set(targets) == ({"cols"} if has_pwrite else {"rows", "cols", "bad"})
    out = {"rows": np.full((2, 4), 1.0), "cols": np.full((4, 2), 2.0), "bad": np.ones((5, 5))}
    assert sorted(inplace.write_in_place(local, refs, targets, out, "p1")) == ["cols", "rows"]
    assert list(out) == ["bad"]
    got = np.load(job.root / "out-c.npy")
    assert (got[0:2] == 1).all() and (got[2:6, 1:3] == 2).all() and got[2:6, [0, 3]].sum() == 0


def test_a_failed_upload_leaves_no_file_behind(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from user_client.client import _write_uploads

    token = localdata.write_probe(tmp_path)
    local = localdata.LocalFiles(tmp_path, token)
    good = {f"a{i}": np.ones(1000) for i in range(3)}
    pool = ThreadPoolExecutor(2)
    written = _write_uploads(pool, local, good)
    assert sorted(os.listdir(tmp_path / localdata.UPLOADS)) == sorted(written.values())
    for name in written.values():
        (tmp_path / localdata.UPLOADS / name).unlink()
    with pytest.raises(ValueError, match="pickle"):  # an object array cannot be saved without pickle
        _write_uploads(pool, local, {**good, "bad": np.array([{"x": 1}], dtype=object)})
    assert os.listdir(tmp_path / localdata.UPLOADS) == []
    pool.shutdown()


def test_an_upload_interrupted_by_ctrl_c_leaves_no_file_behind(tmp_path, monkeypatch):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import wait as real_wait

    from user_client import client

    local = localdata.LocalFiles(tmp_path, localdata.write_probe(tmp_path))
    writing, real_write = threading.Barrier(3, timeout=10), localdata.write_upload

    def slow_write(root, arr):  # both writers are mid-file when the user presses Ctrl-C
        writing.wait()
        time.sleep(0.2)
        return real_write(root, arr)

    def interrupted_once(futures, **kw):
        monkeypatch.setattr(client, "wait_all", real_wait)
        writing.wait()
        raise KeyboardInterrupt

    monkeypatch.setattr(client.localdata, "write_upload", slow_write)
    monkeypatch.setattr(client, "wait_all", interrupted_once)
    pool = ThreadPoolExecutor(2)
    with pytest.raises(KeyboardInterrupt):
        client._write_uploads(pool, local, {"a": np.ones(1000), "b": np.ones(1000)})
    pool.shutdown()  # (the writers are done in any case)
    assert os.listdir(tmp_path / localdata.UPLOADS) == []  # both finished their file, and both files went


def test_uploads_never_submitted_are_cleaned_once_old(tmp_path):
    localdata.write_probe(tmp_path)
    old, new = (localdata.write_upload(tmp_path, np.ones(3)) for _ in range(2))
    os.utime(tmp_path / localdata.UPLOADS / old, (0, 0))
    assert localdata.clean_uploads(tmp_path) == 1
    assert os.listdir(tmp_path / localdata.UPLOADS) == [new]


@pytest.mark.parametrize("arr", [
    np.arange(12, dtype=np.float32).reshape(3, 4), np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    np.array(5, dtype=np.int64), np.zeros((0, 3), np.uint8), np.ones((2, 2), dtype=">f8"),
])
def test_map_npy_reads_what_np_load_reads(tmp_path, arr):
    path = tmp_path / "x.npy"
    np.save(path, arr)
    got, offset = localdata.map_npy(path)
    expected = np.load(path, mmap_mode="r") if arr.size else np.load(path)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype and got.flags.f_contiguous == expected.flags.f_contiguous
    assert not got.flags.writeable
    assert path.read_bytes()[offset:] == expected.tobytes(order="A")  # where the data starts in the file


def test_map_npy_reads_a_version_2_header(tmp_path):
    arr = np.arange(6, dtype=np.int16)
    path = tmp_path / "v2.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, version=(2, 0))
    np.testing.assert_array_equal(localdata.map_npy(path)[0], arr)


@pytest.mark.parametrize("content, error", [
    (b"not numpy at all", "magic"),
    (b"", "magic|EOF"),
    (None, "holds 40 bytes of data, its header describes 48"),  # cut short
    ("object", "Python objects"),
    ("negative", "negative length"),
])
def test_map_npy_refuses_what_is_not_a_whole_plain_npy(tmp_path, content, error):
    path = tmp_path / "bad.npy"
    if content is None:
        np.save(path, np.arange(6, dtype=np.float64))
        path.write_bytes(path.read_bytes()[:-8])
    elif content == "object":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif content == "negative":
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (-1, 4)})
            f.write(bytes(64))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=error):
        localdata.map_npy(path)
