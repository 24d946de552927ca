"""Deleting finished jobs: on request (``delete_job``) and when they are older than ``keep_finished``.

A job's directory holds its inputs, outputs and event log; without deletion a head that runs for
months keeps every array it was ever given. A deletion has steps that leave no job journaled
without its files, whatever stops the head between them (a crash or a power cut):

1. the directory is renamed ``jobs/.deleted-ID`` (and, on POSIX, the rename is synced);
2. the journal forgets the job in one transaction that is on disk before it returns;
3. the directory is removed, on a background thread (a large job's files take a while).

At start, before recovery, every ``jobs/.deleted-ID`` left behind is taken through steps 2 and 3.
The expiry sweep runs in the head's tick with a time budget, serving heartbeats between jobs, so
a backlog of thousands of expired jobs (a head that was down, a shorter ``--keep-finished``) is
worked off over several ticks instead of stalling the loop.
"""

from __future__ import annotations

import os
import queue
import shutil
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from common import localdata
from common.errors import RequestError, ValidationError
from head_node.metrics import count_latency

if TYPE_CHECKING:
    from head_node.jobs import Job
    from head_node.server import HeadNode

DELETED_PREFIX = ".deleted-"
SWEEP_SECONDS = 60.0  # how often finished jobs are checked against keep_finished (less when it is short)
REMEMBERED_DELETIONS = 10_000  # deleted job ids kept to explain a later request for one
SWEEP_BUDGET = 0.02  # seconds of one tick the sweep may take; the rest of a backlog waits for the next tick
#: how often the uploads a client wrote and never submitted (it crashed, or was stopped) are looked for, from the
#: first tick on; those an hour old go (common/localdata.clean_uploads)
UPLOADS_SECONDS = 600.0


class Retention:
    def __init__(self, head: "HeadNode"):
        self.head = head
        self.log = head.log
        self.jobs_dir: Path = head.config.data_dir / "jobs"
        keep = head.config.keep_finished
        self._period = min(SWEEP_SECONDS, max(0.2, keep / 4)) if keep > 0 else 0.0
        self._keep = _ago(keep)  # as the reason of an expiry says it
        self._next = 0.0
        self._next_uploads = 0.0
        self._retry_after: dict[str, float] = {}  # job_id -> when the sweep tries it again after a failure
        self._removals: queue.Queue[Path | None] = queue.Queue()
        self._remover: threading.Thread | None = None
        # what deleted jobs had added to the monotonic /metrics figures (shards done, latencies), so that
        # deleting a job does not make a counter go down
        self.done_by_type: Counter[str] = Counter()
        self.latency: dict[str, dict[str, Any]] = {}
        # job_id -> (owner, why, when): a request for a job deleted lately is told so (this process only)
        self.recent: OrderedDict[str, tuple[str, str, float]] = OrderedDict()

    # -- start ---------------------------------------------------------------

    def finish_interrupted(self) -> None:
        """Complete deletions that a stop cut short (call before recovery loads the journal)."""
        if not self.jobs_dir.is_dir():
            return
        for path in self.jobs_dir.glob(DELETED_PREFIX + "*"):
            job_id = path.name[len(DELETED_PREFIX):]
            try:
                self.head.journal.delete_job(job_id)
            except (OSError, sqlite3.Error) as e:  # the head still starts; the job is retried at the next start
                self.log.error("job.delete_failed", job_id=job_id, error=str(e))
                continue
            shutil.rmtree(path, ignore_errors=True)
            self.head.counters["jobs_deleted"] += 1
            self.log.info("job.deleted", job_id=job_id, reason="a deletion cut short, finished at start",
                          left_behind=path.exists())

    def announce(self) -> None:
        """Log the policy at start, with how many recovered jobs it is about to delete."""
        keep = self.head.config.keep_finished
        due = len(self._expired(time.time() - keep)) if keep > 0 else 0
        self.log.info("head.retention", keep_finished_s=keep or None, expired_jobs_to_delete=due)

    # -- deleting ------------------------------------------------------------

    def delete(self, job: "Job", reason: str) -> None:
        """Delete a finished job: files, journal rows and the head's memory of it."""
        if not job.finished:
            raise ValidationError(f"job {job.job_id} is {job.status}: cancel it first, then delete it")
        head = self.head
        if job.job_id in head.commit.held_jobs():
            head.commit.flush()  # its end must be journaled before the journal forgets it
        job.files.release(flush=False)
        head.events.close_job(job.job_id)
        doomed = self.jobs_dir / (DELETED_PREFIX + job.job_id)
        moved = job.files.root.exists()
        if moved:
            try:
                job.files.root.rename(doomed)
            except PermissionError as e:  # Windows: a process on this machine still maps one of its files
                raise RequestError(f"job {job.job_id}'s files are in use on the head's machine ({e}); delete it "
                                   "again once nothing holds them (a result() array from a client there)",
                                   "busy") from None
            _sync_dir(self.jobs_dir)
        try:
            head.journal.delete_job(job.job_id)
        except BaseException:
            if moved:  # still journaled: it keeps its files
                doomed.rename(job.files.root)
            raise
        del head.jobs[job.job_id]
        self._retry_after.pop(job.job_id, None)
        self.recent[job.job_id] = (job.owner, reason, time.time())
        while len(self.recent) > REMEMBERED_DELETIONS:
            self.recent.popitem(last=False)
        self._count(job)
        head.counters["jobs_deleted"] += 1
        head.log.info("job.deleted", job_id=job.job_id, owner=job.owner, status=job.status, reason=reason)
        if moved:
            self._remove(doomed)

    def deleted(self, job_id: str, sees: Callable[[str], bool]) -> str | None:
        """Why ``job_id`` is gone, if it was deleted lately and its owner passes ``sees``; else None."""
        owner, reason, when = self.recent.get(job_id, ("", "", 0.0))
        if not owner or not sees(owner):
            return None
        return f"it was deleted {_ago(time.time() - when)} ago ({reason})"

    def _count(self, job: "Job") -> None:
        self.done_by_type[job.task_type] += job.done
        if job.status == "succeeded" and job.finished_at:
            latency = max(0.0, job.finished_at - job.submitted_at)
            self.latency[job.task_type] = count_latency(self.latency.get(job.task_type), latency)

    def totals(self) -> dict[str, Any]:
        """Deleted jobs' share of the /metrics counters (``head_node.metrics``)."""
        return {"done_by_type": dict(self.done_by_type), "latency": self.latency}

    def _remove(self, path: Path) -> None:
        if self._remover is None:
            self._remover = threading.Thread(target=self._remove_loop, name="job-remover", daemon=True)
            self._remover.start()
        self._removals.put(path)

    def _remove_loop(self) -> None:
        while (path := self._removals.get()) is not None:
            shutil.rmtree(path, ignore_errors=True)  # what stays is removed at the next start

    def close(self, timeout: float = 30.0) -> None:
        """Let the removals already handed over finish (up to ``timeout``)."""
        if self._remover is not None:
            self._removals.put(None)
            self._remover.join(timeout)
            self._remover = None

    # -- expiry --------------------------------------------------------------

    def _expired(self, horizon: float) -> list["Job"]:
        return [j for j in self.head.jobs.values() if j.finished and (j.finished_at or 0) <= horizon]

    def sweep(self, now: float) -> None:
        """Delete jobs finished more than ``keep_finished`` seconds ago: at most every ``_period``, and for at
        most ``SWEEP_BUDGET`` per call (a backlog goes on at the next tick); and stale uploads."""
        self._sweep_uploads(now)
        if not self._period or now < self._next:
            return
        until, held = time.monotonic() + SWEEP_BUDGET, self.head.commit.held_jobs()
        for job in self._expired(time.time() - self.head.config.keep_finished):
            if self._retry_after.get(job.job_id, 0.0) > now or job.job_id in held:
                continue  # failed lately, or its end is not journaled yet: a later sweep takes it
            if time.monotonic() > until:
                return  # the next tick goes on (self._next is unchanged)
            try:
                self.delete(job, reason=f"finished more than --keep-finished {self._keep} ago")
            except (OSError, sqlite3.Error, RequestError) as e:  # this job only: the others still go
                self._retry_after[job.job_id] = now + max(self._period, SWEEP_SECONDS)
                self.log.error("job.delete_failed", job_id=job.job_id, error=str(e))
            self.head.serve_heartbeats()
        self._next = now + self._period

    def _sweep_uploads(self, now: float) -> None:
        if not self.head.config.local_data or now < self._next_uploads:
            return
        self._next_uploads = now + UPLOADS_SECONDS
        removed = localdata.clean_uploads(self.head.config.data_dir)
        if removed:
            self.log.info("head.uploads_removed", files=removed, reason="written by a client that never submitted them")


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _sync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX; Windows has no directory handles to sync)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
