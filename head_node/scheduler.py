"""Pure scheduling: events in, actions out. No sockets, no clocks, no arrays.

The server feeds every stimulus (a provider became ready, a heartbeat, a
result, a tick of the clock...) to ``Scheduler.handle`` and applies the
actions it returns. Shards are leased as ``(task, attempt, provider,
deadline)``; a result counts only from the current lease holder of the
current attempt (fencing), so shards run at least once and merge exactly once.
"""

from __future__ import annotations

import heapq

from head_node.assign import Candidates, held_inputs_first
from head_node.events import (
    Action, Assign, Cancel, Event, JobAdded, JobCancelled, JobFailed, JobRoundDone,
    Merge, ProviderDead, ProviderDraining, ProviderLeft, ProviderReady, ProviderSeen, Republish,
    SchedulerConfig, ShardsAdded, ShardsDropped, TaskAccepted, TaskFailed, TaskSucceeded, Tick, key_of, parse_key,
)
from head_node.ledger import _Job, _Lease, _Provider, _Shard
from head_node.speculate import copies

__all__ = ["Scheduler", "SchedulerConfig"]

#: leases one event may make: a burst (thousands of tiny shards when their allowance grows) goes out a part
#: per tick, so the head's loop serves heartbeats in between
LEASE_BURST = 256


class Scheduler:
    def __init__(self, config: SchedulerConfig | None = None):
        self.config = config or SchedulerConfig()
        self.providers: dict[str, _Provider] = {}
        self.jobs: dict[str, _Job] = {}
        self._seq = 0
        self._registered = 0
        # assignment runs only when work or room may have appeared: after shards were added or requeued or a
        # job's allowance grew, every provider is a candidate; else only those whose room grew
        self._recheck_all = False
        self._recheck: set[str] = set()
        self._unacked: list[tuple[float, str, str, int]] = []  # heap of (ack deadline, provider, job, index)
        self._leases_left = LEASE_BURST  # for the event being handled
        self._resume = False  # a burst was cut short: the next tick looks at every provider again
        self._next_liveness = 0.0  # when the next tick looks for silent providers
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

    def handle(self, event: Event, assign: bool = True) -> list[Action]:
        """The actions ``event`` calls for. ``assign=False`` leaves new leases to a later ``assign()`` (a batch
        of results then hands out the room it freed in one pass)."""
        self._leases_left = LEASE_BURST
        actions = self._handlers[type(event)](event)
        if assign and (self._recheck_all or self._recheck):
            actions.extend(self._assign(event.now))
        return actions

    def assign(self, now: float) -> list[Action]:
        """Leases for the room and work that appeared since the last assignment."""
        self._leases_left = LEASE_BURST
        return self._assign(now) if self._recheck_all or self._recheck else []

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
        self._registered += 1
        self.providers[ev.provider_id] = _Provider(ev.provider_id, ev.slots, frozenset(ev.task_types), ev.now,
                                                   seq=self._registered)
        self._recheck.add(ev.provider_id)
        return actions

    def _on_provider_seen(self, ev: ProviderSeen) -> list[Action]:
        p = self.providers.get(ev.provider_id)
        if p is None:
            return []
        if p.state == "suspect":
            p.state = "ready"
            self._recheck.add(p.provider_id)
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
                shard.exclude(p.provider_id)
            if not shard.leases and not shard.done:
                actions.append(self._requeue(job, shard, "provider_lost"))
        return actions

    def _requeue(self, job: _Job, shard: _Shard, reason: str) -> Republish:
        """Back to the front of the queue with a new attempt."""
        shard.attempt += 1
        job.pending.appendleft(shard.index)
        self._recheck_all = True
        return Republish(job.job_id, shard.index, shard.attempt, None, reason=reason)

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

    def _add_shards(self, job: _Job, indices, attempts: dict[int, int] | None, recovered: bool = False,
                    affinity: dict[int, str] | None = None) -> None:
        job.round, job.round_done = set(indices), 0
        self._recheck_all = True
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
                self._release(pid, job_id, shard.index)
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
            allowance = self._extra_leases(job)
            job.compute_ewma = ev.elapsed if job.compute_ewma is None else 0.8 * job.compute_ewma + 0.2 * ev.elapsed
            if self._extra_leases(job) > allowance:
                self._recheck_all = True  # every provider has more room for this job now
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
            return [self._requeue(job, shard, ev.error or "retry")] if not shard.leases else []
        shard.failures += 1
        if shard.failures >= self.config.max_attempts:
            return [*self._remove_job(ev.job_id),
                    JobFailed(ev.job_id, f"shard {ev.index} failed {shard.failures} times; last error: {ev.error}")]
        shard.exclude(ev.provider_id)
        return [self._requeue(job, shard, "failed")] if not shard.leases else []

    def _release(self, provider_id: str, job_id: str, index: int) -> None:
        p = self.providers.get(provider_id)
        if p is not None:
            p.leases.discard((job_id, index))
            self._recheck.add(provider_id)

    # -- time ----------------------------------------------------------------

    def _on_tick(self, ev: Tick) -> list[Action]:
        cfg, actions = self.config, []
        self._recheck_all |= self._resume
        self._resume = False
        if ev.now >= self._next_liveness:  # a quarter of a heartbeat interval is fine grain enough for silence
            self._next_liveness = ev.now + cfg.heartbeat_interval / 4
            for p in list(self.providers.values()):
                silent = ev.now - p.last_seen
                if silent > cfg.dead_after:
                    actions.append(ProviderDead(p.provider_id))
                    actions.extend(self._drop_provider(p, ev.now, exclude=True))
                elif silent > cfg.liveness * cfg.heartbeat_interval and p.state != "draining":
                    p.state = "suspect"
        actions.extend(self._republish_unaccepted(ev.now))
        if cfg.speculate:
            actions.extend(self._speculate(ev.now))
        return actions

    def _republish_unaccepted(self, now: float) -> list[Action]:
        """Leases not accepted by their deadline are sent again, once per deadline."""
        actions: list[Action] = []
        while self._unacked and self._unacked[0][0] < now:
            deadline, provider_id, job_id, index = heapq.heappop(self._unacked)
            shard = self._shard(job_id, index)
            lease = shard.leases.get(provider_id) if shard is not None else None
            if lease is None or lease.accepted or lease.ack_deadline != deadline:
                continue  # released, accepted, or a newer deadline is in the heap
            lease.ack_deadline = now + self.config.ack_timeout
            heapq.heappush(self._unacked, (lease.ack_deadline, provider_id, job_id, index))
            actions.append(Republish(job_id, index, lease.attempt, provider_id, reason="no_ack"))
        return actions

    def _speculate(self, now: float) -> list[Action]:
        """Copies of straggling shards for idle providers (``speculate.py``); the first result wins."""
        actions: list[Action] = []
        for job, shard, p in copies(self.jobs, self.providers, self.config, now, self._leases_left, self._extra_leases):
            job.speculated.add(shard.index)
            actions.append(self._lease(job, shard, p.provider_id, now, speculative=True))
        return actions

    # -- assignment ----------------------------------------------------------

    def _assign(self, now: float) -> list[Action]:
        """Lease pending shards to free providers: jobs by priority then age, shards in order."""
        if self._recheck_all:
            providers = list(self.providers.values())
        else:
            providers = [self.providers[pid] for pid in self._recheck if pid in self.providers]
        self._recheck_all, self._recheck = False, set()
        actions: list[Action] = []
        for job in sorted((j for j in self.jobs.values() if j.pending), key=lambda j: j.order):
            candidates = Candidates(providers, job.task_type, self._extra_leases(job))
            while job.pending and candidates:
                if not self._leases_left:
                    self._resume = True
                    return actions
                shard = job.shards[job.pending[0]]
                p = candidates.take(shard, avoid=shard.excluded)
                if p is None:
                    break
                shard = held_inputs_first(job, shard, p)
                if shard.index == job.pending[0]:
                    job.pending.popleft()
                else:
                    job.pending.remove(shard.index)
                actions.append(self._lease(job, shard, p.provider_id, now))
                candidates.put_back(p)
        return actions

    def _extra_leases(self, job: _Job) -> int:
        """Shards beyond its slots a provider may hold for this job: many when shards are tiny, so the
        round trip per shard does not bound the rate."""
        cfg = self.config
        if job.compute_ewma is not None and job.compute_ewma < cfg.tiny_shard_seconds:
            return max(cfg.prefetch, cfg.tiny_prefetch)
        return cfg.prefetch

    def _lease(self, job: _Job, shard: _Shard, provider_id: str, now: float, speculative: bool = False) -> Assign:
        lease = shard.leases[provider_id] = _Lease(provider_id, shard.attempt, now, now + self.config.ack_timeout)
        heapq.heappush(self._unacked, (lease.ack_deadline, provider_id, job.job_id, shard.index))
        self._leases_left -= 1
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
