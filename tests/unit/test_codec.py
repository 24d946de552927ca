"""The array codec: byte-shuffle, codec choice and single-array encode/decode."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common import codec
from common.codec import Limits, check_array_meta, choose_codec, compression_ratio, decode_array, encode_array
from common.errors import DecodeError

_FLOATS = ["float16", "float32", "float64", "complex64", "complex128"]


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(st.sampled_from(_FLOATS).map(np.dtype),
                  hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=20)))
def test_shuffle_round_trip(arr):
    shuffled = codec._shuffle(arr)
    assert len(shuffled) == arr.nbytes
    back = np.frombuffer(codec._unshuffle(shuffled, arr.dtype), dtype=arr.dtype).reshape(arr.shape)
    assert back.tobytes() == arr.tobytes()


@pytest.mark.parametrize("dtype", _FLOATS)
def test_shuffle_groups_bytes_by_position(dtype):
    arr = np.arange(1, 5, dtype=dtype)
    item = arr.dtype.itemsize
    raw = arr.tobytes()
    shuffled = codec._shuffle(arr)
    assert shuffled != raw
    # plane p holds byte p of every element in order
    for p in range(item):
        assert shuffled[p * len(arr):(p + 1) * len(arr)] == raw[p::item]


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool", "int8"])
def test_shuffle_leaves_non_float_dtypes_alone(dtype):
    arr = np.arange(10).astype(dtype)
    assert codec._shuffle(arr) == arr.tobytes()
    assert codec._unshuffle(arr.tobytes(), arr.dtype) == arr.tobytes()


def test_choose_codec_auto_picks_zstd_for_integer_valued_floats():
    arr = (np.arange(100_000) % 251).astype(np.float32)
    assert compression_ratio(arr) < 0.5
    assert choose_codec(arr, "auto") == "zstd"


def test_choose_codec_auto_picks_raw_for_random_float32():
    arr = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)
    assert compression_ratio(arr) > 0.8
    assert choose_codec(arr, "auto") == "raw"


def test_choose_codec_auto_keeps_small_arrays_raw():
    small = np.zeros(1000, np.float64)  # 8 KB compresses to nothing but is below the minimum
    assert small.nbytes < codec._MIN_COMPRESS_BYTES
    assert choose_codec(small, "auto") == "raw"


@pytest.mark.parametrize("policy", ["raw", "zstd"])
@pytest.mark.parametrize("arr", [np.zeros(10), np.random.default_rng(0).random(50_000), np.zeros(0, np.int8)],
                         ids=["tiny", "random", "empty"])
def test_forced_codecs(policy, arr):
    assert choose_codec(arr, policy) == policy
    meta, payloads = encode_array("x", arr, policy)
    assert meta == {"name": "x", "dtype": arr.dtype.str, "shape": list(arr.shape), "codec": policy,
                    "nbytes": arr.nbytes}
    (payload,) = payloads
    if policy == "zstd":
        assert zstandard.frame_content_size(bytes(payload)) == arr.nbytes
    else:
        assert bytes(payload) == arr.tobytes()
    name, back = decode_array(meta, payload)
    assert name == "x"
    assert back.dtype == arr.dtype and back.tobytes() == arr.tobytes()


def test_threshold_controls_auto():
    arr = np.random.default_rng(2).integers(0, 2**20, 50_000).astype(np.float64)
    ratio = compression_ratio(arr)
    assert 0 < ratio < 1
    assert choose_codec(arr, "auto", threshold=ratio + 0.01) == "zstd"
    assert choose_codec(arr, "auto", threshold=ratio - 0.01) == "raw"


def test_compression_ratio_sanity():
    rng = np.random.default_rng(3)
    zeros = compression_ratio(np.zeros(100_000, np.float64))
    ints = compression_ratio(rng.integers(0, 100, 100_000).astype(np.float32))
    noise = compression_ratio(rng.random(100_000).astype(np.float32))
    incompressible = compression_ratio(rng.integers(0, 256, 100_000, dtype=np.uint8))
    assert 0 < zeros < 0.01
    assert zeros < ints < noise
    assert ints < 0.4
    assert 0.7 < noise < 1.0
    assert 0.99 < incompressible < 1.01  # random bytes: no gain, tiny frame overhead
    assert compression_ratio(np.zeros(0)) == 1.0


def test_compression_ratio_reads_only_a_sample():
    # the head of the array is zeros and the rest noise: the ratio reflects the 64 KB sample
    arr = np.concatenate([np.zeros(codec._SAMPLE_BYTES // 8), np.random.default_rng(4).random(100_000)])
    assert compression_ratio(arr) < 0.01


def test_decode_array_raw_is_a_read_only_view_of_bytes():
    arr = np.arange(12, dtype=np.int16).reshape(3, 4)
    meta, (payload,) = encode_array("a", arr, "raw")
    _, back = decode_array(meta, bytes(payload))
    np.testing.assert_array_equal(back, arr)
    assert not back.flags.writeable


def test_large_raw_arrays_travel_in_1mib_frames_and_reassemble():
    arr = np.arange(700_000, dtype=np.float32)  # 2.8 MB: three frames
    meta, payloads = encode_array("a", arr, "raw")
    assert meta["frames"] == 3 and [len(p) for p in payloads] == [1 << 20, 1 << 20, arr.nbytes - (2 << 20)]
    _, back = decode_array(meta, [bytes(p) for p in payloads])
    np.testing.assert_array_equal(back, arr)
    with pytest.raises(DecodeError, match="frames hold"):
        decode_array(meta, [bytes(p) for p in payloads[:2]] + [b"x"])
    with pytest.raises(DecodeError, match="bad frame count"):
        decode_array({**meta, "codec": "zstd"}, [bytes(p) for p in payloads])


def test_check_array_meta_returns_typed_fields():
    name, dt, shape, kind, nbytes = check_array_meta(
        {"name": "a", "dtype": "<c16", "shape": [2, 0, 3], "codec": "zstd", "nbytes": 0})
    assert (name, dt, shape, kind, nbytes) == ("a", np.dtype(np.complex128), (2, 0, 3), "zstd", 0)


def test_check_array_meta_applies_limits():
    meta = {"name": "a", "dtype": "|u1", "shape": [10, 10], "codec": "raw", "nbytes": 100}
    assert check_array_meta(meta, Limits(max_array_elements=100))[2] == (10, 10)
    with pytest.raises(DecodeError, match="100 elements exceeds the limit of 99"):
        check_array_meta(meta, Limits(max_array_elements=99))


def test_allowed_dtypes_are_little_endian_numeric_and_bool():
    kinds = {np.dtype(s).kind for s in codec.ALLOWED_DTYPES}
    assert kinds == {"b", "i", "u", "f", "c"}
    assert all(np.dtype(s).byteorder in "<|=" for s in codec.ALLOWED_DTYPES)
    assert len(codec.ALLOWED_DTYPES) == 14
