"""The wire format: a message as ZeroMQ frames and back, and batches of small messages.

Frames are ``[topic (PUB only), header, array frames...]``. The header is a
msgpack map ``{v, type, id, token, body, arrays}``; ``body`` holds the
message's fields (those at their default are left out) and ``arrays``
describes the frames that follow (see ``common.codec``); ``common.bodycheck``
checks each body against its dataclass in ``common.protocol``. Nothing else
in zcompute builds or parses frames.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import numpy as np

from common.bodycheck import body_checker
from common.codec import DEFAULT_LIMITS, Limits, check_array_meta, decode_array, encode_array, frame_count
from common.errors import DecodeError
from common.protocol import MESSAGES, Batch, Message, MsgType

VERSION = 1

#: the most messages one batch carries; a batch also stays under the receiver's ``max_arrays``
BATCH_MAX_ITEMS = 64
#: messages whose arrays are larger than this travel alone (a batch is for small messages)
BATCH_MAX_ITEM_BYTES = 64 * 1024


def batchable(msg: Message) -> bool:
    return msg.type is not MsgType.BATCH and sum(a.nbytes for a in msg.arrays.values()) <= BATCH_MAX_ITEM_BYTES


def batch(msgs: list[Message]) -> Batch:
    """One ``Batch`` carrying ``msgs`` (all with the same token), in order."""
    items, arrays = [], {}
    for k, msg in enumerate(msgs):
        items.append({"type": msg.type.value, "id": msg.id, "body": _body(msg)})
        arrays.update({f"{k}/{name}": arr for name, arr in msg.arrays.items()})
    return Batch(items=items, arrays=arrays, token=msgs[0].token if msgs else None)


def unbatch(msg: Batch) -> list[Message]:
    """The messages in ``msg``, each checked as ``decode`` checks a message; raises ``DecodeError``
    for the whole batch if any item is bad, so a receiver applies all of it or none."""
    if len(msg.items) > BATCH_MAX_ITEMS:
        raise DecodeError(f"batch of {len(msg.items)} messages is over the limit of {BATCH_MAX_ITEMS}")
    per_item: dict[int, dict[str, np.ndarray]] = {}
    for key, arr in msg.arrays.items():
        k, sep, name = key.partition("/")
        if not sep or not k.isdigit() or int(k) >= len(msg.items):
            raise DecodeError(f"batch array {key!r} names no item")
        per_item.setdefault(int(k), {})[name] = arr
    out = []
    for k, item in enumerate(msg.items):
        if not isinstance(item, dict) or set(item) != {"type", "id", "body"}:
            raise DecodeError(f"batch item {k} must be a map of type, id and body")
        try:
            mtype = MsgType(item["type"])
        except ValueError:
            raise DecodeError(f"batch item {k}: unknown message type {item['type']!r}") from None
        if mtype is MsgType.BATCH:
            raise DecodeError(f"batch item {k}: batches do not nest")
        out.append(_build(mtype, item["id"], msg.token, item["body"], per_item.get(k, {})))
    return out


_BASE_FIELDS = {"id", "token", "arrays"}  # in the header; the other fields make the body
_FIELDS = {t: tuple(f.name for f in dataclasses.fields(cls) if f.name not in _BASE_FIELDS)
           for t, cls in MESSAGES.items()}


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


#: optional fields and their defaults: a field at its default is left out of the body (a decoder fills
#: it in), so a peer from before a field was added still decodes every message that does not use it
_DEFAULTS = {t: {f.name: _default(f) for f in dataclasses.fields(cls) if f.name not in _BASE_FIELDS
                 and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)}
             for t, cls in MESSAGES.items()}
_NOTHING = object()
# a batch's items are checked one by one in unbatch(), each against the same depth limit
_checked = body_checker(MESSAGES, _FIELDS, shallow={(MsgType.BATCH, "items")})


def encode(msg: Message, topic: str | None = None, compression: str = "auto",
           link_bits: float | None = None) -> list[Any]:
    """Frames for ``msg``; prefix the PUB ``topic`` when given. Array frames are not copied. ``link_bits``:
    the speed of the link to this message's destination, when known (the ``auto`` codec weighs it)."""
    metas, payloads = [], []
    for name, arr in msg.arrays.items():
        meta, parts = encode_array(name, arr, compression, link_bits)
        metas.append(meta)
        payloads.extend(parts)
    header = {"v": VERSION, "type": msg.type.value, "id": msg.id, "token": msg.token, "body": _body(msg),
              "arrays": metas}
    frames: list[Any] = [msgpack.packb(header, use_bin_type=True), *payloads]
    if topic is not None:
        frames.insert(0, topic.encode())
    return frames


def _body(msg: Message) -> dict[str, Any]:
    defaults = _DEFAULTS[msg.type]
    body = {}
    for name in _FIELDS[msg.type]:
        value = getattr(msg, name)
        default = defaults.get(name, _NOTHING)
        if default is _NOTHING or type(value) is not type(default) or value != default:
            body[name] = value
    return body


def _buffer_len(frame: Any) -> int:
    buf = getattr(frame, "buffer", frame)
    return memoryview(buf).nbytes


def decode(frames: list[Any], *, topic: bool = False, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Check every part of ``frames`` before trusting it and return the message.

    Raises ``DecodeError`` with a readable reason; never touches shared state.
    """
    if topic:
        if not frames:
            raise DecodeError("empty message")
        frames = frames[1:]
    if not frames:
        raise DecodeError("message has no header frame")
    total = sum(_buffer_len(f) for f in frames)
    if total > limits.max_message_bytes:
        raise DecodeError(f"message of {total} bytes exceeds the limit of {limits.max_message_bytes}")
    raw_header = getattr(frames[0], "bytes", frames[0])
    if len(raw_header) > limits.max_header_bytes:
        raise DecodeError(f"header of {len(raw_header)} bytes exceeds the limit of {limits.max_header_bytes}")
    try:
        header = msgpack.unpackb(bytes(raw_header), raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise DecodeError(f"header is not valid msgpack: {e}") from e
    if not isinstance(header, dict):
        raise DecodeError("header is not a map")
    if header.get("v") != VERSION:
        raise DecodeError(f"protocol version {header.get('v')!r} is not supported (expected {VERSION})")
    try:
        mtype = MsgType(header.get("type"))
    except ValueError:
        raise DecodeError(f"unknown message type {header.get('type')!r}") from None
    msg_id, token, body, metas = (header.get(k) for k in ("id", "token", "body", "arrays"))
    if token is not None and not isinstance(token, str):
        raise DecodeError("token must be a string")
    if not isinstance(metas, list):
        raise DecodeError("the header's arrays must be a list")
    if len(metas) > limits.max_arrays:
        raise DecodeError(f"header lists {len(metas)} arrays, over the limit of {limits.max_arrays}")
    checked = [check_array_meta(meta, limits) for meta in metas]
    decoded_total = sum(c[4] for c in checked)
    if decoded_total > limits.max_message_bytes:  # compressed frames may not expand past the limit either
        raise DecodeError(f"arrays decode to {decoded_total} bytes, over the limit of {limits.max_message_bytes}")
    expected = sum(frame_count(meta) for meta in metas)
    if expected != len(frames) - 1:
        raise DecodeError(f"header lists {len(metas)} arrays in {expected} frames but {len(frames) - 1} frames follow")
    cls = _checked(mtype, msg_id, body)  # before any array is decoded (decompressed)
    arrays, pos = {}, 1
    for meta, check in zip(metas, checked):
        count = frame_count(meta)
        name, arr = decode_array(meta, [getattr(f, "buffer", f) for f in frames[pos:pos + count]], limits, check)
        pos += count
        if name in arrays:
            raise DecodeError(f"array {name!r} appears twice")
        arrays[name] = arr
    return cls(id=msg_id, token=token, arrays=arrays, **body)


def _build(mtype: MsgType, msg_id: Any, token: str | None, body: Any, arrays: dict[str, np.ndarray]) -> Message:
    """The message of type ``mtype`` from its parts, every field checked."""
    return _checked(mtype, msg_id, body)(id=msg_id, token=token, arrays=arrays, **body)

