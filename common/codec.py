"""Array codec: numpy arrays to and from raw frames, never pickled.

Each array travels as one frame described by ``{name, dtype, shape, codec, nbytes}``
in the message header. ``codec`` is ``raw`` (the array's bytes) or ``zstd``
(zstandard at level 1, byte-shuffled first for float dtypes, which helps the
exponent bytes compress). ``auto`` compresses only when a sample shows it pays.
"""

from __future__ import annotations

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
_SAMPLE_BYTES = 64 * 1024
#: raw arrays travel in frames of this size: ZeroMQ moves 1 MiB frames about twice as fast as
#: one huge frame over tcp loopback, and the receiver assembles them with a single copy
CHUNK_BYTES = 1 << 20
_MIN_COMPRESS_BYTES = 16 * 1024
_MAX_NDIM = 8


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


def _shuffle(buf: np.ndarray) -> bytes:
    item = buf.dtype.itemsize
    if buf.dtype.kind not in "fc" or item == 1:
        return buf.tobytes()
    return np.ascontiguousarray(buf.reshape(-1).view(np.uint8).reshape(-1, item).T).tobytes()


def _unshuffle(data: bytes, dtype: np.dtype) -> bytes:
    item = dtype.itemsize
    if dtype.kind not in "fc" or item == 1:
        return data
    planes = np.frombuffer(data, dtype=np.uint8).reshape(item, -1)
    return np.ascontiguousarray(planes.T).tobytes()


def compression_ratio(arr: np.ndarray) -> float:
    """Compressed size / raw size of a sample of ``arr`` (1.0 = no gain)."""
    flat = arr.reshape(-1)
    n = max(1, _SAMPLE_BYTES // max(1, arr.dtype.itemsize))
    sample = np.ascontiguousarray(flat[:n])
    raw = sample.nbytes
    if raw == 0:
        return 1.0
    packed = zstandard.ZstdCompressor(level=1).compress(_shuffle(sample))
    return len(packed) / raw


def choose_codec(arr: np.ndarray, policy: str, threshold: float = 0.7) -> str:
    """``raw``/``zstd`` force a codec; ``auto`` compresses when a sample shrinks below ``threshold``."""
    if policy in CODECS:
        return policy
    if arr.nbytes < _MIN_COMPRESS_BYTES:
        return "raw"
    return "zstd" if compression_ratio(arr) < threshold else "raw"


def encode_array(name: str, arr: np.ndarray, policy: str = "auto") -> tuple[dict[str, Any], list[Any]]:
    """Return the header entry and the frame payloads for one array (raw arrays in 1 MiB frames)."""
    arr = np.asarray(arr)
    if arr.dtype.str not in ALLOWED_DTYPES:
        arr = arr.astype(arr.dtype.newbyteorder("<")) if arr.dtype.byteorder == ">" else arr
        if arr.dtype.str not in ALLOWED_DTYPES:
            raise DecodeError(f"array {name!r}: dtype {arr.dtype} cannot travel (allowed: numeric and bool)")
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)  # (ascontiguousarray alone would turn a 0-d array into 1-d)
    codec = choose_codec(arr, policy)
    if codec == "zstd":
        payloads: list[Any] = [zstandard.ZstdCompressor(level=1, write_content_size=True).compress(_shuffle(arr))]
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


def _joined(name: str, frames: list[Any], nbytes: int) -> Any:
    """One buffer from an array's frames: the frame itself, or one copy into a fresh array."""
    views = [memoryview(f).cast("B") if not isinstance(f, (bytes, bytearray)) else f for f in frames]
    if len(views) == 1:
        return views[0]
    total = sum(len(v) for v in views)
    if total != nbytes:
        raise DecodeError(f"array {name!r}: frames hold {total} bytes, header says {nbytes}")
    out = np.empty(nbytes, np.uint8)
    pos = 0
    for v in views:
        out[pos:pos + len(v)] = np.frombuffer(v, np.uint8)
        pos += len(v)
    return out.data


def decode_array(meta: Any, frames: Any, limits: Limits = DEFAULT_LIMITS) -> tuple[str, np.ndarray]:
    """Check an array entry against its frame(s) and return ``(name, array)``; single-frame raw arrays
    are read-only views of the received frame."""
    name, dt, shape, codec, nbytes = check_array_meta(meta, limits)
    buf = _joined(name, frames if isinstance(frames, list) else [frames], nbytes)
    STATS["array_bytes_raw_received"] += nbytes
    STATS["array_bytes_wire_received"] += len(buf) if codec == "zstd" else nbytes
    if codec == "raw":
        if len(buf) != nbytes:
            raise DecodeError(f"array {name!r}: frame has {len(buf)} bytes, header says {nbytes}")
        return name, np.frombuffer(buf, dtype=dt).reshape(shape)
    try:
        declared = zstandard.frame_content_size(bytes(buf[:18]))
    except zstandard.ZstdError as e:
        raise DecodeError(f"array {name!r}: not a zstd frame") from e
    if declared != nbytes:
        raise DecodeError(f"array {name!r}: zstd frame declares {declared} bytes, header says {nbytes}")
    try:
        data = zstandard.ZstdDecompressor().decompress(buf, max_output_size=nbytes)
    except zstandard.ZstdError as e:
        raise DecodeError(f"array {name!r}: zstd frame does not decompress: {e}") from e
    if len(data) != nbytes:
        raise DecodeError(f"array {name!r}: decompressed to {len(data)} bytes, header says {nbytes}")
    return name, np.frombuffer(_unshuffle(data, dt), dtype=dt).reshape(shape)
