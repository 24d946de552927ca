"""The scheduler state machine: events in, actions out, no sockets and no clock."""

from __future__ import annotations

import pytest

from head_node.events import (
    Assign, Cancel, JobAdded, JobCancelled, JobFailed, JobRoundDone, Merge, ProviderDead, ProviderDraining,
    ProviderLeft, ProviderReady, ProviderSeen, Republish, SchedulerConfig, ShardsAdded, TaskAccepted, TaskFailed,
    TaskSucceeded, Tick, key_of, parse_key, parse_task_id, task_id_of,
)
from head_node.scheduler import Scheduler

CFG = SchedulerConfig(heartbeat_interval=1.0, liveness=3, dead_after=10.0, ack_timeout=2.0, max_attempts=3,
                      prefetch=0)  # most tests count slots exactly; test_prefetch covers the extra shard


def make(**over) -> Scheduler:
    return Scheduler(SchedulerConfig(**{**CFG.__dict__, **over}))


def ready(s: Scheduler, pid: str, slots: int = 1, types=("noop",), now: float = 0.0):
    return s.handle(ProviderReady(now, pid, slots, tuple(types)))


def add_job(s: Scheduler, job_id: str, shards: int, now: float = 0.0, priority: int = 0, task_type: str = "noop",
            attempts=None):
    return s.handle(JobAdded(now, job_id, task_type, tuple(range(shards)), priority, attempts))


def of(actions, kind) -> list:
    return [a for a in actions if isinstance(a, kind)]


def assigned(actions) -> list[tuple[str, int, int, str]]:
    return [(a.job_id, a.index, a.attempt, a.provider_id) for a in of(actions, Assign)]


def ok(s: Scheduler, job: str, index: int, attempt: int, pid: str, now: float = 1.0):
    return s.handle(TaskSucceeded(now, job, index, attempt, pid))


# -- inputs a provider holds --------------------------------------------------------------


def test_a_free_provider_takes_the_shard_whose_inputs_it_holds():
    s = make()
    ready(s, "p1", types=("matmul",)), ready(s, "p2", types=("matmul",))
    bands = {0: "b0", 1: "b1", 2: "b0", 3: "b1", 4: "b0", 5: "b1"}  # matmul 3x2: the B band of each shard
    acts = s.handle(JobAdded(0.0, "j", "matmul", tuple(range(6)), affinity=bands))
    assert assigned(acts) == [("j", 0, 0, "p1"), ("j", 1, 0, "p2")]
    # p2 (band b1) is free first: it skips shard 2 (b0) for shard 3 (b1)
    assert assigned(ok(s, "j", 1, 0, "p2")) == [("j", 3, 0, "p2")]
    assert assigned(ok(s, "j", 0, 0, "p1")) == [("j", 2, 0, "p1")]
    assert assigned(ok(s, "j", 2, 0, "p1")) == [("j", 4, 0, "p1")]
    assert assigned(ok(s, "j", 3, 0, "p2")) == [("j", 5, 0, "p2")]


def test_held_inputs_are_a_preference_not_a_stall():
    s = make()
    ready(s, "p1", types=("matmul",)), ready(s, "p2", types=("matmul",))
    acts = s.handle(JobAdded(0.0, "j", "matmul", (0, 1, 2), affinity={0: "b0", 1: "b1", 2: "b0"}))
    assert assigned(acts) == [("j", 0, 0, "p1"), ("j", 1, 0, "p2")]
    assert assigned(ok(s, "j", 1, 0, "p2")) == [("j", 2, 0, "p2")]  # no b1 shard left: it takes a b0 one


def test_what_a_provider_holds_is_forgotten_with_the_job():
    s = make()
    ready(s, "p1", types=("matmul",))
    s.handle(JobAdded(0.0, "j", "matmul", (0,), affinity={0: "b0"}))
    assert s.providers["p1"].holds == {"j": {"b0"}}
    s.handle(JobCancelled(0.5, "j"))
    assert s.providers["p1"].holds == {}


# -- keys ------------------------------------------------------------------------------


def test_task_keys_round_trip():
    assert key_of("j.x", 3, 2) == "j.x.3#2"
    assert parse_key("j.x.3#2") == ("j.x", 3, 2)
    assert task_id_of("abc", 7) == "abc.7"
    assert parse_task_id("abc.7") == ("abc", 7)


# -- assignment ------------------------------------------------------------------------


def test_nothing_is_assigned_without_a_ready_provider():
    s = make()
    assert add_job(s, "j", 3) == []
    assert assigned(ready(s, "p1", slots=2)) == [("j", 0, 0, "p1"), ("j", 1, 0, "p1")]


def test_assigns_only_up_to_free_slots():
    s = make()
    ready(s, "p1", slots=2)
    assert assigned(add_job(s, "j", 5)) == [("j", 0, 0, "p1"), ("j", 1, 0, "p1")]
    assert s.running("p1") == {"j.0#0", "j.1#0"}
    assert assigned(ready(s, "p2", slots=1)) == [("j", 2, 0, "p2")]
    assert assigned(s.handle(Tick(0.5))) == []
    # a finished shard frees a slot for the next pending one
    assert assigned(ok(s, "j", 0, 0, "p1")) == [("j", 3, 0, "p1")]
    assert s.running("p1") == {"j.1#0", "j.3#0"}


def test_most_free_provider_gets_the_shard():
    s = make()
    ready(s, "small", slots=1)
    ready(s, "big", slots=3)
    assert [a.provider_id for a in of(add_job(s, "j", 4), Assign)] == ["big", "big", "small", "big"]


def test_higher_priority_first_and_fifo_within_a_priority():
    s = make()
    add_job(s, "low", 2, priority=0)
    add_job(s, "a", 1, priority=5)
    add_job(s, "b", 1, priority=5)
    add_job(s, "neg", 1, priority=-1)
    assert [a.job_id for a in of(ready(s, "p1", slots=3), Assign)] == ["a", "b", "low"]
    assert assigned(ok(s, "a", 0, 0, "p1")) == [("low", 1, 0, "p1")]
    assert assigned(ok(s, "low", 1, 0, "p1")) == [("neg", 0, 0, "p1")]


def test_provider_gets_only_the_task_types_it_supports():
    s = make()
    ready(s, "mm", slots=2, types=("matmul",))
    ready(s, "nn", slots=1, types=("noop",))
    assert assigned(add_job(s, "j", 2, task_type="noop")) == [("j", 0, 0, "nn")]
    assert assigned(add_job(s, "m", 1, task_type="matmul")) == [("m", 0, 0, "mm")]
    assert add_job(s, "t", 1, task_type="train") == []
    assert s.ready_slots("matmul") == 2 and s.ready_slots("noop") == 1 and s.ready_slots("train") == 0
    # the noop job waits for nn even though mm has a free slot
    assert assigned(s.handle(Tick(0.5))) == []
    assert assigned(ok(s, "j", 0, 0, "nn")) == [("j", 1, 0, "nn")]


def test_initial_attempts_are_honoured():
    s = make()
    ready(s, "p1", slots=2)
    assert assigned(add_job(s, "j", 2, attempts={1: 4})) == [("j", 0, 0, "p1"), ("j", 1, 4, "p1")]


# -- results and fencing ------------------------------------------------------------------


def test_result_from_the_lease_holder_merges_then_finishes_the_round():
    s = make()
    ready(s, "p1", slots=2)
    add_job(s, "j", 2)
    assert ok(s, "j", 1, 0, "p1") == [Merge("j", 1, 0, "p1")]
    assert s.job_progress("j") == (1, 2)
    assert ok(s, "j", 0, 0, "p1") == [Merge("j", 0, 0, "p1"), JobRoundDone("j")]
    assert s.job_progress("j") == (2, 2)
    assert s.running("p1") == set()


def test_stale_attempt_non_holder_and_duplicate_results_are_fenced():
    s = make()
    ready(s, "p1")
    ready(s, "p2")
    add_job(s, "j", 1)
    assert s.lease_holder("j", 0, 0, "p1")
    assert ok(s, "j", 0, 1, "p1") == []  # attempt that was never leased
    assert ok(s, "j", 0, 0, "p2") == []  # not the holder
    assert s.handle(TaskFailed(1.0, "j", 0, 0, "p2", error="x")) == []
    assert ok(s, "nope", 0, 0, "p1") == [] and ok(s, "j", 9, 0, "p1") == []
    assert s.job_progress("j") == (0, 1)
    assert ok(s, "j", 0, 0, "p1") == [Merge("j", 0, 0, "p1"), JobRoundDone("j")]
    assert ok(s, "j", 0, 0, "p1") == []  # duplicate after the merge
    assert not s.lease_holder("j", 0, 0, "p1")


def test_settled_and_running_queries():
    s = make()
    ready(s, "p1", slots=2)
    add_job(s, "j", 3)
    assert s.running("p1") == {"j.0#0", "j.1#0"}
    assert s.running("ghost") == set()
    assert not s.settled("j", 0, 0)
    assert s.settled("j", 0, 1)  # no lease for that attempt: stale
    assert s.settled("j", 2, 0)  # pending shard: no attempt-0 lease to wait for
    assert s.settled("gone", 0, 0)
    ok(s, "j", 0, 0, "p1")
    assert s.settled("j", 0, 0)
    assert s.running("p1") == {"j.1#0", "j.2#0"}


# -- liveness ---------------------------------------------------------------------------


def test_dead_provider_is_requeued_and_reassigned_elsewhere():
    s = make()
    ready(s, "p1")
    ready(s, "p2")
    assert assigned(add_job(s, "j", 1)) == [("j", 0, 0, "p1")]
    s.handle(TaskAccepted(0.1, "j", 0, 0, "p1"))
    s.handle(ProviderSeen(9.0, "p2"))
    assert s.handle(Tick(10.0)) == []  # exactly dead_after is not yet dead
    actions = s.handle(Tick(10.5))
    assert actions == [
        ProviderDead("p1"),
        Republish("j", 0, 1, None, reason="provider_lost"),
        Assign("j", 0, 1, "p2"),
    ]
    assert s.running("p2") == {"j.0#1"}
    assert s.running("p1") == set()
    # the dead provider's late result is fenced; the new holder's counts
    assert ok(s, "j", 0, 0, "p1", now=11.0) == []
    assert ok(s, "j", 0, 1, "p2", now=11.0) == [Merge("j", 0, 1, "p2"), JobRoundDone("j")]


def test_requeued_shard_prefers_a_provider_other_than_the_dead_one():
    s = make()
    ready(s, "p1")
    ready(s, "p3")
    assert assigned(add_job(s, "j", 1)) == [("j", 0, 0, "p1")]
    assert assigned(add_job(s, "hi", 3, priority=9)) == [("hi", 0, 0, "p3")]
    s.handle(ProviderSeen(9.0, "p3"))
    actions = s.handle(Tick(11.0))
    assert of(actions, ProviderDead) == [ProviderDead("p1")]
    assert assigned(actions) == []  # p3 is full
    # p1 restarts with more room; the higher-priority job fills it first
    assert assigned(ready(s, "p1", slots=2, now=11.5)) == [("hi", 1, 0, "p1"), ("hi", 2, 0, "p1")]
    # cancelling "hi" frees both at once: p1 has 2 free slots against p3's 1, yet j.0 avoids p1
    actions = s.handle(JobCancelled(12.0, "hi"))
    assert assigned(actions) == [("j", 0, 1, "p3")]


def test_excluded_provider_is_preferred_against_but_used_rather_than_stall():
    s = make()
    ready(s, "p1", slots=4)
    ready(s, "p2", slots=1)
    add_job(s, "busy", 1)  # goes to p1, which has the most free slots
    assert s.running("p1") == {"busy.0#0"}
    add_job(s, "j", 1)
    assert s.running("p1") == {"busy.0#0", "j.0#0"}
    # j.0 fails on p1: p1 still has 3 free slots against p2's 1, but p1 is excluded for that shard
    actions = s.handle(TaskFailed(1.0, "j", 0, 0, "p1", error="boom"))
    assert assigned(actions) == [("j", 0, 1, "p2")]
    # it fails on p2 too: both are excluded now, so it retries on the one with room instead of stalling
    actions = s.handle(TaskFailed(2.0, "j", 0, 1, "p2", error="boom"))
    assert assigned(actions) == [("j", 0, 2, "p1")]


def test_provider_left_requeues_its_leases():
    s = make()
    ready(s, "p1", slots=2)
    add_job(s, "j", 2)
    actions = s.handle(ProviderLeft(1.0, "p1"))
    assert of(actions, Republish) == [Republish("j", 0, 1, None, reason="provider_lost"),
                                      Republish("j", 1, 1, None, reason="provider_lost")]
    assert of(actions, ProviderDead) == []
    assert s.ready_slots("noop") == 0
    assert sorted(assigned(ready(s, "p2", slots=2, now=2.0))) == [("j", 0, 1, "p2"), ("j", 1, 1, "p2")]
    assert s.handle(ProviderLeft(3.0, "ghost")) == []


def test_re_registration_requeues_the_old_leases():
    s = make()
    ready(s, "p1")
    add_job(s, "j", 1)
    actions = ready(s, "p1", now=5.0)  # the provider restarted
    assert actions == [Republish("j", 0, 1, None, reason="provider_lost"), Assign("j", 0, 1, "p1")]
    assert ok(s, "j", 0, 0, "p1", now=6.0) == []  # its result from before the restart is stale


def test_suspect_provider_gets_no_new_work_and_recovers_when_seen():
    s = make()
    ready(s, "p1", slots=2)
    assert s.handle(Tick(3.0)) == []  # liveness * interval = 3 s: not yet suspect
    s.handle(Tick(3.5))
    assert s.ready_slots("noop") == 0
    assert add_job(s, "j", 1, now=3.6) == []
    assert s.handle(Tick(4.0)) == []
    assert assigned(s.handle(ProviderSeen(4.5, "p1"))) == [("j", 0, 0, "p1")]
    assert s.ready_slots("noop") == 2


def test_suspect_provider_keeps_its_leases():
    s = make()
    ready(s, "p1")
    add_job(s, "j", 1)
    s.handle(TaskAccepted(0.1, "j", 0, 0, "p1"))
    assert of(s.handle(Tick(5.0)), Republish) == []
    assert s.running("p1") == {"j.0#0"}
    assert ok(s, "j", 0, 0, "p1", now=6.0) == [Merge("j", 0, 0, "p1"), JobRoundDone("j")]


def test_seen_from_unknown_provider_is_ignored():
    s = make()
    assert s.handle(ProviderSeen(1.0, "ghost", frozenset({"j.0#0"}))) == []


# -- acknowledgement ------------------------------------------------------------------------


def test_unaccepted_lease_is_republished_after_ack_timeout():
    s = make()
    ready(s, "p1")
    add_job(s, "j", 1)
    assert s.handle(Tick(1.0)) == []
    assert s.handle(Tick(2.0)) == []  # deadline is 2.0, republish only after it
    assert s.handle(Tick(2.5)) == [Republish("j", 0, 0, "p1", reason="no_ack")]
    assert s.handle(Tick(3.0)) == []  # next deadline is 4.5
    s.handle(ProviderSeen(4.0, "p1"))  # alive but not listing the task
    assert s.handle(Tick(4.6)) == [Republish("j", 0, 0, "p1", reason="no_ack")]


def test_each_deadline_republishes_once_and_only_the_current_unaccepted_leases():
    s = make()
    ready(s, "p1", slots=3)
    add_job(s, "j", 3)
    ready(s, "p1", slots=3)  # re-registered at the same moment: attempt 1 of each, with the same deadline
    s.handle(TaskAccepted(0.5, "j", 0, 1, "p1"))
    ok(s, "j", 1, 1, "p1", now=1.0)
    assert s.handle(Tick(2.5)) == [Republish("j", 2, 1, "p1", reason="no_ack")]
    assert s.handle(Tick(2.6)) == []
    assert s.handle(Tick(4.5)) == []  # the next deadline is 4.5: republished only after it
    assert s.handle(Tick(4.6)) == [Republish("j", 2, 1, "p1", reason="no_ack")]


def test_task_accepted_stops_republishing():
    s = make()
    ready(s, "p1")
    add_job(s, "j", 1)
    s.handle(TaskAccepted(0.5, "j", 0, 7, "p1"))  # wrong attempt: no effect
    assert s.handle(Tick(2.5)) == [Republish("j", 0, 0, "p1", reason="no_ack")]
    s.handle(TaskAccepted(2.6, "j", 0, 0, "p1"))
    s.handle(ProviderSeen(3.0, "p1"))
    assert s.handle(Tick(5.0)) == []
    assert s.handle(Tick(8.0)) == []


def test_heartbeat_listing_a_task_counts_as_accepted():
    s = make()
    ready(s, "p1", slots=2)
    add_job(s, "j", 2)
    s.handle(ProviderSeen(1.0, "p1", frozenset({key_of("j", 1, 0), key_of("j", 0, 5)})))
    assert s.handle(Tick(2.5)) == [Republish("j", 0, 0, "p1", reason="no_ack")]


# -- failures and cancellation ----------------------------------------------------------------


def test_failing_max_attempts_times_fails_the_job_with_the_error():
    s = make()
    ready(s, "p1", slots=2)
    ready(s, "p2", slots=1)
    assert assigned(add_job(s, "j", 3)) == [("j", 0, 0, "p1"), ("j", 1, 0, "p1"), ("j", 2, 0, "p2")]
    assert s.handle(TaskFailed(1.0, "j", 0, 0, "p1", error="boom 1")) == [
        Republish("j", 0, 1, None, reason="failed"), Assign("j", 0, 1, "p1")]
    # the other providers are full, so the retry lands on p1 after all
    s.handle(TaskFailed(2.0, "j", 0, 1, "p1", error="boom 2"))
    assert s.running("p1") == {"j.0#2", "j.1#0"}
    actions = s.handle(TaskFailed(3.0, "j", 0, 2, "p1", error="CUDA out of memory"))
    assert of(actions, JobFailed) == [JobFailed("j", "shard 0 failed 3 times; last error: CUDA out of memory")]
    assert sorted(of(actions, Cancel), key=lambda c: c.index) == [Cancel("p1", "j", 1, 0), Cancel("p2", "j", 2, 0)]
    assert isinstance(actions[-1], JobFailed)
    assert s.job_progress("j") == (0, 0)
    assert s.running("p1") == set() and s.running("p2") == set()
    # the cluster keeps running: the next job gets the slots
    assert len(of(add_job(s, "k", 3, now=4.0), Assign)) == 3


def test_failure_then_success_on_retry():
    s = make()
    ready(s, "p1")
    ready(s, "p2")
    add_job(s, "j", 1)
    assert assigned(s.handle(TaskFailed(1.0, "j", 0, 0, "p1", error="x"))) == [("j", 0, 1, "p2")]
    assert ok(s, "j", 0, 1, "p2") == [Merge("j", 0, 1, "p2"), JobRoundDone("j")]


def test_max_attempts_is_configurable():
    s = make(max_attempts=1)
    ready(s, "p1")
    add_job(s, "j", 1)
    assert s.handle(TaskFailed(1.0, "j", 0, 0, "p1", error="nope")) == [
        JobFailed("j", "shard 0 failed 1 times; last error: nope")]


def test_job_cancelled_cancels_its_leases_and_frees_the_slots():
    s = make()
    ready(s, "p1", slots=2)
    add_job(s, "j", 3)
    actions = s.handle(JobCancelled(1.0, "j"))
    assert sorted(actions, key=lambda c: c.index) == [Cancel("p1", "j", 0, 0), Cancel("p1", "j", 1, 0)]
    assert s.running("p1") == set()
    assert s.job_progress("j") == (0, 0)
    assert ok(s, "j", 0, 0, "p1") == []
    assert s.handle(JobCancelled(2.0, "j")) == []
    assert assigned(add_job(s, "k", 2, now=3.0)) == [("k", 0, 0, "p1"), ("k", 1, 0, "p1")]


def test_next_round_shards_and_finish_job():
    s = make()
    ready(s, "p1", slots=2)
    add_job(s, "j", 1)
    assert ok(s, "j", 0, 0, "p1")[-1] == JobRoundDone("j")
    actions = s.handle(ShardsAdded(2.0, "j", (1, 2), {2: 1}))
    assert assigned(actions) == [("j", 1, 0, "p1"), ("j", 2, 1, "p1")]
    ok(s, "j", 1, 0, "p1", now=3.0)
    assert ok(s, "j", 2, 1, "p1", now=3.0) == [Merge("j", 2, 1, "p1"), JobRoundDone("j")]
    s.finish_job("j")
    assert s.job_progress("j") == (0, 0)
    assert s.handle(ShardsAdded(4.0, "j", (3,))) == []


# -- speculation -----------------------------------------------------------------------


def _straggler(p2_slots: int = 1, **over) -> Scheduler:
    """Five shards on p1; four finish after 1 s each; shard 4 keeps running; p2 is idle."""
    s = make(**over)
    ready(s, "p1", slots=5)
    add_job(s, "j", 5)
    ready(s, "p2", slots=p2_slots, types=("noop", "matmul"))
    for i in range(4):
        assert ok(s, "j", i, 0, "p1", now=1.0)[0] == Merge("j", i, 0, "p1")
    s.handle(ProviderSeen(1.0, "p1", frozenset({"j.4#0"})))
    s.handle(ProviderSeen(1.0, "p2"))
    return s


def test_straggler_gets_a_speculative_copy_and_the_first_result_wins():
    s = _straggler()
    assert s.handle(Tick(1.2)) == []  # running 1.2 s = 1.2 x the mean: not yet a straggler
    actions = s.handle(Tick(1.3))
    assert actions == [Assign("j", 4, 0, "p2", speculative=True)]
    assert s.running("p2") == {"j.4#0"}
    assert of(s.handle(Tick(1.4)), Assign) == []  # one copy per shard
    assert ok(s, "j", 4, 0, "p2", now=1.5) == [Merge("j", 4, 0, "p2"), Cancel("p1", "j", 4, 0), JobRoundDone("j")]
    assert ok(s, "j", 4, 0, "p1", now=1.6) == []  # the loser's late result is dropped
    assert s.running("p1") == set() and s.running("p2") == set()


def test_original_holder_can_still_win_over_the_copy():
    s = _straggler()
    s.handle(Tick(1.3))
    assert ok(s, "j", 4, 0, "p1", now=1.5) == [Merge("j", 4, 0, "p1"), Cancel("p2", "j", 4, 0), JobRoundDone("j")]


def test_no_speculation_without_an_idle_provider():
    s = _straggler(p2_slots=2)
    add_job(s, "other", 1, now=1.0, task_type="matmul")  # only p2 runs matmul
    assert s.running("p2") == {"other.0#0"}
    assert s.ready_slots("noop") == 7
    # p2 still has a free slot, but it is not idle: the copy goes nowhere
    assert of(s.handle(Tick(1.5)), Assign) == []
    ok(s, "other", 0, 0, "p2", now=1.6)
    assert s.handle(Tick(1.7)) == [Assign("j", 4, 0, "p2", speculative=True)]


def test_no_speculation_before_75_percent_done():
    s = make()
    ready(s, "p1", slots=5)
    add_job(s, "j", 5)
    ready(s, "p2", slots=1)
    for i in range(3):  # 60 % done
        ok(s, "j", i, 0, "p1", now=1.0)
    s.handle(ProviderSeen(1.0, "p1"))
    s.handle(ProviderSeen(1.0, "p2"))
    assert of(s.handle(Tick(2.5)), Assign) == []


def test_no_speculation_when_disabled():
    s = _straggler(speculate=False)
    assert s.handle(Tick(2.5)) == []


def test_tiny_shards_are_not_copied_for_a_jitter():
    s = make()
    ready(s, "p1", slots=5)
    add_job(s, "j", 5)
    ready(s, "p2", slots=1)
    for i in range(4):  # the mean shard takes 5 ms
        ok(s, "j", i, 0, "p1", now=0.005)
    assert s.handle(Tick(0.4)) == []  # 80 times the mean, but under MIN_STRAGGLE_SECONDS
    assert s.handle(Tick(0.6)) == [Assign("j", 4, 0, "p2", speculative=True)]


def test_the_higher_priority_straggler_gets_the_idle_provider():
    s = make()
    ready(s, "p1", slots=10)
    add_job(s, "low", 5, priority=0)
    add_job(s, "high", 5, priority=1)
    for i in range(4):
        ok(s, "low", i, 0, "p1", now=1.0), ok(s, "high", i, 0, "p1", now=1.0)
    ready(s, "p2", slots=1, now=1.0)
    assert s.handle(Tick(1.3)) == [Assign("high", 4, 0, "p2", speculative=True)]


@pytest.mark.parametrize("factor", [1.2, 2.0])
def test_straggler_factor_is_configurable(factor):
    s = _straggler(straggler_factor=factor)
    # shard 4 has run since t=0 and the mean shard took 1 s
    assert s.handle(Tick(factor)) == []
    assert s.handle(Tick(factor + 0.05)) == [Assign("j", 4, 0, "p2", speculative=True)]


# -- draining and head restart ---------------------------------------------------------------


def test_draining_provider_finishes_its_work_but_gets_nothing_new():
    s = make()
    ready(s, "p1", slots=2)
    add_job(s, "j", 1)
    assert s.handle(ProviderDraining(1.0, "p1")) == []
    assert s.ready_slots("noop") == 0
    assert add_job(s, "k", 1, now=1.1) == []
    s.handle(ProviderSeen(1.5, "p1", frozenset({"j.0#0"})))  # a heartbeat does not make it ready again
    assert assigned(s.handle(Tick(1.6))) == []
    assert ok(s, "j", 0, 0, "p1", now=2.0) == [Merge("j", 0, 0, "p1"), JobRoundDone("j")]
    assert assigned(ready(s, "p2", now=2.5)) == [("k", 0, 0, "p2")]


def test_draining_provider_stays_draining_after_a_missed_heartbeat():
    s = make()
    ready(s, "p1")
    s.handle(ProviderDraining(0.5, "p1"))
    s.handle(Tick(3.5))  # missed heartbeats
    s.handle(ProviderSeen(4.0, "p1"))
    assert add_job(s, "j", 1, now=4.1) == []


def _recovered(s: Scheduler) -> None:
    """The head restarted: job j comes back from the journal with shard 0 at attempt 2 and no providers yet."""
    assert s.handle(JobAdded(100.0, "j", "noop", (0, 1), 0, {0: 2, 1: 0}, recovered=True)) == []


def test_recovered_shard_accepts_an_outbox_result_of_the_journaled_attempt():
    s = make()
    _recovered(s)
    assert not s.settled("j", 0, 2)  # the head still wants that result
    assert s.settled("j", 0, 1)  # an older attempt is stale
    assert s.lease_holder("j", 0, 2, "p9")
    assert ok(s, "j", 0, 1, "p9", now=101.0) == []
    assert ok(s, "j", 0, 2, "p9", now=101.0) == [Merge("j", 0, 2, "p9")]
    assert s.settled("j", 0, 2)
    # the merged shard is no longer pending: a new provider only gets shard 1
    assert assigned(ready(s, "p1", slots=2, now=102.0)) == [("j", 1, 0, "p1")]


def test_recovered_shards_are_leased_out_and_not_adopted_twice():
    s = make()
    _recovered(s)
    ready(s, "p1", slots=1, now=101.0)  # shard 0 is leased out at once, to p1
    assert s.running("p1") == {"j.0#2"}
    ready(s, "p2", slots=2, now=101.0)
    assert s.running("p2") == {"j.1#0"}
    # a provider that re-registers later reports a recovered shard nobody holds: nothing to adopt
    s.handle(ProviderSeen(102.0, "p2", frozenset({"j.0#2"})))
    assert s.running("p2") == {"j.1#0"}


def test_provider_seen_adopts_a_pending_recovered_shard():
    s = make()
    s.handle(ProviderReady(100.0, "p1", 1, ("other",)))  # registered, but supports no noop work
    _recovered(s)
    s.handle(ProviderSeen(101.0, "p1", frozenset({"j.0#2", "j.1#5", "garbage", "x.0#0"})))
    assert s.running("p1") == {"j.0#2"}
    assert ok(s, "j", 0, 2, "p1", now=102.0) == [Merge("j", 0, 2, "p1")]
    # a failure of a recovered attempt that nobody holds is dropped (the shard is pending anyway)
    assert s.handle(TaskFailed(102.0, "j", 1, 0, "p7", error="old")) == []


def test_prefetch_leases_one_shard_beyond_the_slots():
    s = make(prefetch=1)
    s.handle(ProviderReady(0.0, "p", 2, ("noop",)))
    actions = s.handle(JobAdded(0.0, "j", "noop", tuple(range(5))))
    assert [a.index for a in actions if isinstance(a, Assign)] == [0, 1, 2]
    assert s.ready_slots("noop") == 2  # planning counts real slots, not the prefetch


def test_uncounted_failure_requeues_without_penalty_or_exclusion():
    s = make()
    s.handle(ProviderReady(0.0, "p", 1, ("noop",)))
    s.handle(JobAdded(0.0, "j", "noop", (0,)))
    actions = s.handle(TaskFailed(1.0, "j", 0, 0, "p", error="cache_miss", counted=False))
    assert any(isinstance(a, Republish) and a.provider_id is None and a.attempt == 1 for a in actions)
    assert [(a.provider_id, a.attempt) for a in actions if isinstance(a, Assign)] == [("p", 1)]
    for attempt in range(1, 6):  # never fails the job, however often it misses
        actions = s.handle(TaskFailed(2.0, "j", 0, attempt, "p", error="cache_miss", counted=False))
        assert not any(isinstance(a, JobFailed) for a in actions)


def test_dropped_shards_are_cancelled_and_forgotten():
    from head_node.events import ShardsDropped

    s = make()
    s.handle(ProviderReady(0.0, "p", 2, ("noop",)))
    s.handle(JobAdded(0.0, "j", "noop", (0, 1, 2)))
    actions = s.handle(ShardsDropped(1.0, "j", (1, 2)))
    assert {(a.provider_id, a.index) for a in actions if isinstance(a, Cancel)} == {("p", 1)}
    assert s.job_progress("j") == (0, 1)
    actions = s.handle(TaskSucceeded(2.0, "j", 0, 0, "p"))
    assert any(isinstance(a, JobRoundDone) for a in actions)


def test_shards_waiting_in_a_providers_queue_are_not_stragglers():
    """p1 computes one shard at a time and holds three more in its queue (tiny shards, prefetched): only
    the one it is computing may be copied, however long the others have waited."""
    s = make(prefetch=3)
    ready(s, "p1", slots=1)
    add_job(s, "j", 20)
    for i in range(16):  # 80 % done, the mean shard took 0.5 s
        ok(s, "j", i, 0, "p1", now=0.5 * (i + 1) / 16)
    assert s.running("p1") == {"j.16#0", "j.17#0", "j.18#0", "j.19#0"}
    for idle in ("p2", "p3", "p4"):
        ready(s, idle, slots=1, now=0.5)
    copies = of(s.handle(Tick(3.0)), Assign)
    assert [(a.index, a.speculative) for a in copies] == [(16, True)]
