"""The wire format: one dataclass per message, ``encode`` and ``decode``.

Frames are ``[topic (PUB only), header, array frames...]``. The header is a
msgpack map ``{v, type, id, token, body, arrays}``; ``body`` holds the
message's fields and ``arrays`` describes the frames that follow (see
``common.codec``). Nothing else in zcompute builds or parses frames.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack
import numpy as np

from common.codec import DEFAULT_LIMITS, Limits, check_array_meta, decode_array, encode_array, frame_count
from common.errors import DecodeError

VERSION = 1
_MAX_DEPTH = 8


class MsgType(str, enum.Enum):
    # registration socket (provider REQ -> head)
    REGISTER = "register"
    REGISTERED = "registered"
    DEREGISTER = "deregister"
    # heartbeat socket (provider REQ -> head)
    HEARTBEAT = "heartbeat"
    HEARTBEAT_REPLY = "heartbeat_reply"
    # task socket (head PUB -> provider SUB)
    TASK = "task"
    CANCEL_TASK = "cancel_task"
    PROBE = "probe"
    # result socket (provider PUSH -> head)
    ACCEPTED = "accepted"
    PROGRESS = "progress"
    RESULT = "result"
    FAILURE = "failure"
    PROBE_ACK = "probe_ack"
    # client API (client REQ/DEALER -> head ROUTER)
    SUBMIT = "submit"
    SUBMITTED = "submitted"
    STATUS = "status"
    JOB_STATUS = "job_status"
    FETCH = "fetch"
    JOB_RESULT = "job_result"
    CANCEL_JOB = "cancel_job"
    LIST_JOBS = "list_jobs"
    JOB_LIST = "job_list"
    LIST_PROVIDERS = "list_providers"
    PROVIDER_LIST = "provider_list"
    STATS = "stats"
    STATS_REPLY = "stats_reply"
    EVENTS = "events"
    EVENT_LIST = "event_list"
    # replies on any REQ/REP socket
    OK = "ok"
    ERROR = "error"


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(kw_only=True)
class Message:
    """Fields every message has; ``arrays`` travel as frames after the header."""

    type: ClassVar[MsgType]
    id: str = field(default_factory=new_id)
    token: str | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)


# -- registration and heartbeat ------------------------------------------------


@dataclass(kw_only=True)
class Register(Message):
    type = MsgType.REGISTER
    provider_id: str
    name: str
    platform: str
    devices: list[dict]
    memory_bytes: int
    cores: int
    slots: int
    gflops: float
    torch: bool
    task_types: list[str]
    version: str


@dataclass(kw_only=True)
class Registered(Message):
    type = MsgType.REGISTERED
    provider_id: str
    epoch: str
    heartbeat_interval: float


@dataclass(kw_only=True)
class Deregister(Message):
    type = MsgType.DEREGISTER
    provider_id: str
    reason: str = ""


@dataclass(kw_only=True)
class Heartbeat(Message):
    type = MsgType.HEARTBEAT
    provider_id: str
    epoch: str
    running: list[str]  # task keys "task_id#attempt" the provider holds
    outbox: list[str]  # task keys whose result awaits the head's acknowledgement
    free_slots: int
    load: float = 0.0
    memory_used: int = 0
    draining: bool = False  # shutting down: finishing what it holds, wants nothing new
    computed: int = 0  # shards this provider process has computed since it started


@dataclass(kw_only=True)
class HeartbeatReply(Message):
    type = MsgType.HEARTBEAT_REPLY
    epoch: str
    known: bool  # False: the head does not know this provider; register again
    acked: list[str] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)  # finished jobs: drop their cached arrays


# -- tasks (PUB, topic = provider id) -----------------------------------------


@dataclass(kw_only=True)
class Task(Message):
    type = MsgType.TASK
    task_id: str
    job_id: str
    attempt: int
    task_type: str
    index: int
    params: dict


@dataclass(kw_only=True)
class CancelTask(Message):
    type = MsgType.CANCEL_TASK
    task_id: str
    attempt: int


@dataclass(kw_only=True)
class Probe(Message):
    type = MsgType.PROBE
    probe_id: str


# -- results (PUSH) -----------------------------------------------------------


@dataclass(kw_only=True)
class Accepted(Message):
    type = MsgType.ACCEPTED
    provider_id: str
    task_id: str
    attempt: int


@dataclass(kw_only=True)
class Progress(Message):
    type = MsgType.PROGRESS
    provider_id: str
    task_id: str
    attempt: int
    fraction: float


@dataclass(kw_only=True)
class Result(Message):
    type = MsgType.RESULT
    provider_id: str
    task_id: str
    attempt: int
    elapsed: float
    meta: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class Failure(Message):
    type = MsgType.FAILURE
    provider_id: str
    task_id: str
    attempt: int
    error: str
    retryable: bool = True
    code: str = ""  # "cache_miss": an array the head thought we held is gone; resend it, no penalty


@dataclass(kw_only=True)
class ProbeAck(Message):
    type = MsgType.PROBE_ACK
    provider_id: str
    probe_id: str


# -- client API ---------------------------------------------------------------


@dataclass(kw_only=True)
class Submit(Message):
    type = MsgType.SUBMIT
    task_type: str
    params: dict
    priority: int = 0


@dataclass(kw_only=True)
class Submitted(Message):
    type = MsgType.SUBMITTED
    job_id: str


@dataclass(kw_only=True)
class Status(Message):
    type = MsgType.STATUS
    job_id: str


@dataclass(kw_only=True)
class JobStatus(Message):
    type = MsgType.JOB_STATUS
    job: dict  # see docs/PROTOCOL.md "job summary"


@dataclass(kw_only=True)
class Fetch(Message):
    type = MsgType.FETCH
    job_id: str


@dataclass(kw_only=True)
class JobResult(Message):
    type = MsgType.JOB_RESULT
    job: dict
    meta: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class CancelJob(Message):
    type = MsgType.CANCEL_JOB
    job_id: str


@dataclass(kw_only=True)
class ListJobs(Message):
    type = MsgType.LIST_JOBS
    state: str | None = None


@dataclass(kw_only=True)
class JobList(Message):
    type = MsgType.JOB_LIST
    jobs: list[dict]


@dataclass(kw_only=True)
class ListProviders(Message):
    type = MsgType.LIST_PROVIDERS


@dataclass(kw_only=True)
class ProviderList(Message):
    type = MsgType.PROVIDER_LIST
    providers: list[dict]


@dataclass(kw_only=True)
class Stats(Message):
    type = MsgType.STATS


@dataclass(kw_only=True)
class StatsReply(Message):
    type = MsgType.STATS_REPLY
    epoch: str
    counters: dict  # event name -> count since this head started


@dataclass(kw_only=True)
class Events(Message):
    type = MsgType.EVENTS
    job_id: str
    offset: int = 0  # line of the job's event log to start from
    limit: int = 500  # the head sends at most 500 per reply


@dataclass(kw_only=True)
class EventList(Message):
    type = MsgType.EVENT_LIST
    events: list[dict]
    next_offset: int


@dataclass(kw_only=True)
class Ok(Message):
    type = MsgType.OK


@dataclass(kw_only=True)
class Error(Message):
    type = MsgType.ERROR
    code: str
    message: str


MESSAGES: dict[MsgType, type[Message]] = {
    cls.type: cls for cls in Message.__subclasses__()  # every concrete message above
}
_BASE_FIELDS = {"id", "token", "arrays"}


def _body_fields(cls: type[Message]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in _BASE_FIELDS}


_FIELDS = {t: _body_fields(cls) for t, cls in MESSAGES.items()}


def _check_type(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and (item is Any or all(_check_type(v, item) for v in value))
    if hint in (dict, list):
        return isinstance(value, hint)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is Any:
        return True
    return isinstance(value, hint)


def _depth(value: Any, level: int = 0) -> int:
    if level > _MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def encode(msg: Message, topic: str | None = None, compression: str = "auto") -> list[Any]:
    """Frames for ``msg``; prefix the PUB ``topic`` when given. Array frames are not copied."""
    metas, payloads = [], []
    for name, arr in msg.arrays.items():
        meta, parts = encode_array(name, arr, compression)
        metas.append(meta)
        payloads.extend(parts)
    body = {name: getattr(msg, name) for name in _FIELDS[msg.type]}
    header = {"v": VERSION, "type": msg.type.value, "id": msg.id, "token": msg.token, "body": body, "arrays": metas}
    frames: list[Any] = [msgpack.packb(header, use_bin_type=True), *payloads]
    if topic is not None:
        frames.insert(0, topic.encode())
    return frames


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
    if not isinstance(msg_id, str) or not 0 < len(msg_id) <= 128:
        raise DecodeError("message id must be a non-empty string")
    if token is not None and not isinstance(token, str):
        raise DecodeError("token must be a string")
    if not isinstance(body, dict) or not isinstance(metas, list):
        raise DecodeError("body must be a map and arrays a list")
    if _depth(body) > _MAX_DEPTH:
        raise DecodeError(f"body is nested deeper than {_MAX_DEPTH} levels")
    if len(metas) > limits.max_arrays:
        raise DecodeError(f"header lists {len(metas)} arrays, over the limit of {limits.max_arrays}")
    fields = _FIELDS[mtype]
    if not all(isinstance(k, str) for k in body):
        raise DecodeError(f"{mtype.value}: body keys must be strings")
    unknown = set(body) - set(fields)
    if unknown:
        raise DecodeError(f"{mtype.value}: unknown fields {sorted(unknown)}")
    cls = MESSAGES[mtype]
    required = {f.name for f in dataclasses.fields(cls) if f.name in fields and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    missing = required - set(body)
    if missing:
        raise DecodeError(f"{mtype.value}: missing fields {sorted(missing)}")
    for name, value in body.items():
        if not _check_type(value, fields[name]):
            raise DecodeError(f"{mtype.value}: field {name!r} has the wrong type")
    decoded_total = sum(check_array_meta(meta, limits)[4] for meta in metas)
    if decoded_total > limits.max_message_bytes:  # compressed frames may not expand past the limit either
        raise DecodeError(f"arrays decode to {decoded_total} bytes, over the limit of {limits.max_message_bytes}")
    expected = sum(frame_count(meta) for meta in metas)
    if expected != len(frames) - 1:
        raise DecodeError(f"header lists {len(metas)} arrays in {expected} frames but {len(frames) - 1} frames follow")
    arrays, pos = {}, 1
    for meta in metas:
        count = frame_count(meta)
        name, arr = decode_array(meta, [getattr(f, "buffer", f) for f in frames[pos:pos + count]], limits)
        pos += count
        if name in arrays:
            raise DecodeError(f"array {name!r} appears twice")
        arrays[name] = arr
    return cls(id=msg_id, token=token, arrays=arrays, **body)
