"""The scheduler's ledger: the providers it knows, the jobs it runs, their shards and the leases on them.
Only the scheduler and its helpers (``assign.py``, ``speculate.py``) touch these."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import AbstractSet


@dataclass
class _Provider:
    provider_id: str
    slots: int
    task_types: frozenset[str]
    last_seen: float
    state: str = "ready"  # ready | suspect | draining
    leases: set[tuple[str, int]] = field(default_factory=set)  # (job_id, index)
    holds: dict[str, set[str]] = field(default_factory=dict)  # job_id -> affinity keys of shards leased to it
    seq: int = 0  # registration order: ties go to the first registered

    def free(self, extra: int) -> int:
        """Shards it may take now, holding ``extra`` beyond its slots."""
        return self.slots + extra - len(self.leases) if self.state == "ready" else 0


@dataclass
class _Lease:
    provider_id: str
    attempt: int
    started: float
    ack_deadline: float
    accepted: bool = False


@dataclass
class _Shard:
    index: int
    attempt: int = 0
    done: bool = False
    recovered: bool = False  # pending after a head restart: any provider's result for this attempt counts
    failures: int = 0
    leases: dict[str, _Lease] = field(default_factory=dict)  # provider_id -> lease (2 while speculating)
    # providers it failed on or lost: one shared empty set until the first (a set per queued shard was a
    # third of what the garbage collector walked through with thousands of shards queued)
    excluded: AbstractSet[str] = frozenset()
    affinity: str | None = None  # the inputs it shares with other shards (their cache keys)

    def exclude(self, provider_id: str) -> None:
        if not isinstance(self.excluded, set):
            self.excluded = set(self.excluded)
        self.excluded.add(provider_id)


@dataclass
class _Job:
    job_id: str
    task_type: str
    priority: int
    seq: int
    shards: dict[int, _Shard] = field(default_factory=dict)
    pending: deque[int] = field(default_factory=deque)
    duration_sum: float = 0.0  # lease-to-result seconds of finished shards, for the straggler threshold
    duration_count: int = 0
    compute_ewma: float | None = None  # provider-measured compute seconds per shard (recent)
    done: int = 0
    speculated: set[int] = field(default_factory=set)
    round: set[int] = field(default_factory=set)  # the latest batch of shards (a round of a multi-round job)
    round_done: int = 0

    @property
    def order(self) -> tuple[int, int]:
        return (-self.priority, self.seq)
