"""Pure scheduling: events in, actions out. No sockets, no clocks, no arrays.

The server feeds every stimulus (a provider became ready, a heartbeat, a
result, a tick of the clock...) to ``Scheduler.handle`` and applies the
actions it returns. Shards are leased as ``(task, attempt, provider,
deadline)``; a result counts only from the current lease holder of the
current attempt (fencing), so shards run at least once and merge exactly once.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from head_node.events import (
    Action, Assign, Cancel, Event, JobAdded, JobCancelled, JobFailed, JobRoundDone,
    Merge, ProviderDead, ProviderDraining, ProviderLeft, ProviderReady, ProviderSeen, Republish,
    SchedulerConfig, ShardsAdded, ShardsDropped, TaskAccepted, TaskFailed, TaskSucceeded, Tick, key_of, parse_key,
)

__all__ = ["Scheduler", "SchedulerConfig"]

AFFINITY_LOOKAHEAD = 256  # pending shards looked at for one whose inputs a provider already holds


@dataclass
class _Provider:
    provider_id: str
    slots: int
    task_types: frozenset[str]
    last_seen: float
    state: str = "ready"  # ready | suspect | draining
    leases: set[tuple[str, int]] = field(default_factory=set)  # (job_id, index)
    holds: dict[str, set[str]] = field(default_factory=dict)  # job_id -> affinity keys of shards leased to it

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
    excluded: set[str] = field(default_factory=set)
    affinity: str | None = None  # the inputs it shares with other shards (their cache keys)


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


class Scheduler:
    def __init__(self, config: SchedulerConfig | None = None):
        self.config = config or SchedulerConfig()
        self.providers: dict[str, _Provider] = {}
        self.jobs: dict[str, _Job] = {}
        self._seq = 0
        self._handlers = {
            ProviderReady: self._on_provider_ready,
            ProviderSeen: self._on_provider_seen,
            ProviderLeft: self._on_provider_left,
            ProviderDraining: self._on_provider_draining,
            JobAdded: self._on_job_added,
            ShardsAdded: self._on_shards_added,
            JobCancelled: self._on_job_cancelled,
            ShardsDropped: self._on_shards_dropped,
            TaskAccepted: self._on_task_accepted,
            TaskSucceeded: self._on_task_succeeded,
            TaskFailed: self._on_task_failed,
            Tick: self._on_tick,
        }

    # -- entry point ---------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        actions = self._handlers[type(event)](event)
        actions.extend(self._assign(event.now))
        return actions

    # -- queries the server uses ---------------------------------------------

    def lease_holder(self, job_id: str, index: int, attempt: int, provider_id: str) -> bool:
        """May this provider's result for this attempt be merged? (The fencing rule.)"""
        shard = self._shard(job_id, index)
        if shard is None or shard.done:
            return False
        lease = shard.leases.get(provider_id)
        if lease is None:  # after a head restart, an outbox result of the journaled attempt is good
            return shard.recovered and not shard.leases and shard.attempt == attempt
        return lease.attempt == attempt

    def settled(self, job_id: str, index: int, attempt: int) -> bool:
        """True when a result for this attempt needs no re-sending (merged, stale, or job gone)."""
        shard = self._shard(job_id, index)
        if shard is None or shard.done:
            return True
        if shard.recovered and not shard.leases and shard.attempt == attempt:
            return False  # we still want that result
        return not any(lease.attempt == attempt for lease in shard.leases.values())

    def running(self, provider_id: str) -> set[str]:
        """Task keys leased to a provider."""
        p = self.providers.get(provider_id)
        if p is None:
            return set()
        return {key_of(j, i, self.jobs[j].shards[i].leases[provider_id].attempt) for j, i in p.leases}

    def job_progress(self, job_id: str) -> tuple[int, int]:
        job = self.jobs.get(job_id)
        return (job.done, len(job.shards)) if job else (0, 0)

    def ready_slots(self, task_type: str) -> int:
        return sum(p.slots for p in self.providers.values()
                   if p.state == "ready" and task_type in p.task_types)

    # -- providers -----------------------------------------------------------

    def _on_provider_ready(self, ev: ProviderReady) -> list[Action]:
        old = self.providers.get(ev.provider_id)
        actions = self._drop_provider(old, ev.now, exclude=False) if old else []
        self.providers[ev.provider_id] = _Provider(ev.provider_id, ev.slots, frozenset(ev.task_types), ev.now)
        return actions

    def _on_provider_seen(self, ev: ProviderSeen) -> list[Action]:
        p = self.providers.get(ev.provider_id)
        if p is None:
            return []
        if p.state != "draining":
            p.state = "ready"
        p.last_seen = ev.now
        held = set()
        for job_id, index in p.leases:  # a heartbeat listing a task renews its lease
            lease = self.jobs[job_id].shards[index].leases[ev.provider_id]
            key = key_of(job_id, index, lease.attempt)
            held.add(key)
            if key in ev.running:
                lease.accepted = True
        for key in ev.running - held:
            self._adopt(p, key, ev.now)
        return []

    def _adopt(self, p: _Provider, key: str, now: float) -> None:
        """After a head restart, a provider still computing a recovered shard keeps it."""
        try:
            job_id, index, attempt = parse_key(key)
        except ValueError:
            return
        shard = self._shard(job_id, index)
        if shard is None or shard.done or not shard.recovered or shard.leases or shard.attempt != attempt:
            return
        job = self.jobs[job_id]
        if index in job.pending:
            job.pending.remove(index)
        lease = _Lease(p.provider_id, attempt, now, now, accepted=True)
        shard.leases[p.provider_id] = lease
        p.leases.add((job_id, index))

    def _on_provider_draining(self, ev: ProviderDraining) -> list[Action]:
        p = self.providers.get(ev.provider_id)
        if p is not None:
            p.state = "draining"  # finishes what it holds, gets nothing new
        return []

    def _on_provider_left(self, ev: ProviderLeft) -> list[Action]:
        p = self.providers.get(ev.provider_id)
        return self._drop_provider(p, ev.now, exclude=False) if p else []

    def _drop_provider(self, p: _Provider, now: float, exclude: bool) -> list[Action]:
        """Forget a provider and requeue its leases with a new attempt."""
        del self.providers[p.provider_id]
        actions: list[Action] = []
        for job_id, index in sorted(p.leases):
            job = self.jobs[job_id]
            shard = job.shards[index]
            shard.leases.pop(p.provider_id, None)
            if exclude:
                shard.excluded.add(p.provider_id)
            if not shard.leases and not shard.done:
                shard.attempt += 1
                job.pending.appendleft(index)
                actions.append(Republish(job_id, index, shard.attempt, None, reason="provider_lost"))
        return actions

    # -- jobs ----------------------------------------------------------------

    def _on_job_added(self, ev: JobAdded) -> list[Action]:
        self._seq += 1
        job = _Job(ev.job_id, ev.task_type, ev.priority, self._seq)
        self.jobs[ev.job_id] = job
        self._add_shards(job, ev.indices, ev.attempts, ev.recovered, ev.affinity)
        return []

    def _on_shards_added(self, ev: ShardsAdded) -> list[Action]:
        job = self.jobs.get(ev.job_id)
        if job is not None:
            self._add_shards(job, ev.indices, ev.attempts, affinity=ev.affinity)
        return []

    @staticmethod
    def _add_shards(job: _Job, indices, attempts: dict[int, int] | None, recovered: bool = False,
                    affinity: dict[int, str] | None = None) -> None:
        job.round, job.round_done = set(indices), 0
        attempts, affinity = attempts or {}, affinity or {}
        for i in indices:
            job.shards[i] = _Shard(i, attempt=attempts.get(i, 0), recovered=recovered, affinity=affinity.get(i))
            job.pending.append(i)

    def _on_job_cancelled(self, ev: JobCancelled) -> list[Action]:
        return self._remove_job(ev.job_id)

    def _on_shards_dropped(self, ev: ShardsDropped) -> list[Action]:
        job = self.jobs.get(ev.job_id)
        if job is None:
            return []
        actions: list[Action] = []
        for index in ev.indices:
            shard = job.shards.pop(index, None)
            job.round.discard(index)
            if shard is None or shard.done:
                continue
            if index in job.pending:
                job.pending.remove(index)
            for pid, lease in shard.leases.items():
                actions.append(Cancel(pid, ev.job_id, index, lease.attempt))
                self._release(pid, ev.job_id, index)
        return actions

    def _remove_job(self, job_id: str) -> list[Action]:
        job = self.jobs.pop(job_id, None)
        if job is None:
            return []
        actions: list[Action] = []
        for shard in job.shards.values():
            for pid, lease in shard.leases.items():
                actions.append(Cancel(pid, job_id, shard.index, lease.attempt))
                if pid in self.providers:
                    self.providers[pid].leases.discard((job_id, shard.index))
        for p in self.providers.values():
            p.holds.pop(job_id, None)
        return actions

    # -- task lifecycle ------------------------------------------------------

    def _on_task_accepted(self, ev: TaskAccepted) -> list[Action]:
        shard = self._shard(ev.job_id, ev.index)
        lease = shard.leases.get(ev.provider_id) if shard else None
        if lease is not None and lease.attempt == ev.attempt:
            lease.accepted = True
        return []

    def _on_task_succeeded(self, ev: TaskSucceeded) -> list[Action]:
        if not self.lease_holder(ev.job_id, ev.index, ev.attempt, ev.provider_id):
            return []  # stale attempt, lost lease or duplicate: fenced off
        job, shard = self.jobs[ev.job_id], self.jobs[ev.job_id].shards[ev.index]
        lease = shard.leases.get(ev.provider_id)
        if lease is None:  # an adopted result from before a head restart
            job.pending.remove(ev.index)
        else:
            job.duration_sum += max(0.0, ev.now - lease.started)
            job.duration_count += 1
        if ev.elapsed >= 0:
            job.compute_ewma = ev.elapsed if job.compute_ewma is None else 0.8 * job.compute_ewma + 0.2 * ev.elapsed
        shard.done = True
        job.done += 1
        if ev.index in job.round:
            job.round_done += 1
        actions: list[Action] = [Merge(ev.job_id, ev.index, ev.attempt, ev.provider_id)]
        for pid, other in list(shard.leases.items()):
            if pid != ev.provider_id:  # the speculative loser
                actions.append(Cancel(pid, ev.job_id, ev.index, other.attempt))
            self._release(pid, ev.job_id, ev.index)
        shard.leases.clear()
        if job.done == len(job.shards):
            actions.append(JobRoundDone(ev.job_id))
        return actions

    def _on_task_failed(self, ev: TaskFailed) -> list[Action]:
        if not self.lease_holder(ev.job_id, ev.index, ev.attempt, ev.provider_id):
            return []
        job, shard = self.jobs[ev.job_id], self.jobs[ev.job_id].shards[ev.index]
        if ev.provider_id not in shard.leases:
            return []  # an outbox failure from before a head restart: the shard is pending anyway
        self._release(ev.provider_id, ev.job_id, ev.index)
        shard.leases.pop(ev.provider_id)
        if not ev.counted:
            if not shard.leases:
                shard.attempt += 1
                job.pending.appendleft(ev.index)
                return [Republish(ev.job_id, ev.index, shard.attempt, None, reason=ev.error or "retry")]
            return []
        shard.failures += 1
        if shard.failures >= self.config.max_attempts:
            return [*self._remove_job(ev.job_id),
                    JobFailed(ev.job_id, f"shard {ev.index} failed {shard.failures} times; last error: {ev.error}")]
        shard.excluded.add(ev.provider_id)
        if not shard.leases:
            shard.attempt += 1
            job.pending.appendleft(ev.index)
            return [Republish(ev.job_id, ev.index, shard.attempt, None, reason="failed")]
        return []

    def _release(self, provider_id: str, job_id: str, index: int) -> None:
        p = self.providers.get(provider_id)
        if p is not None:
            p.leases.discard((job_id, index))

    # -- time ----------------------------------------------------------------

    def _on_tick(self, ev: Tick) -> list[Action]:
        cfg, actions = self.config, []
        for p in list(self.providers.values()):
            silent = ev.now - p.last_seen
            if silent > cfg.dead_after:
                actions.append(ProviderDead(p.provider_id))
                actions.extend(self._drop_provider(p, ev.now, exclude=True))
            elif silent > cfg.liveness * cfg.heartbeat_interval and p.state != "draining":
                p.state = "suspect"
        for p in self.providers.values():
            for job_id, index in p.leases:
                lease = self.jobs[job_id].shards[index].leases[p.provider_id]
                if not lease.accepted and ev.now > lease.ack_deadline:
                    lease.ack_deadline = ev.now + cfg.ack_timeout
                    actions.append(Republish(job_id, index, lease.attempt, p.provider_id, reason="no_ack"))
        if cfg.speculate:
            actions.extend(self._speculate(ev.now))
        return actions

    def _speculate(self, now: float) -> list[Action]:
        """A copy of a straggling shard for an idle provider; the first result wins."""
        cfg, actions = self.config, []
        leased = [(self.jobs[j], i) for p in self.providers.values() for j, i in p.leases]
        for job, index in leased:
            shard = job.shards[index]
            if len(shard.leases) != 1 or index in job.speculated or not job.duration_count:
                continue
            if job.round_done <= cfg.speculate_after * len(job.round):  # "over 75 % done", of the current round
                continue
            (holder, lease), = shard.leases.items()
            if now - lease.started <= cfg.straggler_factor * job.duration_sum / job.duration_count:
                continue
            idle = self._pick_provider(job, shard, exclude={holder}, idle_only=True)
            if idle is not None:
                job.speculated.add(index)
                actions.append(self._lease(job, shard, idle, now, speculative=True))
        return actions

    # -- assignment ----------------------------------------------------------

    def _assign(self, now: float) -> list[Action]:
        """Lease pending shards to free providers: jobs by priority then age, shards in order."""
        actions: list[Action] = []
        for job in sorted(self.jobs.values(), key=lambda j: j.order):
            while job.pending:
                shard = job.shards[job.pending[0]]
                # exclusion is a preference: a shard retries on an excluded provider rather than stall
                provider = self._pick_provider(job, shard, exclude=shard.excluded)
                if provider is None and shard.excluded:
                    provider = self._pick_provider(job, shard, exclude=set())
                if provider is None:
                    break
                shard = self._held_inputs_first(job, shard, self.providers[provider])
                if shard.index == job.pending[0]:
                    job.pending.popleft()
                else:
                    job.pending.remove(shard.index)
                actions.append(self._lease(job, shard, provider, now))
        return actions

    def _held_inputs_first(self, job: _Job, shard: _Shard, p: _Provider) -> _Shard:
        """Instead of ``shard``, a pending shard whose inputs ``p`` already holds, if ``shard``'s are new to
        it (matmul: the B band it has; training: its data shard). Looks at the next shards only."""
        held = p.holds.get(job.job_id)
        if not held or shard.affinity is None or shard.affinity in held:
            return shard
        for index in itertools.islice(job.pending, 1, AFFINITY_LOOKAHEAD):
            other = job.shards[index]
            if other.affinity in held and p.provider_id not in other.excluded and p.provider_id not in other.leases:
                return other
        return shard

    def _pick_provider(self, job: _Job, shard: _Shard, exclude: set[str], idle_only: bool = False) -> str | None:
        """The supporting provider with the most free slots (ties: the first registered)."""
        best, best_free = None, 0
        extra = self._extra_leases(job)
        for p in self.providers.values():
            if job.task_type not in p.task_types or p.provider_id in exclude or p.provider_id in shard.leases:
                continue
            if idle_only and p.leases:
                continue
            free = p.free(extra)
            if free > best_free:
                best, best_free = p.provider_id, free
        return best

    def _extra_leases(self, job: _Job) -> int:
        """Shards beyond its slots a provider may hold for this job: many when shards are tiny, so the
        round trip per shard does not bound the rate."""
        cfg = self.config
        if job.compute_ewma is not None and job.compute_ewma < cfg.tiny_shard_seconds:
            return max(cfg.prefetch, cfg.tiny_prefetch)
        return cfg.prefetch

    def _lease(self, job: _Job, shard: _Shard, provider_id: str, now: float, speculative: bool = False) -> Assign:
        shard.leases[provider_id] = _Lease(provider_id, shard.attempt, now, now + self.config.ack_timeout)
        p = self.providers[provider_id]
        p.leases.add((job.job_id, shard.index))
        if shard.affinity is not None:
            p.holds.setdefault(job.job_id, set()).add(shard.affinity)
        return Assign(job.job_id, shard.index, shard.attempt, provider_id, speculative)

    def _shard(self, job_id: str, index: int) -> _Shard | None:
        job = self.jobs.get(job_id)
        return job.shards.get(index) if job else None

    def finish_job(self, job_id: str) -> None:
        """The server calls this when a job is complete (no further round)."""
        self._remove_job(job_id)
