"""What the scheduler's actions do to jobs: leases become task messages, results are merged, rounds follow
one another, jobs finish. ``HeadNode`` carries these out; they live here so the node's module holds its loop.

A mixin: the methods use the node's jobs, scheduler, journal, group commit, event log, provider channel and
client API, as ``HeadNode.__init__`` sets them up.
"""

from __future__ import annotations

import math
import time

from common import protocol
from head_node.commit import FSYNC_WRITES_MAPS
from head_node.events import (
    Assign, Cancel, JobFailed, JobRoundDone, Merge, ProviderDead, Republish, ShardsAdded, ShardsDropped, task_id_of,
)
from head_node.jobs import Job


class JobActions:
    def apply(self, actions: list, result: protocol.Result | None = None) -> None:
        for action in actions:
            kind = type(action)
            if kind is Assign or (kind is Republish and action.provider_id is not None):
                self._dispatch(action)
            elif kind is Republish:
                self._requeued(action)
            elif kind is Cancel:
                self.publish(action.provider_id, protocol.CancelTask(
                    task_id=task_id_of(action.job_id, action.index), attempt=action.attempt))
            elif kind is Merge:
                self._merge(action, result)
            elif kind is JobRoundDone:
                self.apply_round_done(self.jobs[action.job_id])
            elif kind is JobFailed:
                self.finish(self.jobs[action.job_id], "failed", action.error)
            elif kind is ProviderDead:
                self.providers.mark_dead(action.provider_id)

    def _dispatch(self, a: Assign | Republish) -> None:
        job = self.jobs[a.job_id]
        shard = job.shards[a.index]
        if job.status == "queued":
            job.status, job.started_at = "running", time.time()
            self.journal.update_job(job)
        params, arrays = self.providers.payload(a.provider_id, job, shard)
        msg = protocol.Task(task_id=task_id_of(job.job_id, a.index), job_id=job.job_id, attempt=a.attempt,
                            task_type=job.task_type, index=a.index, params=params, arrays=arrays)
        self.publish(a.provider_id, msg)
        speculative = getattr(a, "speculative", False)
        kind = "speculate" if speculative else ("assign" if isinstance(a, Assign) else "republish")
        self.events.record(job.job_id, kind, task_id=msg.task_id, attempt=a.attempt, provider_id=a.provider_id)
        if speculative:
            self.counters["speculative_launches"] += 1
            job.speculated += 1

    def _requeued(self, a: Republish) -> None:
        job = self.jobs.get(a.job_id)
        if job is not None:
            job.reruns += 1
            self.journal.shard_attempt(a.job_id, a.index, a.attempt)
        self.counters["reassignments"] += 1
        self.log.info("task.requeued", job_id=a.job_id, task_id=task_id_of(a.job_id, a.index),
                      attempt=a.attempt, reason=a.reason)
        self.events.record(a.job_id, "retry", task_id=task_id_of(a.job_id, a.index), attempt=a.attempt,
                           reason=a.reason)

    def _merge(self, a: Merge, result: protocol.Result | None) -> None:
        job = self.jobs[a.job_id]
        try:
            arrays = result.arrays if result else {}
            if result is not None and result.written:  # blocks the provider wrote into our output files
                targets = job.task.output_targets(job, job.shards[a.index])
                unknown = set(result.written) - set(targets)
                if unknown:
                    raise ValueError(f"wrote outputs {sorted(unknown)} in place, which this shard has not")
                arrays = {**arrays, **{name: targets[name] for name in result.written}}
                self.counters["local_arrays_written"] += len(result.written)
            job.task.merge(job, job.shards[a.index], arrays)
        except Exception as e:  # a provider's wrong answer fails the job, not the head
            self.sched.finish_job(job.job_id)
            self.finish(job, "failed", f"merging shard {a.index} from provider {a.provider_id}: {e}")
            return
        job.done += 1
        job.round_merged.add(a.index)
        name = self.providers.count_done(a.provider_id, job)
        self.commit.merged(job.job_id, a.index, name)

    def committed(self, job_id: str, index: int) -> bool:
        """Is this merged shard journaled done (not awaiting or in the group commit)?"""
        return self.commit.committed(job_id, index)

    def decide(self, event, result: protocol.Result | None = None) -> None:
        """Hand ``event`` to the scheduler and carry out its actions; within a batch of results the new
        leases wait for the batch's end, so the room it freed is handed out in one pass."""
        self.apply(self.sched.handle(event, assign=not self._in_batch), result=result)

    def apply_round_done(self, job: Job) -> None:
        if job.finished:
            return
        try:
            shards = job.task.next_round(job)
        except Exception as e:
            self.sched.finish_job(job.job_id)
            self.finish(job, "failed", f"planning round {job.round + 1}: {e}")
            return
        if shards:
            self.commit.flush()  # this round's shards are journaled done before the next round is
            indices = job.add_shards(shards, time.monotonic())
            job.files.flush()  # the round's checkpoint is on disk before the journal says so
            self.journal.add_round(job, shards)
            self.apply(self.sched.handle(ShardsAdded(time.monotonic(), job.job_id, tuple(indices),
                                                     affinity=job.affinity(indices))))
        else:
            self.sched.finish_job(job.job_id)
            self.finish(job, "succeeded")

    def finish(self, job: Job, status: str, error: str = "") -> None:
        job.finish(status, error)
        self.commit.finished(job)  # journaled after its last shards, once they are on disk
        self.commit.start()
        elapsed = job.summary()["elapsed"]
        self.events.record(job.job_id, "finish", status=status, error=error or None, elapsed=round(elapsed, 6))
        self.events.close_job(job.job_id)
        try:  # the fetches held for the end read its outputs from the maps still open (not mapped afresh)
            self._answer_held(self.api.due(time.monotonic(), finished=job.job_id))
        finally:  # then a finished job holds no address space
            job.files.release(flush=not FSYNC_WRITES_MAPS)  # else the group commit's thread syncs the files
        self.providers.forget_job(job.job_id)
        self.counters[f"jobs_{status}"] += 1
        self.log.info("job.finished", job_id=job.job_id, status=status, error=error or None,
                      elapsed=round(elapsed, 4), shards=len(job.shards))

    def _answer_held(self, replies: list[tuple[list, protocol.Message]]) -> None:
        for envelope, reply in replies:
            self._reply(self.sockets["api"], envelope, reply)

    def _close_late_rounds(self, now: float) -> None:
        """A round past its deadline with enough shards done goes on without the stragglers."""
        for job in [j for j in self.jobs.values() if j.status == "running"]:
            policy = job.task.round_policy(job)
            if policy is None or now - job.round_started <= policy[0]:
                continue
            missing = [i for i in job.round_indices if i not in job.round_merged]
            needed = math.ceil(policy[1] * len(job.round_indices))
            if not missing or len(job.round_merged) < needed:
                continue
            self.log.info("round.closed_late", job_id=job.job_id, round=job.round, dropped=len(missing))
            self.counters["shards_dropped"] += len(missing)
            self.apply(self.sched.handle(ShardsDropped(now, job.job_id, tuple(missing))))
            self.journal.shards_done([(job.job_id, i, "") for i in missing])
            for i in missing:
                job.shards.pop(i, None)
            self.apply_round_done(job)
