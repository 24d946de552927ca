"""Files of numbers for ``filemean``: read (``.npy`` or text, local paths or fsspec URLs), summed in a
sliding window, partial sums written.

Providers read and sum the files of their task; the client reads a file to upload it
(``read_numbers``). A task holds at most ``MAX_OPEN`` files at a time whatever its fan-in, and adds
them in file order, so a sum is deterministic.
"""

from __future__ import annotations

import functools
import math
import posixpath
import threading
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

import numpy as np

from common.errors import TaskError

MAX_OPEN = 5  # files a task holds at once
NPY_MAGIC = b"\x93NUMPY"
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _fsspec():
    try:
        import fsspec
    except ImportError as e:  # a dependency of zcompute; the message is for broken installs
        raise TaskError("filemean needs fsspec (pip install fsspec; s3fs for s3://)") from e
    return fsspec


def read_numbers(url: str, length: int | None = None, ref: str = "the first file") -> np.ndarray:
    """The numbers in one file, flat: ``.npy`` of a real dtype, or text with one number per line.

    With ``length``, a file holding another count is an error naming it (and ``ref``, the file
    that set the count), and text is parsed straight into an array of that size.
    """
    try:
        with _open(url) as f:
            magic = f.read(len(NPY_MAGIC))
            f.seek(0)
            if magic == NPY_MAGIC:
                arr = _load_npy(f)
                if arr.dtype.kind not in "biuf":
                    raise TaskError(f"file {url} holds {arr.dtype} values; filemean sums real numbers")
                arr = arr.reshape(-1)
            else:
                arr = _parse_text(f, url, length, ref)
    except TaskError:
        raise
    except FileNotFoundError:
        raise TaskError(f"cannot read {url}: no such file") from None
    except Exception as e:  # permissions, network, a corrupt .npy, a missing fsspec backend
        raise TaskError(f"cannot read {url}: {type(e).__name__}: {e}") from None
    if length is not None:
        _check_length(arr.size, length, url, ref)
    return arr


def _open(url: str):
    """A binary file object; local files without compression through ``open`` itself, which lets
    ``np.load`` read straight into the array (fsspec's wrapper makes it copy through 256 KiB chunks)."""
    fsspec = _fsspec()
    compression = fsspec.utils.infer_compression(url)
    fs, path = fsspec.core.url_to_fs(url)
    if compression is None and "file" in fs.protocol:
        return open(path, "rb")
    return fs.open(path, "rb", compression=compression)


# np.load parses a .npy header with ast.literal_eval, which CPython 3.11.7 does not run safely on several
# threads at once ("AST constructor recursion depth mismatch"): the reading threads take turns at headers
_HEADER_LOCK = threading.Lock()


def _load_npy(f) -> np.ndarray:
    """A whole .npy array from an open file, its header parsed under ``_HEADER_LOCK``, its data read
    without it."""
    fmt = np.lib.format
    with _HEADER_LOCK:
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            f.seek(0)
            return np.load(f, allow_pickle=False)
        header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = header(f)
    if dtype.hasobject:
        raise ValueError("object arrays cannot be loaded without pickle")
    nbytes = math.prod(shape) * dtype.itemsize
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"the file is truncated: {len(data)} of {nbytes} data bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _parse_text(f, url: str, length: int | None, ref: str) -> np.ndarray:
    where = [0, 0]  # line number, numbers yielded

    def numbers() -> Iterable[float]:
        for where[0], line in enumerate(f, 1):
            if line.strip():
                try:
                    value = float(line)
                except ValueError:
                    text = line.strip()[:40].decode("utf-8", "replace")
                    raise TaskError(f"file {url}, line {where[0]}: {text!r} is not a number "
                                    "(text files hold one number per line)") from None
                where[1] += 1
                yield value

    values = numbers()
    if length is None:
        return np.fromiter(values, np.float64)
    try:
        arr = np.fromiter(values, np.float64, count=length)  # no growing: one array of the known size
    except ValueError:  # fewer numbers than length
        _check_length(where[1], length, url, ref)
        raise
    _check_length(length + sum(1 for _ in values), length, url, ref)
    return arr


def _check_length(size: int, length: int, url: str, ref: str) -> None:
    if size != length:
        raise TaskError(f"file {url} has {size} numbers but {ref} has {length}: "
                        "every file must hold the same count")


def _reader_pool() -> ThreadPoolExecutor:
    """Reader threads shared by a provider's slots (a pool per task would cost more than a small read)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=2 * MAX_OPEN, thread_name_prefix="filemean-read")
        return _POOL


def sum_files(urls: list[str], length: int, ref: str = "the first file",
              read: Callable[[str], np.ndarray] | None = None) -> np.ndarray:
    """Sum the files in order into float64, reading at most ``MAX_OPEN`` at once (a sliding window)."""
    read = read or functools.partial(read_numbers, length=length, ref=ref)
    acc = np.zeros(length, np.float64)
    pool, todo, window = _reader_pool(), iter(urls), deque()

    def read_next() -> None:
        url = next(todo, None)
        if url is not None:
            window.append((url, pool.submit(read, url)))

    for _ in range(MAX_OPEN):
        read_next()
    try:
        while window:
            url, future = window.popleft()
            arr = future.result()
            del future  # the window holds the other files; this one goes after the add
            _check_length(arr.size, length, url, ref)
            np.add(acc, arr, out=acc)
            del arr
            read_next()
    finally:
        for _, future in window:  # after an error: do not read what nobody will add
            future.cancel()
    return acc


def sum_rows(rows: np.ndarray, length: int) -> np.ndarray:
    """Sum inline rows (uploaded files or partial sums) in order into float64."""
    if rows.ndim != 2 or rows.shape[1] != length:
        raise TaskError(f"filemean: inline rows have shape {rows.shape}, expected (k, {length})")
    acc = np.zeros(length, np.float64)
    for row in rows:
        np.add(acc, row, out=acc)
    return acc


def write_partial(url: str, acc: np.ndarray) -> None:
    """Store a partial sum as ``.npy``; on a local file system through a rename, so a reader
    (or a speculative copy writing the same sum) never sees half a file. Object stores put whole objects."""
    try:
        fs, path = _fsspec().core.url_to_fs(url)
        if "file" in fs.protocol or "local" in fs.protocol:
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
            with fs.open(tmp, "wb") as f:
                np.save(f, acc, allow_pickle=False)
            fs.mv(tmp, path)
        else:
            with fs.open(path, "wb") as f:
                np.save(f, acc, allow_pickle=False)
    except Exception as e:
        raise TaskError(f"cannot write the partial sum to {url}: {type(e).__name__}: {e}") from None
