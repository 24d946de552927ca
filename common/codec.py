"""Array codec: numpy arrays to and from raw frames, never pickled.

Each array travels as one frame (a ``raw`` one over 1 MiB as several) described by
``{name, dtype, shape, codec, nbytes}`` in the message header. ``codec`` is ``raw`` (the array's
bytes) or ``zstd`` (zstandard at level 1, byte-shuffled first for float dtypes, which helps the
exponent bytes compress). ``auto`` compresses only when a sample shows it pays: when the link's
speed is known (``set_link_speed``), if the wire time it saves exceeds the time to compress here
and decompress there; otherwise if the sample shrinks below a threshold.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from common.errors import DecodeError

#: dtypes allowed on the wire (numpy ``dtype.str``); objects, strings and
#: big-endian layouts are refused.
ALLOWED_DTYPES = frozenset(
    np.dtype(t).str
    for t in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64", "complex64", "complex128",
    )
)
CODECS = ("raw", "zstd")
LEVEL = 1
#: the sample: up to one zstd block (smaller ones overstate what very compressible data shrinks to),
#: an eighth of a smaller array, in pieces spread over it (a header of zeros must not speak for the rest)
_SAMPLE_BYTES = 128 * 1024
_SAMPLE_PIECES = 4
#: raw arrays travel in frames of this size: ZeroMQ moves 1 MiB frames about twice as fast as
#: one huge frame over tcp loopback, and the receiver assembles them with a single copy
CHUNK_BYTES = 1 << 20
_MIN_COMPRESS_BYTES = 16 * 1024
_MAX_NDIM = 8
_BLOCK = 1 << 16  # elements (un)shuffled at a time: the block's byte planes stay in cache
#: raw arrays from this size up are assembled by several threads: the copy is the receiver's
#: one cost over raw ZeroMQ, and the I/O thread is idle once the whole message is in
_PARALLEL_COPY_BYTES = 32 << 20
_COPY_THREADS = max(1, min(4, os.cpu_count() or 1))
#: large working buffers (received arrays, shuffled planes) are reused once nothing refers to them:
#: a fresh one costs a page fault per 4 KiB, which on a VM takes longer than the copy into it
_POOL_MIN_BYTES = 16 << 20
_POOL_MAX_BYTES = 512 << 20  # what the pool may keep while no array uses it
#: decompressing and unshuffling take about half the time of shuffling and compressing
_DECODE_PER_ENCODE = 0.5
_LINK: dict[str, float | None] = {"bits_per_s": None}
_local = threading.local()  # a ZstdCompressor is not thread-safe; one per thread saves its set-up


def set_link_speed(bits_per_s: float | None) -> None:
    """Tell ``auto`` how fast the link to the peers is; None (the default): unknown."""
    if bits_per_s is not None and not bits_per_s > 0:
        raise ValueError(f"link speed must be positive, not {bits_per_s!r}")
    _LINK["bits_per_s"] = bits_per_s


@dataclass(frozen=True)
class Limits:
    """What a decoder accepts before it spends memory on a message."""

    max_message_bytes: int = 2 * 1024**3
    max_array_elements: int = 2**31
    max_header_bytes: int = 256 * 1024
    max_arrays: int = 64


DEFAULT_LIMITS = Limits()

#: process-wide array byte counts: raw (as numpy holds them) and on the wire, each way
STATS = {"array_bytes_raw_sent": 0, "array_bytes_wire_sent": 0,
         "array_bytes_raw_received": 0, "array_bytes_wire_received": 0}


class _BufferPool:
    """uint8 buffers of at least ``_POOL_MIN_BYTES``, handed out again once only the pool holds them.

    Every array made from a buffer (a view, a reshape, a slice) refers to it as its base, so a
    buffer whose reference count is the pool's own is free, whatever the caller did with the arrays.
    """

    def __init__(self) -> None:
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()
        probe = [np.empty(0)]
        self._alone = sys.getrefcount(probe[0])  # the count of a buffer only the list holds, as read here

    def take(self, nbytes: int) -> np.ndarray:
        if nbytes < _POOL_MIN_BYTES:
            return np.empty(nbytes, np.uint8)
        with self._lock:
            fits = [i for i in self._free() if nbytes <= len(self._buffers[i]) <= nbytes * 9 // 8]
            if fits:
                self._buffers.append(self._buffers.pop(fits[0]))  # most recently used last
            else:
                self._trim(_POOL_MAX_BYTES - nbytes)
                self._buffers.append(np.empty(nbytes, np.uint8))
            return self._buffers[-1][:nbytes]

    def clear(self) -> None:
        with self._lock:
            self._buffers.clear()

    def _free(self) -> list[int]:
        return [i for i in range(len(self._buffers)) if sys.getrefcount(self._buffers[i]) <= self._alone]

    def _trim(self, budget: int) -> None:
        """Drop free buffers, least recently used first, until the free ones fit in ``budget`` bytes."""
        free = self._free()
        total = sum(len(self._buffers[i]) for i in free)
        drop = set()
        for i in free:
            if total <= budget:
                break
            total -= len(self._buffers[i])
            drop.add(i)
        self._buffers = [b for i, b in enumerate(self._buffers) if i not in drop]


_POOL = _BufferPool()


def release_buffers() -> None:
    """Let go of the reusable buffers no array uses (a process going idle)."""
    _POOL.clear()


def _shuffle(arr: np.ndarray) -> np.ndarray:
    """The bytes of a C-contiguous array as uint8, byte planes first for float dtypes: byte 0 of
    every element, then byte 1, ... (the same layout as a whole-array transpose, built block by block)."""
    flat = arr.reshape(-1).view(np.uint8)
    item = arr.dtype.itemsize
    if arr.dtype.kind not in "fc" or item == 1:
        return flat
    elements = flat.reshape(-1, item)
    planes = _POOL.take(arr.nbytes).reshape(item, len(elements))
    for start in range(0, len(elements), _BLOCK):
        np.copyto(planes[:, start:start + _BLOCK], elements[start:start + _BLOCK].T)
    return planes.reshape(-1)


def _unshuffle(data: Any, dtype: np.dtype) -> np.ndarray:
    """The flat array of ``dtype`` whose shuffled bytes are ``data`` (inverse of ``_shuffle``)."""
    raw = np.frombuffer(data, np.uint8)
    item = dtype.itemsize
    if dtype.kind not in "fc" or item == 1:
        return raw.view(dtype)
    n = len(raw) // item
    planes = raw.reshape(item, n)
    if item not in (2, 4, 8):  # complex128: no 16-byte integer to assemble in, transpose instead
        out = _POOL.take(n * item).reshape(n, item)
        for start in range(0, n, _BLOCK):
            np.copyto(out[start:start + _BLOCK].T, planes[:, start:start + _BLOCK])
        return out.reshape(-1).view(dtype)
    # little-endian words from their byte planes, value = sum(plane[p] << 8p): whole-vector
    # operations, several times faster than a strided transpose
    word = np.dtype(f"<u{item}")
    out = _POOL.take(n * item).view(word)
    spare = np.empty(min(n, _BLOCK), word)
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        block, tmp = out[start:stop], spare[:stop - start]
        np.copyto(block, planes[0, start:stop])
        for p in range(1, item):
            np.copyto(tmp, planes[p, start:stop])
            np.left_shift(tmp, 8 * p, out=tmp)
            np.bitwise_or(block, tmp, out=block)
    return out.view(dtype)


def _sample(arr: np.ndarray) -> np.ndarray:
    """Up to ``_SAMPLE_BYTES`` of ``arr`` (an eighth of it, at least ``_MIN_COMPRESS_BYTES``) in
    ``_SAMPLE_PIECES`` pieces spread evenly over it."""
    flat = arr.reshape(-1)
    size = min(_SAMPLE_BYTES, max(_MIN_COMPRESS_BYTES, arr.nbytes // 8))
    per = max(1, size // _SAMPLE_PIECES // max(1, arr.dtype.itemsize))
    if flat.size <= per * _SAMPLE_PIECES:
        return np.ascontiguousarray(flat)
    starts = np.linspace(0, flat.size - per, _SAMPLE_PIECES).astype(np.int64)
    return np.concatenate([flat[s:s + per] for s in starts])


def _compressor() -> zstandard.ZstdCompressor:
    comp = getattr(_local, "compressor", None)
    if comp is None:
        comp = _local.compressor = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True)
    return comp


def _encode(arr: np.ndarray) -> bytes:
    """``arr`` shuffled and compressed into one zstd frame."""
    return _compressor().compress(_shuffle(arr))


def _timed_encode(sample: np.ndarray) -> tuple[int, float]:
    """Compressed size of ``sample`` and the seconds per byte it takes to encode it warm: the faster
    of two runs, as a first run's set-up (or a preemption) would overstate it for a whole array."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        size = len(_encode(sample))
        times.append(time.perf_counter() - start)
    return size, min(times) / sample.nbytes


def compression_ratio(arr: np.ndarray) -> float:
    """Compressed size / raw size of a sample of ``arr`` (1.0 = no gain)."""
    sample = _sample(arr)
    return len(_encode(sample)) / sample.nbytes if sample.nbytes else 1.0


def choose_codec(arr: np.ndarray, policy: str, threshold: float = 0.7, link_bits: float | None = None) -> str:
    """``raw``/``zstd`` force a codec. ``auto``: with the link speed known (``link_bits``, this
    destination's, else ``set_link_speed``'s), compress when the wire time saved (as a sample
    compresses) exceeds the time to encode here (as the sample took) and decode there; otherwise when
    the sample shrinks below ``threshold``."""
    if policy in CODECS:
        return policy
    if arr.nbytes < _MIN_COMPRESS_BYTES:
        return "raw"
    link = link_bits if link_bits is not None else _LINK["bits_per_s"]
    if link is None:
        return "zstd" if compression_ratio(arr) < threshold else "raw"
    sample = _sample(arr)
    size, encode_s = _timed_encode(sample)
    saved_s = (1 - size / sample.nbytes) * 8 / link  # per byte of the array
    return "zstd" if saved_s > encode_s * (1 + _DECODE_PER_ENCODE) else "raw"


def encode_array(name: str, arr: np.ndarray, policy: str = "auto",
                 link_bits: float | None = None) -> tuple[dict[str, Any], list[Any]]:
    """Return the header entry and the frame payloads for one array (raw arrays in 1 MiB frames)."""
    arr = np.asarray(arr)
    if arr.dtype.str not in ALLOWED_DTYPES:
        arr = arr.astype(arr.dtype.newbyteorder("<")) if arr.dtype.byteorder == ">" else arr
        if arr.dtype.str not in ALLOWED_DTYPES:
            raise DecodeError(f"array {name!r}: dtype {arr.dtype} cannot travel (allowed: numeric and bool)")
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)  # (ascontiguousarray alone would turn a 0-d array into 1-d)
    codec = choose_codec(arr, policy, link_bits=link_bits)
    if codec == "zstd":
        payloads: list[Any] = [_encode(arr)]
    elif arr.size:
        view = memoryview(arr.reshape(-1).view(np.uint8))
        payloads = [view[i:i + CHUNK_BYTES] for i in range(0, arr.nbytes, CHUNK_BYTES)]
    else:
        payloads = [b""]
    meta = {"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "codec": codec, "nbytes": arr.nbytes}
    STATS["array_bytes_raw_sent"] += arr.nbytes
    STATS["array_bytes_wire_sent"] += sum(len(p) for p in payloads)
    if len(payloads) > 1:
        meta["frames"] = len(payloads)
    return meta, payloads


def check_array_meta(meta: Any, limits: Limits = DEFAULT_LIMITS) -> tuple[str, np.dtype, tuple[int, ...], str, int]:
    """Validate a header's array entry; return (name, dtype, shape, codec, nbytes)."""
    if not isinstance(meta, dict):
        raise DecodeError("array entry is not a map")
    name, dtype, shape, codec, nbytes = (meta.get(k) for k in ("name", "dtype", "shape", "codec", "nbytes"))
    frames = meta.get("frames", 1)
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1 or (frames > 1 and codec != "raw"):
        raise DecodeError(f"array {name!r}: bad frame count {frames!r}")
    if not isinstance(name, str) or not name or len(name) > 128:
        raise DecodeError("array entry has no valid name")
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise DecodeError(f"array {name!r}: dtype {dtype!r} is not allowed")
    if codec not in CODECS:
        raise DecodeError(f"array {name!r}: unknown codec {codec!r}")
    if not isinstance(shape, list) or len(shape) > _MAX_NDIM or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise DecodeError(f"array {name!r}: bad shape {shape!r}")
    dt = np.dtype(dtype)
    elements = 1
    for d in shape:
        elements *= d
    if elements > limits.max_array_elements:
        raise DecodeError(f"array {name!r}: {elements} elements exceeds the limit of {limits.max_array_elements}")
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes != elements * dt.itemsize:
        raise DecodeError(f"array {name!r}: shape {shape} of {dtype} is {elements * dt.itemsize} bytes, header says {nbytes!r}")
    return name, dt, tuple(shape), codec, nbytes


def frame_count(meta: dict[str, Any]) -> int:
    """How many frames carry this (already checked) array."""
    return meta.get("frames", 1)


def _assembled(name: str, frames: list[Any], nbytes: int) -> tuple[Any, np.ndarray | None]:
    """An array's frames as (the single frame, None) or (None, one pooled uint8 buffer holding them all)."""
    views = [memoryview(f).cast("B") if not isinstance(f, (bytes, bytearray)) else f for f in frames]
    if len(views) == 1:
        return views[0], None
    spans, pos = [], 0
    for v in views:
        spans.append((pos, v))
        pos += len(v)
    if pos != nbytes:
        raise DecodeError(f"array {name!r}: frames hold {pos} bytes, header says {nbytes}")
    out = _POOL.take(nbytes)
    workers = min(_COPY_THREADS, nbytes // (_PARALLEL_COPY_BYTES // 2)) if nbytes >= _PARALLEL_COPY_BYTES else 1
    share = max(1, -(-nbytes // workers))
    groups: list[list[tuple[int, Any]]] = [[] for _ in range(workers)]
    for span in spans:
        groups[min(span[0] // share, workers - 1)].append(span)
    threads = [threading.Thread(target=_copy_spans, args=(out, g), daemon=True) for g in groups[1:]]
    for t in threads:  # numpy lets go of the GIL while it copies
        t.start()
    _copy_spans(out, groups[0])
    for t in threads:
        t.join()
    return None, out


def _copy_spans(out: np.ndarray, spans: list[tuple[int, Any]]) -> None:
    for pos, view in spans:
        out[pos:pos + len(view)] = np.frombuffer(view, np.uint8)


def decode_array(meta: Any, frames: Any, limits: Limits = DEFAULT_LIMITS,
                 checked: tuple[str, np.dtype, tuple[int, ...], str, int] | None = None) -> tuple[str, np.ndarray]:
    """Check an array entry against its frame(s) and return ``(name, array)``; single-frame raw arrays
    are read-only views of the received frame. ``checked``: what ``check_array_meta`` returned for
    ``meta`` already."""
    name, dt, shape, codec, nbytes = checked or check_array_meta(meta, limits)
    frame, joined = _assembled(name, frames if isinstance(frames, list) else [frames], nbytes)
    STATS["array_bytes_raw_received"] += nbytes
    STATS["array_bytes_wire_received"] += len(frame) if codec == "zstd" else nbytes
    if joined is not None:  # raw: check_array_meta allows several frames for nothing else
        return name, joined.view(dt).reshape(shape)
    if codec == "raw":
        if len(frame) != nbytes:
            raise DecodeError(f"array {name!r}: frame has {len(frame)} bytes, header says {nbytes}")
        return name, np.frombuffer(frame, dtype=dt).reshape(shape)
    try:
        declared = zstandard.frame_content_size(bytes(frame[:18]))
    except zstandard.ZstdError as e:
        raise DecodeError(f"array {name!r}: not a zstd frame") from e
    if declared != nbytes:
        raise DecodeError(f"array {name!r}: zstd frame declares {declared} bytes, header says {nbytes}")
    data = _POOL.take(nbytes)
    try:
        got = _decompress_into(frame, data)
    except zstandard.ZstdError as e:
        raise DecodeError(f"array {name!r}: zstd frame does not decompress: {e}") from e
    if got != nbytes:
        raise DecodeError(f"array {name!r}: decompressed to {got} bytes, header says {nbytes}")
    return name, _unshuffle(data, dt).reshape(shape)


def _decompress_into(frame: Any, out: np.ndarray) -> int:
    """Decompress straight into ``out`` (no intermediate bytes); the count written. Raises ZstdError
    for a corrupt frame or one that expands past ``out``."""
    reader = zstandard.ZstdDecompressor().stream_reader(frame)
    view, got = memoryview(out), 0
    while got < len(view):
        n = reader.readinto(view[got:])
        if not n:
            return got
        got += n
    if reader.read(1):  # finishes the frame, which checks it; any byte more is past the declared size
        raise zstandard.ZstdError("the frame expands past its declared content size")
    return got
