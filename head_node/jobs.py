"""A job as the head holds it: its request, its files, its shards and its progress."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.tasks.base import Shard, TaskType
from head_node.store import JobFiles

TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Job:
    """Implements ``JobView`` for the task type; ``status`` is the lifecycle state."""

    job_id: str
    owner: str
    task_type: str
    task: TaskType = field(repr=False)
    params: dict[str, Any]
    files: JobFiles = field(repr=False)
    priority: int = 0
    status: str = "queued"  # queued -> running -> succeeded | failed | cancelled
    error: str = ""
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    state: dict[str, Any] = field(default_factory=dict)  # the task type's per-job state
    shards: dict[int, Shard] = field(default_factory=dict)
    ready_slots: int = 0
    done: int = 0
    round: int = 0
    round_indices: list[int] = field(default_factory=list)  # shards of the current round
    round_merged: set[int] = field(default_factory=set)
    round_started: float = 0.0  # monotonic
    reruns: int = 0
    speculated: int = 0
    by_provider: Counter = field(default_factory=Counter)

    # -- JobView ---------------------------------------------------------------

    def input(self, name: str) -> np.ndarray:
        return self.files.input(name)

    def input_names(self) -> list[str]:
        return self.files.input_names()

    def allocate(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.files.allocate(name, shape, dtype)

    def output(self, name: str) -> np.ndarray:
        return self.files.output(name)

    # -- lifecycle -------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def add_shards(self, shards: list[Shard], now: float) -> list[int]:
        """Start the next round with these shards."""
        self.round += 1
        for s in shards:
            self.shards[s.index] = s
        self.round_indices = [s.index for s in shards]
        self.round_merged = set()
        self.round_started = now
        return self.round_indices

    def affinity(self, indices) -> dict[int, str]:
        """Shard index -> the inputs it shares with other shards (its cache keys), for shards that have
        any: the scheduler gives a provider the shards whose inputs it already holds first."""
        out = {}
        for i in indices:
            keys = self.task.cache_keys(self, self.shards[i])
            if keys:
                out[i] = "|".join(sorted(keys.values()))
        return out

    def finish(self, status: str, error: str = "") -> None:
        """The job ends; its files stay mapped until ``files.release()`` (the fetches waiting for the end
        read the outputs first)."""
        self.status, self.error, self.finished_at = status, error, time.time()

    def summary(self) -> dict[str, Any]:
        end = self.finished_at or time.time()
        progress = self.task.progress(self) if self.task is not None else None
        return {
            "job_id": self.job_id,
            "task_type": self.task_type,
            "owner": self.owner,
            "status": self.status,
            "error": self.error,
            "priority": self.priority,
            "done": self.done,
            "total": len(self.shards),
            "round": self.round,
            "reruns": self.reruns,
            "speculated": self.speculated,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "elapsed": end - (self.started_at or self.submitted_at),
            "shards_by_provider": dict(self.by_provider),
            "progress_done": progress[0] if progress else self.done,
            "progress_total": progress[1] if progress else len(self.shards),
            "progress_unit": "round" if progress else "shard",
        }
