"""The wire format: every message round-trips, and every bad frame is refused with a clear DecodeError."""

from __future__ import annotations

import dataclasses
import re
import types
import typing

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common import codec, protocol, wire
from common.codec import Limits
from common.errors import DecodeError, ProtocolError
from common.protocol import MESSAGES, MsgType

ROUND_TRIP = settings(max_examples=50, deadline=None)

# -- strategies -----------------------------------------------------------------

_INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_TEXT = st.text(max_size=24)
_LEAF = st.none() | st.booleans() | _INT64 | st.floats(allow_nan=False) | _TEXT | st.binary(max_size=16)


def _nested(depth: int) -> st.SearchStrategy:
    """msgpack-able values nested at most ``depth`` levels (the decoder allows 8 in the body)."""
    if depth == 0:
        return _LEAF
    inner = _nested(depth - 1)
    return _LEAF | st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3)


_DICT = st.dictionaries(_TEXT, _nested(3), max_size=4)


def _for_hint(hint) -> st.SearchStrategy:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([_for_hint(h) for h in typing.get_args(hint)])
    if hint is type(None):
        return st.none()
    if origin is list:
        (item,) = typing.get_args(hint)
        return st.lists(_for_hint(item), max_size=4)
    simple = {str: _TEXT, int: _INT64, float: st.floats(allow_nan=False), bool: st.booleans(), dict: _DICT}
    return simple[hint]


def _body_hints(cls: type[protocol.Message]) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in ("id", "token", "arrays")}


# Every dtype the wire allows, 0-d arrays and empty sides included.
_DTYPES = st.sampled_from(sorted(codec.ALLOWED_DTYPES)).map(np.dtype)
_ARRAY = hnp.arrays(_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
_ARRAYS = st.dictionaries(st.text(min_size=1, max_size=12), _ARRAY, max_size=3)


@st.composite
def messages(draw, cls: type[protocol.Message]) -> protocol.Message:
    body = {name: draw(_for_hint(hint)) for name, hint in _body_hints(cls).items()}
    return cls(
        id=draw(st.text(min_size=1, max_size=64)),
        token=draw(st.none() | st.text(max_size=64)),
        arrays=draw(_ARRAYS),
        **body,
    )


def _same_array(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert got.tobytes() == want.tobytes()  # exact, NaN and -0.0 included


def _assert_same(got: protocol.Message, want: protocol.Message) -> None:
    assert type(got) is type(want)
    assert got == want  # every field but arrays
    assert got.token == want.token
    assert sorted(got.arrays) == sorted(want.arrays)
    for name, arr in want.arrays.items():
        _same_array(got.arrays[name], arr)


# -- round trips ----------------------------------------------------------------


def test_messages_cover_every_type():
    assert set(MESSAGES) == set(MsgType)
    for mtype, cls in MESSAGES.items():
        assert cls.type is mtype


@pytest.mark.parametrize("mtype", list(MsgType), ids=lambda t: t.value)
@ROUND_TRIP
@given(data=st.data())
def test_round_trip(mtype, data):
    msg = data.draw(messages(MESSAGES[mtype]))
    compression = data.draw(st.sampled_from(["auto", "raw", "zstd"]))
    topic = data.draw(st.none() | st.text(alphabet="0123456789abcdef", min_size=1, max_size=32))

    frames = wire.encode(msg, topic=topic, compression=compression)
    assert len(frames) == len(msg.arrays) + 1 + (topic is not None)
    if topic is not None:
        assert frames[0] == topic.encode()

    got = wire.decode(frames, topic=topic is not None)
    _assert_same(got, msg)
    # as received from zmq with copy=True: every frame is bytes
    _assert_same(wire.decode([bytes(f) for f in frames], topic=topic is not None), msg)


@pytest.mark.parametrize("compression", ["raw", "zstd"])
def test_large_array_round_trip(compression):
    a = np.arange(200_000, dtype=np.float64).reshape(400, 500)
    frames = wire.encode(protocol.Result(provider_id="p", task_id="j.0", attempt=1, elapsed=0.5,
                                             arrays={"c": a}), compression=compression)
    meta = msgpack.unpackb(frames[0])["arrays"][0]
    assert meta["codec"] == compression
    assert meta["shape"] == [400, 500] and meta["nbytes"] == a.nbytes
    if compression == "zstd":
        assert len(frames[1]) < a.nbytes / 2
    np.testing.assert_array_equal(wire.decode(frames).arrays["c"], a)


def test_auto_compresses_integer_valued_data_only():
    ints = np.arange(100_000, dtype=np.float32) % 100
    noise = np.random.default_rng(1).standard_normal(100_000).astype(np.float32)
    frames = wire.encode(protocol.Ok(arrays={"ints": ints, "noise": noise}))
    codecs = {m["name"]: m["codec"] for m in msgpack.unpackb(frames[0])["arrays"]}
    assert codecs == {"ints": "zstd", "noise": "raw"}
    got = wire.decode(frames).arrays
    _same_array(got["ints"], ints)
    _same_array(got["noise"], noise)


def test_non_contiguous_and_big_endian_arrays_travel():
    base = np.arange(60, dtype=np.int32).reshape(6, 10)
    big = np.arange(5, dtype=">f8")
    got = wire.decode(wire.encode(protocol.Ok(arrays={"t": base.T, "s": base[::2, 1::3], "big": big}))).arrays
    np.testing.assert_array_equal(got["t"], base.T)
    np.testing.assert_array_equal(got["s"], base[::2, 1::3])
    assert got["big"].dtype == np.dtype("<f8")
    np.testing.assert_array_equal(got["big"], big)


@pytest.mark.parametrize("compression", ["raw", "zstd"])
def test_zero_d_array_keeps_its_shape(compression):
    got = wire.decode(wire.encode(protocol.Ok(arrays={"x": np.array(3.5)}), compression=compression))
    assert got.arrays["x"].shape == ()
    assert got.arrays["x"][()] == 3.5


def test_encode_refuses_object_and_string_arrays():
    with pytest.raises(DecodeError, match="cannot travel"):
        wire.encode(protocol.Ok(arrays={"o": np.array([object()], dtype=object)}))
    with pytest.raises(DecodeError, match="cannot travel"):
        wire.encode(protocol.Ok(arrays={"s": np.array(["a", "b"])}))


def test_defaults_fill_optional_fields():
    header = _header(type="deregister", body={"provider_id": "p"})
    msg = wire.decode([_pack(header)])
    assert msg == protocol.Deregister(id="m1", provider_id="p", reason="")


def test_decode_error_is_a_protocol_error():
    assert issubclass(DecodeError, ProtocolError)


# -- decoder rejections -----------------------------------------------------------


def _header(**over) -> dict:
    header = {"v": wire.VERSION, "type": "cancel_task", "id": "m1", "token": None,
              "body": {"task_id": "j.0", "attempt": 1}, "arrays": []}
    header.update(over)
    return header


def _pack(header) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def _meta(**over) -> dict:
    meta = {"name": "a", "dtype": "<f8", "shape": [2, 3], "codec": "raw", "nbytes": 48}
    meta.update(over)
    return meta


def _reject(frames, match, **kw):
    with pytest.raises(DecodeError, match=match):
        wire.decode(frames, **kw)


def test_valid_reference_header_decodes():
    # the rejections below each break one thing in this message
    msg = wire.decode([_pack(_header(arrays=[_meta()])), bytes(48)])
    assert msg == protocol.CancelTask(id="m1", task_id="j.0", attempt=1)
    assert msg.arrays["a"].shape == (2, 3)


def test_rejects_no_frames():
    _reject([], "no header frame")
    _reject([], "empty message", topic=True)
    _reject([b"topic"], "no header frame", topic=True)


@pytest.mark.parametrize("raw", [b"\xc1", b"\x82\xa1v", b"", b"\x93\x01"],
                         ids=["reserved", "truncated", "empty", "short"])
def test_rejects_bad_msgpack(raw):
    _reject([raw], "not valid msgpack")


@pytest.mark.parametrize("value", [[1, 2], "header", 7, None])
def test_rejects_header_that_is_not_a_map(value):
    _reject([_pack(value)], "not a map")


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_rejects_wrong_version(version):
    _reject([_pack(_header(v=version))], f"protocol version {version!r} is not supported")


def test_rejects_missing_version():
    header = _header()
    del header["v"]
    _reject([_pack(header)], "protocol version None")


@pytest.mark.parametrize("mtype", ["bogus", "", 3, None, ["task"]])
def test_rejects_unknown_type(mtype):
    _reject([_pack(_header(type=mtype))], "unknown message type")


def test_rejects_missing_field():
    _reject([_pack(_header(body={"task_id": "j.0"}))], r"cancel_task: missing fields \['attempt'\]")


def test_rejects_unknown_field():
    _reject([_pack(_header(body={"task_id": "j.0", "attempt": 1, "extra": 1}))], r"unknown fields \['extra'\]")


def test_rejects_mixed_bytes_and_str_unknown_fields():
    _reject([_pack(_header(body={"task_id": "j.0", "attempt": 1, "x": 1, b"y": 2}))], "body keys must be strings")


@pytest.mark.parametrize(("mtype", "body", "name"), [
    ("cancel_task", {"task_id": "j.0", "attempt": True}, "attempt"),  # bool is not an int
    ("cancel_task", {"task_id": "j.0", "attempt": 1.0}, "attempt"),
    ("cancel_task", {"task_id": "j.0", "attempt": "1"}, "attempt"),
    ("cancel_task", {"task_id": 5, "attempt": 1}, "task_id"),
    ("cancel_task", {"task_id": None, "attempt": 1}, "task_id"),
    ("progress", {"provider_id": "p", "task_id": "t", "attempt": 0, "fraction": True}, "fraction"),
    ("progress", {"provider_id": "p", "task_id": "t", "attempt": 0, "fraction": "half"}, "fraction"),
    ("failure", {"provider_id": "p", "task_id": "t", "attempt": 0, "error": "x", "retryable": 1}, "retryable"),
    ("heartbeat", {"provider_id": "p", "epoch": "e", "running": ["a", 1], "outbox": [], "free_slots": 1},
     "running"),
    ("heartbeat", {"provider_id": "p", "epoch": "e", "running": "a", "outbox": [], "free_slots": 1}, "running"),
    ("result", {"provider_id": "p", "task_id": "t", "attempt": 0, "elapsed": 1.0, "meta": []}, "meta"),
    ("submit", {"task_type": "noop", "params": {}, "priority": None}, "priority"),
    ("list_jobs", {"state": 3}, "state"),
    ("provider_list", {"providers": [{"a": 1}, "p"]}, "providers"),
])
def test_rejects_wrong_field_type(mtype, body, name):
    _reject([_pack(_header(type=mtype, body=body))], f"{mtype}: field '{name}' has the wrong type")


def test_int_is_accepted_where_float_is_expected():
    body = {"provider_id": "p", "task_id": "t", "attempt": 0, "fraction": 1}
    assert wire.decode([_pack(_header(type="progress", body=body))]).fraction == 1


@pytest.mark.parametrize(("over", "match"), [
    ({"id": ""}, "message id"),
    ({"id": 5}, "message id"),
    ({"id": "x" * 129}, "message id"),
    ({"token": 5}, "token must be a string"),
    ({"body": []}, "body must be a map"),
    ({"arrays": {}}, "arrays must be a list"),
])
def test_rejects_bad_envelope(over, match):
    _reject([_pack(_header(**over))], match)


def test_rejects_header_too_large():
    header = _pack(_header(type="deregister", body={"provider_id": "p", "reason": "x" * 2000}))
    _reject([header], f"header of {len(header)} bytes exceeds the limit of 1000", limits=Limits(max_header_bytes=1000))
    big = _pack(_header(type="deregister", body={"provider_id": "p", "reason": "x" * (300 * 1024)}))
    _reject([big], "header of .* bytes exceeds the limit of 262144")


def test_rejects_body_nested_too_deep():
    nested: object = 1
    for _ in range(9):
        nested = [nested]
    _reject([_pack(_header(type="submit", body={"task_type": "noop", "params": {"x": nested}}))],
            "nested deeper than 8 levels")
    ok = 1
    for _ in range(6):
        ok = [ok]
    assert wire.decode([_pack(_header(type="submit", body={"task_type": "noop", "params": {"x": ok}}))])


@pytest.mark.parametrize(("n_metas", "n_frames"), [(1, 0), (0, 1), (2, 1), (1, 2)])
def test_rejects_arrays_count_not_matching_frames(n_metas, n_frames):
    metas = [_meta(name=f"a{i}") for i in range(n_metas)]
    frames = [_pack(_header(arrays=metas))] + [bytes(48)] * n_frames
    _reject(frames, f"header lists {n_metas} arrays in {n_metas} frames but {n_frames} frames follow")


def test_rejects_too_many_arrays():
    metas = [_meta(name=f"a{i}") for i in range(3)]
    _reject([_pack(_header(arrays=metas))] + [bytes(48)] * 3, "header lists 3 arrays", limits=Limits(max_arrays=2))


def test_rejects_duplicate_array_names():
    _reject([_pack(_header(arrays=[_meta(), _meta()])), bytes(48), bytes(48)], "array 'a' appears twice")


@pytest.mark.parametrize("dtype", ["|O", "<U4", "|S3", ">f8", "<f3", "<M8[ns]", "|V8", "float64", ""])
def test_rejects_object_and_unknown_dtypes(dtype):
    _reject([_pack(_header(arrays=[_meta(dtype=dtype)])), bytes(48)],
            re.escape(f"array 'a': dtype {dtype!r} is not allowed"))


@pytest.mark.parametrize("dtype", [["<f8"], {"kind": "f"}])
def test_rejects_unhashable_dtype(dtype):
    _reject([_pack(_header(arrays=[_meta(dtype=dtype)])), bytes(48)], "is not allowed")


@pytest.mark.parametrize(("over", "match"), [
    ({"nbytes": 40}, r"shape \[2, 3\] of <f8 is 48 bytes, header says 40"),
    ({"nbytes": "48"}, "header says '48'"),
    ({"shape": [2, 4]}, "is 64 bytes, header says 48"),
    ({"dtype": "<f4"}, "is 24 bytes, header says 48"),
])
def test_rejects_shape_itemsize_not_matching_nbytes(over, match):
    _reject([_pack(_header(arrays=[_meta(**over)])), bytes(48)], match)


@pytest.mark.parametrize("shape", [[-1, 2], [2, -3], [-6]])
def test_rejects_negative_dims(shape):
    _reject([_pack(_header(arrays=[_meta(shape=shape)])), bytes(48)], "bad shape")


@pytest.mark.parametrize("shape", ["2x3", [2.0, 3], [True, 6], [1] * 9, None])
def test_rejects_malformed_shapes(shape):
    _reject([_pack(_header(arrays=[_meta(shape=shape)])), bytes(48)], "bad shape")


@pytest.mark.parametrize(("meta", "match"), [
    ("a", "array entry is not a map"),
    (_meta(name=""), "no valid name"),
    (_meta(name=3), "no valid name"),
    (_meta(name="n" * 129), "no valid name"),
    (_meta(codec="lz4"), "unknown codec 'lz4'"),
])
def test_rejects_bad_array_entries(meta, match):
    _reject([_pack(_header(arrays=[meta])), bytes(48)], match)


def test_rejects_too_many_elements_before_reading_the_frame():
    meta = _meta(shape=[11, 10], nbytes=880)
    _reject([_pack(_header(arrays=[meta])), bytes(880)], "110 elements exceeds the limit of 100",
            limits=Limits(max_array_elements=100))
    # default limit: 2**32 elements announced with an empty frame is refused on the header alone
    huge = _meta(dtype="|u1", shape=[2**16, 2**16], nbytes=2**32)
    _reject([_pack(_header(arrays=[huge])), b""], f"{2**32} elements exceeds the limit of {2**31}")


@pytest.mark.parametrize("length", [0, 47, 49, 96])
def test_rejects_raw_frame_length_mismatch(length):
    _reject([_pack(_header(arrays=[_meta()])), bytes(length)], f"frame has {length} bytes, header says 48")


def _forbid_decompression(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the decoder decompressed a frame it should have refused")

    monkeypatch.setattr(codec.zstandard, "ZstdDecompressor", refuse)


def test_rejects_zstd_frame_declaring_other_size_before_decompressing(monkeypatch):
    frame = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(bytes(1_000_000))
    _forbid_decompression(monkeypatch)
    _reject([_pack(_header(arrays=[_meta(codec="zstd")])), frame],
            "zstd frame declares 1000000 bytes, header says 48")


def test_rejects_decompression_bomb_before_decompressing(monkeypatch):
    # a 16-byte frame header that announces 8 GiB of content
    bomb = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + (2**33).to_bytes(8, "little") + b"\x01\x00\x00"
    assert zstandard.frame_content_size(bomb) == 2**33
    _forbid_decompression(monkeypatch)
    _reject([_pack(_header(arrays=[_meta(codec="zstd")])), bomb], f"declares {2**33} bytes, header says 48")


def test_rejects_zstd_frame_without_content_size(monkeypatch):
    frame = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(bytes(48))
    _forbid_decompression(monkeypatch)
    _reject([_pack(_header(arrays=[_meta(codec="zstd")])), frame], "zstd frame declares -1 bytes")


@pytest.mark.parametrize("frame", [b"", b"not zstd at all", bytes(48)])
def test_rejects_frame_that_is_not_zstd(frame):
    _reject([_pack(_header(arrays=[_meta(codec="zstd")])), frame], "not a zstd frame")


def test_rejects_corrupt_zstd_frame_with_right_declared_size():
    good = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(np.arange(6.0).tobytes())
    corrupt = good[:-4] + b"\xff\xff\xff\xff"
    truncated = good[: len(good) // 2 + 1]
    for frame in (corrupt, truncated):
        with pytest.raises(DecodeError, match="array 'a': "):
            wire.decode([_pack(_header(arrays=[_meta(codec="zstd")])), frame])


def test_rejects_zstd_frame_expanding_beyond_the_message_limit(monkeypatch):
    n = 8 * 1024 * 1024
    frame = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(bytes(n))
    assert len(frame) < 4096
    _forbid_decompression(monkeypatch)
    _reject([_pack(_header(arrays=[_meta(dtype="|u1", shape=[n], nbytes=n, codec="zstd")])), frame],
            "arrays decode to 8388608 bytes, over the limit", limits=Limits(max_message_bytes=1024 * 1024))


def test_rejects_message_over_max_message_bytes():
    frames = [_pack(_header(arrays=[_meta()])), bytes(48)]
    total = len(frames[0]) + 48
    _reject(frames, f"message of {total} bytes exceeds the limit of {total - 1}",
            limits=Limits(max_message_bytes=total - 1))
    assert wire.decode(frames, limits=Limits(max_message_bytes=total)).arrays["a"].shape == (2, 3)


def test_message_limit_counts_memoryview_frames():
    payload = memoryview(np.zeros(6, np.float64)).cast("B")
    _reject([_pack(_header(arrays=[_meta()])), payload], "exceeds the limit of 60", limits=Limits(max_message_bytes=60))


# -- batches ---------------------------------------------------------------------


def _small_messages() -> list[protocol.Message]:
    return [
        protocol.Accepted(provider_id="p1", task_id="j.0", attempt=1, token="t"),
        protocol.Result(provider_id="p1", task_id="j.0", attempt=1, elapsed=0.5, token="t",
                        arrays={"data": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.int64(3)}),
        protocol.Failure(provider_id="p1", task_id="j.1", attempt=2, error="boom", token="t"),
        protocol.Result(provider_id="p1", task_id="j.2", attempt=1, elapsed=0.1, token="t",
                        arrays={"data": np.zeros(0, np.uint8)}),
    ]


@pytest.mark.parametrize("topic", [None, "p1"])
def test_batch_round_trip_keeps_order_arrays_and_token(topic):
    msgs = _small_messages()
    got = wire.decode(wire.encode(wire.batch(msgs), topic=topic), topic=topic is not None)
    assert got.type is MsgType.BATCH
    inner = wire.unbatch(got)
    assert [m.id for m in inner] == [m.id for m in msgs]
    for g, w in zip(inner, msgs):
        _assert_same(g, w)
        assert g.token == "t"


def test_batchable_is_for_small_messages_only():
    assert wire.batchable(protocol.Accepted(provider_id="p", task_id="j.0", attempt=1))
    big = protocol.Result(provider_id="p", task_id="j.0", attempt=1, elapsed=0.0,
                          arrays={"c": np.zeros(wire.BATCH_MAX_ITEM_BYTES + 1, np.uint8)})
    assert not wire.batchable(big)
    assert not wire.batchable(wire.batch([]))


def _batch_frames(items, arrays=None, metas=None) -> list:
    frames = wire.encode(protocol.Batch(items=[], arrays=arrays or {}))
    header = msgpack.unpackb(frames[0])
    header["body"]["items"] = items
    if metas is not None:
        header["arrays"] = metas
    return [_pack(header), *frames[1:]]


_GOOD_ITEM = {"type": "accepted", "id": "m1", "body": {"provider_id": "p", "task_id": "j.0", "attempt": 1}}


@pytest.mark.parametrize(("items", "match"), [
    ([_GOOD_ITEM, {"type": "accepted", "id": "m2", "body": {"provider_id": "p"}}], "missing fields"),
    ([{"type": "bogus", "id": "m1", "body": {}}], "unknown message type"),
    ([{"type": "batch", "id": "m1", "body": {"items": []}}], "do not nest"),
    ([{"type": "accepted", "id": "", "body": _GOOD_ITEM["body"]}], "message id"),
    ([{"type": "accepted", "id": "m1"}], "map of type, id and body"),
    (["accepted"], "wrong type"),
    ([{**_GOOD_ITEM, "body": {**_GOOD_ITEM["body"], "attempt": "1"}}], "wrong type"),
    ([{"type": "result", "id": "m1", "body": {"provider_id": "p", "task_id": "j", "attempt": 1, "elapsed": 0.0,
                                               "meta": {"a": [[[[[[[[[1]]]]]]]]]}}}], "nested deeper"),
    ([_GOOD_ITEM] * (wire.BATCH_MAX_ITEMS + 1), "over the limit"),
])
def test_unbatch_refuses_the_whole_batch_for_one_bad_item(items, match):
    with pytest.raises(DecodeError, match=match):
        wire.unbatch(wire.decode(_batch_frames(items)))


def test_unbatch_refuses_arrays_that_name_no_item():
    for name in ("data", "1/data", "x/data"):
        batch = wire.decode(wire.encode(protocol.Batch(items=[_GOOD_ITEM], arrays={name: np.zeros(2)})))
        with pytest.raises(DecodeError, match="names no item"):
            wire.unbatch(batch)


def test_fields_at_their_default_stay_out_of_the_body_and_come_back_on_decode():
    import msgpack

    from common import protocol as p

    fetch = p.Fetch(job_id="j1")  # wait and local at their defaults: what a head from before them accepts
    header = msgpack.unpackb(wire.encode(fetch)[0], raw=False)
    assert header["body"] == {"job_id": "j1"}
    back = wire.decode(wire.encode(fetch))
    assert (back.job_id, back.wait, back.local) == ("j1", 0.0, False)
    held = wire.decode(wire.encode(p.Fetch(job_id="j1", wait=2.5)))
    assert held.wait == 2.5
    # a full body, as every encoder wrote before, still decodes
    full = msgpack.packb({**header, "body": {"job_id": "j1", "wait": 0.0, "local": False}}, use_bin_type=True)
    assert wire.decode([full]).job_id == "j1"
    ack = msgpack.unpackb(wire.encode(p.ProbeAck(provider_id="p" * 32, probe_id="x"))[0], raw=False)
    assert ack["body"] == {"provider_id": "p" * 32, "probe_id": "x"}
