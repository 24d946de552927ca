"""The interface every task type implements (built-in or plugin).

The head calls ``validate`` on submit, then ``plan`` for the first round of
shards, ``inputs`` when it dispatches a shard, ``merge`` for each winning
shard result and ``next_round`` when a round is complete; providers call
``compute``. Keep per-job state in ``job.state`` (plain msgpack-able values)
so a restarted head can resume a multi-round job.
"""

from __future__ import annotations

import abc
import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Protocol

import numpy as np

from common.errors import ValidationError


@dataclass
class Shard:
    """One unit of work: its position in the job and the parameters its compute needs."""

    index: int
    params: dict[str, Any] = field(default_factory=dict)


class JobView(Protocol):
    """What a task type sees of a job on the head."""

    job_id: str
    params: dict[str, Any]
    state: dict[str, Any]
    ready_slots: int  # slots of ready providers that support this type, at planning time

    def input(self, name: str) -> np.ndarray: ...
    def input_names(self) -> list[str]: ...
    def allocate(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray: ...
    def output(self, name: str) -> np.ndarray: ...


class TaskType(abc.ABC):
    """Base class: override what the type needs. Instances hold no per-job state."""

    name: ClassVar[str] = ""
    needs_torch: ClassVar[bool] = False

    def validate(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """Check a request and return normalized params; raise ``ValidationError`` with a clear message."""
        return dict(params)

    def shard_count(self, params: dict[str, Any]) -> int | None:
        """Shards the first round will have, if known from the params alone (checked before planning)."""
        return None

    @abc.abstractmethod
    def plan(self, job: JobView) -> list[Shard]:
        """Shards of the first round; allocate outputs here with ``job.allocate``."""

    def inputs(self, job: JobView, shard: Shard) -> dict[str, Any]:
        """Arrays sent with ``shard`` (views into the job's inputs where possible).

        A value may be a zero-argument callable returning the array: the head calls it only when
        the provider does not already hold that array (see ``cache_keys``), so costly copies are
        made only when they travel.
        """
        return {}

    def cache_keys(self, job: JobView, shard: Shard) -> dict[str, str]:
        """Names of ``inputs`` a provider may keep and reuse, with a key unique to their content.

        The head sends such an array to a provider once; later shards refer to it by key.
        """
        return {}

    def output_targets(self, job: JobView, shard: Shard) -> dict[str, np.ndarray]:
        """Views of the job's outputs that result arrays of ``shard`` are copied into unchanged, by name.

        A provider on the head's machine then writes them there itself (common/localdata.py) and
        ``merge`` gets the view back in place of the array: it must not copy an array onto itself
        (``np.may_share_memory(result, output)`` tells).
        """
        return {}

    def round_policy(self, job: JobView) -> tuple[float, float] | None:
        """``(timeout_s, min_fraction)``: close a round after the timeout once that share of its shards is done."""
        return None

    def progress(self, job: JobView) -> tuple[int, int] | None:
        """``(done, total)`` units for progress bars, when shards are not the natural unit."""
        return None

    @abc.abstractmethod
    def compute(self, params: dict[str, Any], arrays: dict[str, np.ndarray], device: str) -> dict[str, np.ndarray]:
        """Run one shard on a provider; ``device`` is ``cpu``, ``cuda:N`` or ``mps``.

        A type with ``output_targets`` may also take ``out``, a dict of writable arrays (regions of the
        head's output files, on its machine): writing a result into ``out[name]`` and returning that
        same array saves the copy.
        """

    def merge(self, job: JobView, shard: Shard, result: dict[str, np.ndarray]) -> None:
        """Fold one shard's result into the job's outputs (called once per shard)."""

    def next_round(self, job: JobView) -> list[Shard]:
        """Shards of the next round, or none when the job is complete."""
        return []

    def outputs(self, job: JobView) -> dict[str, np.ndarray]:
        """The job's final arrays."""
        return {}


def writes_into(task: TaskType) -> bool:
    """Whether ``task.compute`` takes ``out`` (see ``TaskType.compute``)."""
    return "out" in inspect.signature(task.compute).parameters


def check_params(task: str, params: dict[str, Any], allowed: Iterable[str]) -> None:
    """Refuse parameters ``task`` does not take: a misspelt one would otherwise be ignored without a word."""
    allowed = list(allowed)
    unknown = set(params) - set(allowed)
    if unknown:
        raise ValidationError(f"{task}: unknown parameters {sorted(unknown)}; it takes {', '.join(allowed)}")
