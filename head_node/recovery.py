"""Bring a restarted head back to where it was: every journaled job, its files and its shard states.

Finished shards are not recomputed; unfinished ones are queued again with
their journaled attempt, so providers that re-register after the restart
can still deliver results they computed for that attempt.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

from common.tasks.base import Shard
from head_node.events import JobAdded
from head_node.jobs import Job
from head_node.store import JobFiles

if TYPE_CHECKING:
    from head_node.server import HeadNode


def recover(head: "HeadNode") -> None:
    resumed = 0
    for rec in head.journal.load():
        task = head.tasks.get(rec.task_type)
        files = JobFiles(head.config.data_dir / "jobs" / rec.job_id)
        job = Job(job_id=rec.job_id, owner=rec.owner, task_type=rec.task_type, task=task, params=rec.params,
                  files=files, priority=rec.priority, status=rec.status, error=rec.error,
                  submitted_at=rec.submitted_at, started_at=rec.started_at, finished_at=rec.finished_at,
                  state=rec.state, round=rec.round, reruns=rec.reruns)
        job.shards = {i: Shard(i, params) for i, params, *_ in rec.shards}
        job.done = sum(1 for _, _, _, done, name, _ in rec.shards if done and name)
        job.by_provider = Counter(name for _, _, _, done, name, _ in rec.shards if done and name)
        job.round_indices = [i for i, *_, round_ in rec.shards if round_ == rec.round]
        job.round_merged = {i for i, _, _, done, _, round_ in rec.shards if round_ == rec.round and done}
        job.round_started = time.monotonic()
        head.jobs[job.job_id] = job
        if job.finished:
            continue
        if task is None:
            head.finish(job, "failed", f"task type {rec.task_type!r} is no longer installed on the head")
            continue
        pending = tuple(i for i, _, _, done, *_ in rec.shards if not done)
        attempts = {i: attempt for i, _, attempt, done, *_ in rec.shards if not done}
        resumed += 1
        head.log.info("job.recovered", job_id=job.job_id, status=job.status, done=job.done,
                      pending=len(pending), round=job.round)
        if pending:
            head.apply(head.sched.handle(JobAdded(time.monotonic(), job.job_id, job.task_type, pending,
                                                  priority=job.priority, attempts=attempts, recovered=True,
                                                  affinity=job.affinity(pending))))
        else:  # the round was complete when the head died: plan the next one (or finish)
            head.sched.handle(JobAdded(time.monotonic(), job.job_id, job.task_type, (), priority=job.priority))
            head.apply_round_done(job)
    if resumed:
        head.log.info("head.recovered", jobs=resumed)
