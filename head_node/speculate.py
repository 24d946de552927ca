"""Speculation: a copy of a straggling shard for an idle provider; the first result wins.

A job qualifies once ``speculate_after`` of its current round is done, so there is a mean shard time to compare
against. A shard straggles when its one lease has run ``straggler_factor`` times that mean. Each shard is
copied once, to a provider holding no lease at all, higher priority jobs first.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

from head_node.assign import Candidates
from head_node.events import SchedulerConfig
from head_node.ledger import _Job, _Provider, _Shard

MIN_STRAGGLE_SECONDS = 0.5  # a shard of milliseconds is not copied because of a jitter of milliseconds


def copies(jobs: dict[str, _Job], providers: dict[str, _Provider], config: SchedulerConfig, now: float,
           budget: int, extra: Callable[[_Job], int]) -> list[tuple[_Job, _Shard, _Provider]]:
    """The copies to lease now, at most ``budget``: ``(job, shard, provider)``, each idle provider at most once.
    ``extra(job)`` is the job's allowance beyond a provider's slots. Changes nothing."""
    # jobs "over 75 % done" (of the current round), with a mean shard time to compare against
    eligible = {job.job_id: job for job in jobs.values()
                if job.duration_count and job.round_done > config.speculate_after * len(job.round)}
    idle = [p for p in providers.values() if p.state == "ready" and not p.leases] if eligible else []
    if not idle:
        return []
    leased: dict[str, list[int]] = {}
    for p in providers.values():
        for job_id, index in computing(p, jobs):
            if job_id in eligible:
                leased.setdefault(job_id, []).append(index)
    out: list[tuple[_Job, _Shard, _Provider]] = []
    taken: set[str] = set()
    for job in sorted((eligible[j] for j in leased), key=lambda j: j.order):
        threshold = max(MIN_STRAGGLE_SECONDS, config.straggler_factor * job.duration_sum / job.duration_count)
        candidates = None
        for index in leased[job.job_id]:
            shard = job.shards[index]
            if len(shard.leases) != 1 or index in job.speculated:
                continue
            lease, = shard.leases.values()
            if now - lease.started <= threshold:
                continue
            if len(out) >= budget:
                return out
            if candidates is None:  # idle still: an earlier job's copies may have taken some
                candidates = Candidates([p for p in idle if p.provider_id not in taken], job.task_type, extra(job))
            target = candidates.take(shard)
            if target is None:
                break
            taken.add(target.provider_id)
            out.append((job, shard, target))
    return out


def computing(p: _Provider, jobs: dict[str, _Job]) -> Iterable[tuple[str, int]]:
    """The leases ``p`` is presumably computing: its ``slots`` oldest (it takes shards in the order they
    came). The others wait in its queue, and waiting there is no sign of a straggler."""
    if len(p.leases) <= p.slots:
        return p.leases
    started = {key: jobs[key[0]].shards[key[1]].leases[p.provider_id].started for key in p.leases}
    return heapq.nsmallest(p.slots, started, key=started.__getitem__)
