"""Assignment at scale: only what may have changed is looked at, and the choices are the ones a scan of every
provider for every shard makes."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

import head_node.scheduler as scheduler_module
from head_node.assign import Candidates, held_inputs_first
from head_node.events import (
    Assign, JobAdded, JobCancelled, ProviderDraining, ProviderLeft, ProviderReady, ProviderSeen, SchedulerConfig,
    ShardsAdded, TaskAccepted, TaskFailed, TaskSucceeded, Tick, parse_key,
)
from head_node.scheduler import LEASE_BURST, Scheduler

CFG = SchedulerConfig(prefetch=0, tiny_prefetch=2)


def assigned(actions) -> list[tuple[str, int, str]]:
    return [(a.job_id, a.index, a.provider_id) for a in actions if isinstance(a, Assign)]


class ScanEveryProvider(Scheduler):
    """The reference: after every event, each pending shard goes to the supporting provider with the most free
    slots (ties: the first registered), one it is not excluded from if there is one."""

    def handle(self, event):
        self._recheck_all = True  # whatever the event changed
        return super().handle(event)

    def _assign(self, now):
        actions = []
        for job in sorted(self.jobs.values(), key=lambda j: j.order):
            while job.pending:
                shard = job.shards[job.pending[0]]
                pid = self._scan(job, shard, shard.excluded) or self._scan(job, shard, set())
                if pid is None:
                    break
                shard = held_inputs_first(job, shard, self.providers[pid])
                job.pending.remove(shard.index)
                actions.append(self._lease(job, shard, pid, now))
        return actions

    def _scan(self, job, shard, exclude) -> str | None:
        best, best_free = None, 0
        for p in self.providers.values():
            if job.task_type not in p.task_types or p.provider_id in exclude or p.provider_id in shard.leases:
                continue
            free = p.free(self._extra_leases(job))
            if free > best_free:
                best, best_free = p.provider_id, free
        return best


def _events(rng: random.Random, s: Scheduler, now: float, jobs: list[str], rounds: Iterator[int]):
    """One random stimulus for the scheduler's state, or a job id for ``finish_job`` (the server calls it
    outside ``handle``)."""
    pid = f"p{rng.randrange(6)}"
    leases = sorted((p, k) for p in s.providers for k in s.running(p))
    kind = rng.choice(["ready", "ready", "seen", "left", "drain", "job", "job", "more", "cancel", "finish",
                       "ok", "ok", "ok", "ok", "fail", "accept", "tick", "tick"])
    if kind == "ready":
        return ProviderReady(now, pid, rng.randint(1, 3), tuple(rng.sample(["a", "b"], rng.randint(1, 2))))
    if kind == "seen":
        return ProviderSeen(now, pid, frozenset(s.running(pid)))
    if kind == "left":
        return ProviderLeft(now, pid)
    if kind == "drain":
        return ProviderDraining(now, pid)
    if kind == "job":
        jobs.append(f"j{len(jobs)}")
        n = rng.randint(1, 12)
        return JobAdded(now, jobs[-1], rng.choice("ab"), tuple(range(n)), rng.randint(0, 2),
                        affinity={i: f"band{rng.randrange(3)}" for i in range(n)} if rng.random() < 0.5 else None)
    if kind in ("more", "cancel", "finish") and jobs:
        job_id = rng.choice(jobs)
        if kind == "more":  # a next round: indices no job has had
            start = next(rounds)
            return ShardsAdded(now, job_id, tuple(range(start, start + rng.randint(1, 6))))
        return JobCancelled(now, job_id) if kind == "cancel" else job_id
    if kind in ("ok", "fail", "accept") and leases:
        p, key = rng.choice(leases)
        job_id, index, attempt = parse_key(key)
        if kind == "ok":
            return TaskSucceeded(now, job_id, index, attempt, p, elapsed=rng.choice([-1.0, 0.001, 0.5]))
        if kind == "fail":
            return TaskFailed(now, job_id, index, attempt, p, error="x", counted=rng.random() < 0.7)
        return TaskAccepted(now, job_id, index, attempt, p)
    return Tick(now)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**64 - 1))
def test_assignments_are_those_of_a_scan_of_every_provider(seed):
    rng = random.Random(seed)
    cfg = SchedulerConfig(prefetch=rng.choice([0, 1]), tiny_prefetch=2, max_attempts=rng.choice([2, 5]))
    fast, reference = Scheduler(cfg), ScanEveryProvider(cfg)
    now, jobs, rounds = 0.0, [], itertools.count(100, 10)
    for _ in range(120):
        now += rng.choice([0.01, 0.3, 1.0, 2.5, 4.0, 11.0])  # past ack deadlines, liveness, death, stragglers
        event = _events(rng, fast, now, jobs, rounds)
        if isinstance(event, str):
            fast.finish_job(event), reference.finish_job(event)
            continue
        assert fast.handle(event) == reference.handle(event), event
    for pid in fast.providers:
        assert fast.running(pid) == reference.running(pid)


# -- what is looked at ---------------------------------------------------------------------------------


def test_an_event_that_frees_no_room_and_adds_no_work_looks_at_no_provider(monkeypatch):
    looked_at: list[list[str]] = []

    class Recording(Candidates):
        def __init__(self, providers, task_type, extra):
            providers = list(providers)
            looked_at.append([p.provider_id for p in providers])
            super().__init__(providers, task_type, extra)

    monkeypatch.setattr(scheduler_module, "Candidates", Recording)
    s = Scheduler(SchedulerConfig(prefetch=0, speculate=False))
    for i in range(50):
        s.handle(ProviderReady(0.0, f"p{i}", 2, ("noop",)))
    assert len(assigned(s.handle(JobAdded(0.0, "j", "noop", tuple(range(1000)))))) == 100
    assert len(looked_at[-1]) == 50  # new work: every provider
    looked_at.clear()
    s.handle(TaskAccepted(0.1, "j", 0, 0, "p0"))
    for i in range(50):
        s.handle(ProviderSeen(0.5, f"p{i}", frozenset(s.running(f"p{i}"))))
    s.handle(Tick(0.6))
    assert looked_at == []
    # a result frees one slot: only its provider is looked at, and it takes the next pending shard
    index = min(parse_key(k)[1] for k in s.running("p7"))
    assert assigned(s.handle(TaskSucceeded(1.0, "j", index, 0, "p7"))) == [("j", 100, "p7")]
    assert looked_at == [["p7"]]


def test_a_provider_back_from_suspect_is_looked_at_again():
    s = Scheduler(SchedulerConfig(prefetch=0))
    s.handle(ProviderReady(0.0, "p1", 1, ("noop",)))
    s.handle(ProviderReady(0.0, "p2", 1, ("noop",)))
    s.handle(ProviderSeen(3.0, "p2"))
    s.handle(Tick(3.5))  # p1 is suspect
    assert assigned(s.handle(JobAdded(3.6, "j", "noop", (0, 1)))) == [("j", 0, "p2")]
    assert assigned(s.handle(ProviderSeen(3.7, "p1"))) == [("j", 1, "p1")]


def test_a_requeued_shard_goes_to_a_provider_that_sat_idle():
    s = Scheduler(SchedulerConfig(prefetch=0))
    s.handle(ProviderReady(0.0, "p1", 1, ("noop",)))
    s.handle(JobAdded(0.0, "j", "noop", (0,)))
    s.handle(ProviderReady(1.0, "p2", 1, ("noop",)))  # nothing pending: it stays idle
    assert assigned(s.handle(ProviderLeft(2.0, "p1"))) == [("j", 0, "p2")]


def test_a_larger_allowance_for_tiny_shards_reaches_every_provider():
    s = Scheduler(CFG)
    s.handle(ProviderReady(0.0, "p1", 1, ("noop",)))
    s.handle(ProviderReady(0.0, "p2", 1, ("noop",)))
    assert assigned(s.handle(JobAdded(0.0, "j", "noop", tuple(range(10))))) == [("j", 0, "p1"), ("j", 1, "p2")]
    # shard 0 took a millisecond: each provider may now hold 2 beyond its slot; p1 has 3 free, p2 has 2
    actions = s.handle(TaskSucceeded(0.1, "j", 0, 0, "p1", elapsed=0.001))
    assert [p for _, _, p in assigned(actions)] == ["p1", "p1", "p2", "p1", "p2"]


def test_most_free_slots_first_and_ties_to_the_first_registered_among_many():
    s = Scheduler(SchedulerConfig(prefetch=0))
    for i, slots in enumerate([1, 3, 2, 3, 1]):
        s.handle(ProviderReady(0.0, f"p{i}", slots, ("noop",)))
    s.handle(ProviderReady(0.0, "p1", 3, ("noop",)))  # re-registered: now the last registered
    actions = s.handle(JobAdded(0.0, "j", "noop", tuple(range(10))))
    assert [p for _, _, p in assigned(actions)] == ["p3", "p1", "p2", "p3", "p1", "p0", "p2", "p3", "p4", "p1"]


def test_a_burst_goes_out_a_part_per_tick_and_heartbeats_in_between_make_no_leases():
    s = Scheduler(SchedulerConfig(prefetch=0))
    total = 2 * LEASE_BURST + 88
    for i in range(total):
        s.handle(ProviderReady(0.0, f"p{i}", 1, ("noop",)))
    parts = [assigned(s.handle(JobAdded(0.0, "j", "noop", tuple(range(total)))))]
    parts.append(assigned(s.handle(ProviderSeen(0.01, "p0", frozenset(s.running("p0"))))))
    parts += [assigned(s.handle(Tick(t))) for t in (0.05, 0.1, 0.15)]
    assert [len(part) for part in parts] == [LEASE_BURST, 0, LEASE_BURST, 88, 0]
    every = [a for part in parts for a in part]
    assert sorted(index for _, index, _ in every) == list(range(total))
    assert len({p for _, _, p in every}) == total  # one shard each: every provider has one slot
