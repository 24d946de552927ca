"""The scheduler's vocabulary: events it is fed and actions it returns."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SchedulerConfig:
    heartbeat_interval: float = 1.0
    liveness: int = 3  # missed heartbeats before a provider gets no new work
    dead_after: float = 10.0  # silence before a provider's leases are requeued
    ack_timeout: float = 2.0  # re-publish an assignment not accepted within this
    max_attempts: int = 3  # failures of one shard that fail its job
    prefetch: int = 0  # shards a provider may hold beyond its slots, so its next input arrives while it computes
    tiny_shard_seconds: float = 0.02  # a job whose shards compute faster than this is latency-bound...
    tiny_prefetch: int = 64  # ...so each provider may hold this many of its shards beyond its slots
    speculate: bool = True
    speculate_after: float = 0.75  # fraction of a job's shards done before speculating
    straggler_factor: float = 1.2  # a shard running this many times the mean is a straggler


def key_of(job_id: str, index: int, attempt: int) -> str:
    """The task key used on the wire: ``JOB.INDEX#ATTEMPT``."""
    return f"{job_id}.{index}#{attempt}"


def parse_key(key: str) -> tuple[str, int, int]:
    task_id, _, attempt = key.rpartition("#")
    job_id, _, index = task_id.rpartition(".")
    return job_id, int(index), int(attempt)


def task_id_of(job_id: str, index: int) -> str:
    return f"{job_id}.{index}"


def parse_task_id(task_id: str) -> tuple[str, int]:
    job_id, _, index = task_id.rpartition(".")
    return job_id, int(index)


# -- events ------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    now: float


@dataclass(frozen=True)
class ProviderReady(Event):
    provider_id: str
    slots: int
    task_types: tuple[str, ...]


@dataclass(frozen=True)
class ProviderSeen(Event):
    provider_id: str
    running: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ProviderLeft(Event):
    provider_id: str


@dataclass(frozen=True)
class ProviderDraining(Event):
    provider_id: str


@dataclass(frozen=True)
class JobAdded(Event):
    job_id: str
    task_type: str
    indices: tuple[int, ...]
    priority: int = 0
    attempts: dict[int, int] | None = field(default=None, hash=False)
    recovered: bool = False  # restored from the journal: adopt results and running shards of the current attempt
    affinity: dict[int, str] | None = field(default=None, hash=False)  # index -> inputs it shares (Job.affinity)


@dataclass(frozen=True)
class ShardsAdded(Event):
    job_id: str
    indices: tuple[int, ...]
    attempts: dict[int, int] | None = field(default=None, hash=False)
    affinity: dict[int, str] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class JobCancelled(Event):
    job_id: str


@dataclass(frozen=True)
class _TaskEvent(Event):
    job_id: str
    index: int
    attempt: int
    provider_id: str


@dataclass(frozen=True)
class TaskAccepted(_TaskEvent):
    pass


@dataclass(frozen=True)
class TaskSucceeded(_TaskEvent):
    elapsed: float = -1.0  # compute seconds as the provider measured them (-1: unknown)


@dataclass(frozen=True)
class TaskFailed(_TaskEvent):
    error: str = ""
    counted: bool = True  # False: not the shard's fault (a provider cache miss); retry without penalty


@dataclass(frozen=True)
class ShardsDropped(Event):
    """A round closes without these shards (its deadline passed with enough of the others done)."""

    job_id: str
    indices: tuple[int, ...]


@dataclass(frozen=True)
class Tick(Event):
    pass


# -- actions -----------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    pass


@dataclass(frozen=True)
class Assign(Action):
    job_id: str
    index: int
    attempt: int
    provider_id: str
    speculative: bool = False


@dataclass(frozen=True)
class Republish(Action):
    """Send an assignment again (``provider_id`` set), or note a requeue (``None``)."""

    job_id: str
    index: int
    attempt: int
    provider_id: str | None
    reason: str = ""


@dataclass(frozen=True)
class Cancel(Action):
    provider_id: str
    job_id: str
    index: int
    attempt: int


@dataclass(frozen=True)
class Merge(Action):
    job_id: str
    index: int
    attempt: int
    provider_id: str


@dataclass(frozen=True)
class JobRoundDone(Action):
    job_id: str


@dataclass(frozen=True)
class JobFailed(Action):
    job_id: str
    error: str


@dataclass(frozen=True)
class ProviderDead(Action):
    provider_id: str
