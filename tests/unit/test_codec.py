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
    assert shuffled.dtype == np.uint8 and len(shuffled) == arr.nbytes
    back = codec._unshuffle(shuffled.tobytes(), arr.dtype)
    assert back.dtype == arr.dtype
    assert back.reshape(arr.shape).tobytes() == arr.tobytes()


@pytest.mark.parametrize("dtype", _FLOATS)
def test_shuffle_groups_bytes_by_position(dtype):
    arr = np.arange(1, 5, dtype=dtype)
    item = arr.dtype.itemsize
    raw = arr.tobytes()
    shuffled = codec._shuffle(arr).tobytes()
    assert shuffled != raw
    # plane p holds byte p of every element in order
    for p in range(item):
        assert shuffled[p * len(arr):(p + 1) * len(arr)] == raw[p::item]


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool", "int8"])
def test_shuffle_leaves_non_float_dtypes_alone(dtype):
    arr = np.arange(10).astype(dtype)
    assert codec._shuffle(arr).tobytes() == arr.tobytes()
    assert codec._unshuffle(arr.tobytes(), arr.dtype).tobytes() == arr.tobytes()


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


def test_compression_ratio_samples_across_the_array():
    # a head of zeros must not speak for the noise after it, nor a tail of zeros for the noise before it
    noise = np.random.default_rng(4).random(1_000_000)
    zeros = np.zeros(codec._SAMPLE_BYTES // 8)
    assert compression_ratio(np.concatenate([zeros, noise])) > 0.6
    assert compression_ratio(np.concatenate([noise, zeros])) > 0.6
    assert compression_ratio(np.concatenate([zeros, noise[:20_000]])) < 0.9  # mostly zeros: it shows


def test_sample_is_bounded_and_spread():
    arr = np.arange(10_000_000, dtype=np.float64)
    sample = codec._sample(arr)
    assert sample.nbytes <= codec._SAMPLE_BYTES
    assert sample[0] == 0 and sample[-1] == arr[-1]  # from the first element to the last
    mid = np.arange(40_000, dtype=np.float64)  # 320 KB: an eighth of it
    assert codec._sample(mid).nbytes == mid.nbytes // 8
    small = np.arange(100, dtype=np.float32)
    np.testing.assert_array_equal(codec._sample(small), small)


@pytest.fixture
def link_speed():
    yield codec.set_link_speed
    codec.set_link_speed(None)


def test_auto_with_a_known_link_compresses_only_where_it_pays(link_speed):
    noise = np.random.default_rng(5).standard_normal(200_000).astype(np.float32)  # shrinks to ~0.85
    ints = (np.arange(200_000) % 251).astype(np.float32)
    assert choose_codec(noise, "auto") == "raw"  # unknown link: the ratio threshold decides
    link_speed(1e3)  # 1 kbit/s: any saving pays for the codec's time
    assert choose_codec(noise, "auto") == "zstd"
    assert choose_codec(ints, "auto") == "zstd"
    assert choose_codec(np.zeros(100), "auto") == "raw"  # too small to bother
    link_speed(1e15)  # far faster than zstd: the wire time saved never pays for it
    assert choose_codec(ints, "auto") == "raw"
    assert choose_codec(np.zeros(100_000), "auto") == "raw"
    assert choose_codec(ints, "zstd") == "zstd"  # forced codecs stay forced
    with pytest.raises(ValueError):
        link_speed(0)


def test_a_destination_s_own_link_speed_outweighs_the_default(link_speed):
    noise = np.random.default_rng(5).standard_normal(200_000).astype(np.float32)
    ints = (np.arange(200_000) % 251).astype(np.float32)
    assert choose_codec(noise, "auto", link_bits=1e3) == "zstd"  # a slow link to this one: it pays
    link_speed(1e3)
    assert choose_codec(ints, "auto", link_bits=1e15) == "raw"  # this destination is fast, whatever the default
    meta, _ = encode_array("a", noise, "auto", link_bits=1e3)
    assert meta["codec"] == "zstd"


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(st.sampled_from(_FLOATS + ["int16", "bool"]).map(np.dtype),
                  hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=40)))
def test_zstd_round_trip_across_block_boundaries(arr):
    block = codec._BLOCK
    codec._BLOCK = 7  # blocks end inside the array, and not on an element count's multiple
    try:
        meta, (frame,) = encode_array("a", arr, "zstd")
        _, back = decode_array(meta, frame)
    finally:
        codec._BLOCK = block
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert back.tobytes() == arr.tobytes()


def test_zstd_frame_expanding_past_its_declared_size_is_refused():
    frame = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(bytes(64 * 1024))
    assert frame[4] == 0x60  # single segment, 2-byte content size: rewrite as a 1-byte size of 16
    lying = frame[:4] + bytes([0x20, 16]) + frame[7:]
    with pytest.raises(DecodeError, match="zstd frame does not decompress"):
        decode_array({"name": "a", "dtype": "<f4", "shape": [4], "codec": "zstd", "nbytes": 16}, lying)


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


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_raw_arrays_are_assembled_by_several_threads(monkeypatch, threads):
    monkeypatch.setattr(codec, "_PARALLEL_COPY_BYTES", 1 << 20)
    monkeypatch.setattr(codec, "_COPY_THREADS", threads)
    arr = np.random.default_rng(6).random((1000, 700))  # 5.6 MB: six frames, split unevenly between threads
    meta, payloads = encode_array("a", arr, "raw")
    assert meta["frames"] == 6
    _, back = decode_array(meta, [bytes(p) for p in payloads])
    np.testing.assert_array_equal(back, arr)
    frames = [bytes(p) for p in payloads]
    _, back = decode_array({**meta, "frames": 7}, frames[:3] + [frames[3][:5], frames[3][5:]] + frames[4:])
    np.testing.assert_array_equal(back, arr)


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


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setattr(codec, "_POOL_MIN_BYTES", 1024)
    monkeypatch.setattr(codec, "_POOL_MAX_BYTES", 8192)
    pool = codec._BufferPool()
    monkeypatch.setattr(codec, "_POOL", pool)
    return pool


def test_pool_reuses_a_buffer_only_once_nothing_refers_to_it(pool):
    a = pool.take(2000)
    address = a.__array_interface__["data"][0]
    view = a.view(np.int16).reshape(10, 100)[2:]  # any array made from it keeps it busy
    del a
    b = pool.take(2000)
    assert b.__array_interface__["data"][0] != address
    del view, b
    c = pool.take(1900)  # fits in a free buffer up to 1/8 larger
    assert c.__array_interface__["data"][0] in {pool._buffers[0].__array_interface__["data"][0],
                                                pool._buffers[1].__array_interface__["data"][0]}
    assert len(c) == 1900 and len(pool._buffers) == 2
    assert len(pool.take(100)) == 100 and len(pool._buffers) == 2  # small: not pooled


def test_pool_keeps_free_buffers_within_its_budget(pool):
    held = [pool.take(3000) for _ in range(4)]  # 12 KB in use: in use is never dropped
    assert len(pool._buffers) == 4
    del held
    pool.take(3000)  # one of the free ones again
    assert len(pool._buffers) == 4
    pool.take(6000)  # a new size: free buffers trimmed to 8192 - 6000 bytes first
    assert sum(len(b) for b in pool._buffers) <= 3000 + 6000 + 3000
    codec.release_buffers()


def test_decoded_arrays_survive_later_decodes(pool):
    arrays = [np.full(700, i, np.float32) for i in range(3)]  # 2.8 KB: pooled here
    decoded = []
    for arr in arrays:
        for policy in ("raw", "zstd"):
            meta, payloads = encode_array("a", arr, policy)
            if policy == "raw":
                payloads = [bytes(p) for p in payloads] + [b""]  # two frames: assembled in a pooled buffer
                meta = {**meta, "frames": 2}
            decoded.append(decode_array(meta, payloads if policy == "raw" else payloads[0])[1])
    for i, back in enumerate(decoded):
        np.testing.assert_array_equal(back, arrays[i // 2])



@pytest.mark.parametrize("speed", [0, -1.0, float("nan")])
def test_a_link_speed_must_be_positive(speed):
    with pytest.raises(ValueError, match="link speed"):
        codec.set_link_speed(speed)
    assert codec._LINK["bits_per_s"] is None
