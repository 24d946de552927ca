"""Same-machine data: arrays that stay in the head's memory-mapped files instead of crossing a socket.

A provider or client on the head's machine that can read the head's data
directory maps the job files there (the page cache is shared), so a shard's
inputs are read in place and a result block is written into the output file
(``pwrite`` for a block of whole rows): no bytes are encoded, sent, received
or copied twice.

Who may do it is proved, not claimed: the head writes a random token into
``DATA_DIR/local-probe`` (readable by its own user only) and tells peers the
directory and a hash of the token. A peer that reads the file and finds the
hash right is on the same machine with access to the files; it answers with a
second hash of the token, which only a reader of the file can make. Everyone
else gets arrays over the socket as before.

An array reference (``ref``) names a region of one ``.npy`` file under the
data directory: ``{"file", "offset", "shape", "strides", "dtype"}``.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

MAX_DIMS = 64
PROBE_FILE = "local-probe"
UPLOADS = "uploads"  # clients on the head's machine write submitted arrays here
UPLOAD_NAME = re.compile(r"^[0-9a-f]{32}\.npy$")
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux
_byte_bounds = getattr(getattr(np.lib, "array_utils", np), "byte_bounds")  # moved in numpy 2


def _hash(purpose: str, token: str) -> str:
    return hashlib.sha256(f"zcompute-{purpose}:{token}".encode()).hexdigest()


def write_probe(root: Path) -> str:
    """A fresh token in ``root/local-probe``, readable by this user only; returns it."""
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    path = root / PROBE_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    tmp.replace(path)
    (root / UPLOADS).mkdir(mode=0o700, exist_ok=True)
    return token


def clean_uploads(root: Path, older_than: float = 3600.0) -> int:
    """Delete uploads a client wrote but never submitted (it crashed), once they are an hour old."""
    horizon, removed = time.time() - older_than, 0
    for path in (root / UPLOADS).glob("*"):
        try:
            if path.stat().st_mtime < horizon:
                path.unlink()
                removed += 1
        except OSError:
            pass  # taken meanwhile
    return removed


def write_upload(root: Path, arr: np.ndarray) -> str:
    """Save ``arr`` into the head's uploads directory under a fresh random name; returns the name."""
    name = secrets.token_hex(16) + ".npy"
    path = root / UPLOADS / name
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return name


def discard_uploads(root: Path, names) -> None:
    """Delete these uploads (names that are not upload names are ignored)."""
    for name in names:
        if isinstance(name, str) and UPLOAD_NAME.match(name):
            (root / UPLOADS / name).unlink(missing_ok=True)


def upload_path(root: Path, name: Any) -> Path:
    """The file a client named in ``submit.local_arrays``; ValueError unless it is a plain upload there."""
    if not isinstance(name, str) or not UPLOAD_NAME.match(name):
        raise ValueError(f"{name!r} is not an upload name")
    path = root / UPLOADS / name
    if path.is_symlink() or not path.is_file():
        raise ValueError(f"no uploaded file {name!r} (it is written by a client on the head's machine)")
    return path


def check_of(token: str) -> str:
    """What the head publishes: lets a peer verify the file it read."""
    return _hash("local-check", token)


def proof_of(token: str) -> str:
    """What a peer answers: only a reader of the probe file can make it."""
    return _hash("local-proof", token)


def read_probe(local_dir: str, check: str) -> str | None:
    """The head's token if ``local_dir``'s probe file is readable here and matches ``check``; else None."""
    if not local_dir or not check:
        return None
    try:
        token = (Path(local_dir) / PROBE_FILE).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token if secrets.compare_digest(check_of(token), check) else None


@dataclass(frozen=True)
class Mapped:
    """An array mapped from a ``.npy`` file under the data directory: the file (relative to the
    directory), where the array's data starts in it, and the addresses its bytes span here."""

    array: np.ndarray
    file: str
    offset: int
    start: int
    end: int

    @classmethod
    def of(cls, arr: np.ndarray, offset: int, file: Path) -> "Mapped":
        start = arr.__array_interface__["data"][0]
        return cls(arr, str(file), int(offset), start, start + arr.nbytes)


def map_npy(path: Path) -> tuple[np.ndarray, int]:
    """The array in the ``.npy`` file ``path``, mapped read-only, and where its data starts in the file:
    what ``np.load(path, mmap_mode="r")`` gives in under half its time (a header read and one ``mmap``).
    ValueError if the file is not a whole ``.npy`` of a plain dtype; OSError if it cannot be read."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version not in readers:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
        shape, fortran_order, dtype = readers[version](f)
        offset = f.tell()
        if dtype.hasobject:
            raise ValueError("an array of Python objects cannot be mapped")
        if any(n < 0 for n in shape):
            raise ValueError(f"the header's shape {shape} has a negative length")
        nbytes = dtype.itemsize * math.prod(shape)
        size = os.fstat(f.fileno()).st_size
        if size < offset + nbytes:
            raise ValueError(f"the file holds {size - offset} bytes of data, its header describes {nbytes}")
        mm = mmap.mmap(f.fileno(), offset + nbytes, access=mmap.ACCESS_READ)
    return np.ndarray(shape, dtype, buffer=mm, offset=offset, order="F" if fortran_order else "C"), offset


def locate(arr: Any, files: Iterable[Mapped]) -> dict[str, Any] | None:
    """A reference to ``arr`` if it is a view into one of the mapped ``files``."""
    if not isinstance(arr, np.ndarray) or arr.size == 0 or arr.dtype.hasobject:
        return None
    if any(s < 0 for s in arr.strides):
        return None
    low, high = _byte_bounds(arr)
    for m in files:
        if m.start <= low and high <= m.end:
            return {"file": m.file, "offset": m.offset + arr.__array_interface__["data"][0] - m.start,
                    "shape": list(arr.shape), "strides": list(arr.strides), "dtype": arr.dtype.str}
    return None


class LocalFiles:
    """A peer's view of the head's data directory: opens references.

    Each array maps its file afresh and unmaps it when the array is dropped (after its task), so a
    provider's resident memory holds the pages of the shard at hand, not of every file it has read.
    """

    def __init__(self, root: str | Path, token: str):
        self.root = Path(root).resolve()
        self.proof = proof_of(token)

    def _region(self, ref: dict[str, Any], writing: bool = False) -> _Region:
        """The checked parts of a reference: a region of a file under the data directory (under its
        ``jobs/`` to write), with whole non-negative numbers, at most 64 dimensions, within the file."""
        try:
            path = (self.root / ref["file"]).resolve()
            dtype = np.dtype(ref["dtype"])
            shape, strides, offset = tuple(ref["shape"]), tuple(ref["strides"]), ref["offset"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad local array reference {ref!r}: {e}") from None
        numbers = (*shape, *strides, offset)
        if (dtype.hasobject or len(shape) != len(strides) or len(shape) > MAX_DIMS
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in numbers)):
            raise ValueError(f"bad local array reference {ref!r}")
        inside = self.root / "jobs" if writing else self.root
        if inside not in path.parents:
            raise ValueError(f"local array reference {ref['file']!r} is outside {inside}")
        end = offset + sum((n - 1) * s for n, s in zip(shape, strides)) + dtype.itemsize if all(shape) else offset
        if end > path.stat().st_size:
            raise ValueError(f"local array reference {ref['file']!r}: the region ends past the file")
        return _Region(path, dtype, shape, strides, offset, end)

    def array(self, ref: dict[str, Any], mode: str = "r") -> np.ndarray:
        """The referenced region; ``mode`` "r" (read), "r+" (write through) or "c" (private copy on write).

        To read or copy, only the pages the region spans are mapped. To read, when the region fills them,
        with ``MAP_POPULATE`` where there is one: the kernel maps them from the page cache in one pass
        instead of a fault at a time (a 1024² float32 shard's inputs: about 1 ms of its 14)."""
        r = self._region(ref, writing=mode == "r+")
        if mode == "r+" or not all(r.shape):
            mm = np.memmap(r.path, dtype=np.uint8, mode=mode)
            return np.ndarray(r.shape, dtype=r.dtype, buffer=mm, offset=r.offset, strides=r.strides)
        start = r.offset - r.offset % mmap.ALLOCATIONGRANULARITY
        with open(r.path, "rb") as f:
            if mode == "r" and os.name != "nt":
                # populate only a region that fills its pages (rows, not a column block: that would map, and
                # count in this process's memory, every page of the rows it crosses, not just those it reads)
                dense = 10 * r.dtype.itemsize * math.prod(r.shape) >= 9 * (r.end - start)
                mm = mmap.mmap(f.fileno(), r.end - start, flags=mmap.MAP_SHARED | (_POPULATE if dense else 0),
                               prot=mmap.PROT_READ, offset=start)
            else:  # (a private writable mapping is not populated: that would copy every page)
                mm = mmap.mmap(f.fileno(), r.end - start, access=mmap.ACCESS_READ if mode == "r" else mmap.ACCESS_COPY,
                               offset=start)
        arr = np.ndarray(r.shape, dtype=r.dtype, buffer=mm, offset=r.offset - start, strides=r.strides)
        arr.flags.writeable = mode == "c"
        return arr

    def write(self, ref: dict[str, Any], arr: np.ndarray) -> bool:
        """``arr`` into the referenced region with ``pwrite`` if the region is one contiguous run of bytes (a
        block of whole rows), else False (write through ``array(ref, "r+")``). No page of the file is mapped
        here: a write through a shared mapping takes a page fault per page (about 3 ms for 2 MiB on this
        project's test VM), a ``pwrite`` copies into the page cache (0.5 ms). TypeError if ``arr`` cannot be
        cast to the region's dtype (same kind); ValueError if the region is not within a job's file."""
        r = self._region(ref, writing=True)
        if not _pwritable(r.shape, r.strides, r.dtype.itemsize) or arr.shape != r.shape:
            return False
        if not np.can_cast(arr.dtype, r.dtype, casting="same_kind"):
            raise TypeError(f"cannot write {arr.dtype} into a {r.dtype} array")
        data, offset = memoryview(np.ascontiguousarray(arr, dtype=r.dtype)).cast("B"), r.offset
        fd = os.open(r.path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))  # not a link swapped in since
        try:
            while data:
                done = os.pwrite(fd, data, offset)
                data, offset = data[done:], offset + done
        finally:
            os.close(fd)
        return True


@dataclass(frozen=True)
class _Region:
    path: Path
    dtype: np.dtype
    shape: tuple
    strides: tuple
    offset: int
    end: int  # one past its last byte in the file


def pwrite_region(ref: dict[str, Any]) -> bool:
    """Whether ``LocalFiles.write`` takes this region whole: one contiguous run of bytes, on a system with
    ``pwrite`` (not Windows)."""
    try:
        return _pwritable(tuple(ref["shape"]), tuple(ref["strides"]), np.dtype(ref["dtype"]).itemsize)
    except (KeyError, TypeError, ValueError):
        return False


def _pwritable(shape: tuple, strides: tuple, itemsize: int) -> bool:
    return hasattr(os, "pwrite") and strides == _c_strides(shape, itemsize)


def _c_strides(shape: tuple, itemsize: int) -> tuple:
    """The strides of a C-contiguous array of ``shape``."""
    strides, step = [], itemsize
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))
