"""The messages: one dataclass per message type, with its fields, their types and defaults.

``common.wire`` turns a message into frames and back (and checks each body against its
dataclass with ``common.bodycheck``); docs/PROTOCOL.md describes every field.
"""

from __future__ import annotations

import enum
import itertools
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from common.errors import ValidationError


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
    priority: int = 0  # PRIORITIES: higher runs first
    local_arrays: dict = field(default_factory=dict)  # name -> file the client wrote in the head's uploads


PRIORITIES = range(-1000, 1001)
MAX_PROVIDER_NAME = 128  # characters of a Register's name


def check_priority(priority: Any) -> None:
    """A submit's priority, as the head and the client both check it (a huge one would not even encode)."""
    if isinstance(priority, bool) or not isinstance(priority, int) or priority not in PRIORITIES:
        raise ValidationError(f"priority must be an integer from {PRIORITIES.start} to {PRIORITIES.stop - 1}, "
                              f"not {priority!r}")


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


MESSAGES: dict[MsgType, type[Message]] = {
    cls.type: cls for cls in Message.__subclasses__()  # every concrete message above
}
