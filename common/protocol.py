"""The wire format: one dataclass per message, ``encode`` and ``decode``.

Frames are ``[topic (PUB only), header, array frames...]``. The header is a
msgpack map ``{v, type, id, token, body, arrays}``; ``body`` holds the
message's fields and ``arrays`` describes the frames that follow (see
``common.codec``) and ``common.bodycheck`` checks each body against its
dataclass. Nothing else in zcompute builds or parses frames.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack
import numpy as np

from common.bodycheck import body_checker
from common.codec import DEFAULT_LIMITS, Limits, check_array_meta, decode_array, encode_array, frame_count
from common.errors import DecodeError

VERSION = 1


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
    DELETE_JOB = "delete_job"
    LIST_JOBS = "list_jobs"
    JOB_LIST = "job_list"
    LIST_PROVIDERS = "list_providers"
    PROVIDER_LIST = "provider_list"
    STATS = "stats"
    STATS_REPLY = "stats_reply"
    EVENTS = "events"
    EVENT_LIST = "event_list"
    # several small messages in one (task socket and result socket, at high rates)
    BATCH = "batch"
    # replies on any REQ/REP socket
    OK = "ok"
    ERROR = "error"


def new_id() -> str:
    """A random id (jobs, epochs, probes)."""
    return uuid.uuid4().hex


class _MessageIds:
    """Message ids: a random per-process prefix and a counter (a uuid4 per message costs a syscall, and
    the provider sends thousands a second). A forked child draws a new prefix."""

    def __init__(self):
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix, self.counter = uuid.uuid4().hex[:16], itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter):x}"


message_id = _MessageIds()


@dataclass(kw_only=True)
class Message:
    """Fields every message has; ``arrays`` travel as frames after the header."""

    type: ClassVar[MsgType]
    id: str = field(default_factory=message_id)
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
    local_dir: str = ""  # the head's data directory, for a provider on its machine (common/localdata.py)
    local_check: str = ""  # hash of the head's probe token: a provider that reads the same one is local


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
    link_mbit: float | None = None  # the link's speed the head reckons with for this provider


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


LINK_PROBE_PREFIX = "link-"  # the probe_id of a link probe (head_node/linkprobe.py): acknowledge it timed


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
    written: list[str] = field(default_factory=list)  # outputs written in place into the head's files


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
    local_proof: str = ""  # made from the head's probe file: this provider can read the head's job files
    received: float = 0.0  # link probes: the provider's monotonic clock when it decoded the probe


# -- client API ---------------------------------------------------------------


@dataclass(kw_only=True)
class Submit(Message):
    type = MsgType.SUBMIT
    task_type: str
    params: dict
    priority: int = 0
    local_arrays: dict = field(default_factory=dict)  # name -> file the client wrote in the head's uploads


@dataclass(kw_only=True)
class Submitted(Message):
    type = MsgType.SUBMITTED
    job_id: str


@dataclass(kw_only=True)
class Status(Message):
    type = MsgType.STATUS
    job_id: str
    wait: float = 0.0  # seconds the head may hold the reply while the job runs (long poll; it caps this)


@dataclass(kw_only=True)
class JobStatus(Message):
    type = MsgType.JOB_STATUS
    job: dict  # see docs/PROTOCOL.md "job summary"


@dataclass(kw_only=True)
class Fetch(Message):
    type = MsgType.FETCH
    job_id: str
    local: bool = False  # a client on the head's machine: name the output files instead of sending them
    wait: float = 0.0  # as Status.wait: the head may hold the reply until the job ends


@dataclass(kw_only=True)
class JobResult(Message):
    type = MsgType.JOB_RESULT
    job: dict
    meta: dict = field(default_factory=dict)
    local_arrays: dict = field(default_factory=dict)  # name -> reference into the head's files (Fetch.local)


@dataclass(kw_only=True)
class CancelJob(Message):
    type = MsgType.CANCEL_JOB
    job_id: str


@dataclass(kw_only=True)
class DeleteJob(Message):
    type = MsgType.DELETE_JOB
    job_id: str


@dataclass(kw_only=True)
class ListJobs(Message):
    type = MsgType.LIST_JOBS
    state: str | None = None
    offset: int = 0  # as in list_providers


@dataclass(kw_only=True)
class JobList(Message):
    type = MsgType.JOB_LIST
    jobs: list[dict]
    next_offset: int | None = None  # more follow: ask again from here


@dataclass(kw_only=True)
class ListProviders(Message):
    type = MsgType.LIST_PROVIDERS
    offset: int = 0  # the first provider to list (a reply holds as many as fit; see next_offset)


@dataclass(kw_only=True)
class ProviderList(Message):
    type = MsgType.PROVIDER_LIST
    providers: list[dict]
    next_offset: int | None = None  # more follow: ask again from here


@dataclass(kw_only=True)
class Stats(Message):
    type = MsgType.STATS


@dataclass(kw_only=True)
class StatsReply(Message):
    type = MsgType.STATS_REPLY
    epoch: str
    counters: dict  # event name -> count since this head started
    local_dir: str = ""  # as in ``registered``: for a client on the head's machine
    local_check: str = ""


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


@dataclass(kw_only=True)
class Batch(Message):
    """Small messages for one peer sent as one: ``items`` are ``{type, id, body}`` maps and item ``k``'s
    arrays travel under the names ``"k/name"``. The token is the batch's, for every item."""
    type = MsgType.BATCH
    items: list[dict]


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


MESSAGES: dict[MsgType, type[Message]] = {
    cls.type: cls for cls in Message.__subclasses__()  # every concrete message above
}
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

