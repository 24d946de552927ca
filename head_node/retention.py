"""Deleting finished jobs: on request (``delete_job``) and when they are older than ``keep_finished``.

A job's directory holds its inputs, outputs and event log; without deletion a head that runs for
months keeps every array it was ever given. A deletion has two steps, so a crash between them is
finished at the next start instead of leaving a journaled job without files or files without a job:

1. the directory is renamed ``jobs/.deleted-ID`` (atomic), after the group commit is flushed;
2. the journal forgets the job, then the directory is removed.

At start, before recovery, every ``jobs/.deleted-ID`` left by a crash is taken through step 2.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import ValidationError

if TYPE_CHECKING:
    from head_node.jobs import Job
    from head_node.server import HeadNode

DELETED_PREFIX = ".deleted-"
SWEEP_SECONDS = 60.0  # how often finished jobs are checked against keep_finished (less when it is short)


class Retention:
    def __init__(self, head: "HeadNode"):
        self.head = head
        self.log = head.log
        self.jobs_dir: Path = head.config.data_dir / "jobs"
        keep = head.config.keep_finished
        self._period = min(SWEEP_SECONDS, max(0.2, keep / 4)) if keep > 0 else 0.0
        self._next = 0.0

    def finish_interrupted(self) -> None:
        """Complete deletions a crash cut short (call before recovery loads the journal)."""
        if not self.jobs_dir.is_dir():
            return
        for path in self.jobs_dir.glob(DELETED_PREFIX + "*"):
            job_id = path.name[len(DELETED_PREFIX):]
            self.head.journal.delete_job(job_id)
            shutil.rmtree(path, ignore_errors=True)
            self.log.info("job.deleted", job_id=job_id, reason="interrupted deletion finished at start")

    def delete(self, job: "Job", reason: str) -> None:
        """Delete a finished job: files, journal rows and the head's memory of it."""
        if not job.finished:
            raise ValidationError(f"job {job.job_id} is {job.status}: cancel it first, then delete it")
        head = self.head
        head.commit.flush()  # nothing of the job's end is still waiting to be synced or journaled
        job.files.release(flush=False)
        head.events.close_job(job.job_id)
        doomed = self.jobs_dir / (DELETED_PREFIX + job.job_id)
        moved = job.files.root.exists()
        if moved:
            job.files.root.rename(doomed)
        try:
            head.journal.delete_job(job.job_id)
        except BaseException:
            if moved:  # still journaled: it keeps its files
                doomed.rename(job.files.root)
            raise
        del head.jobs[job.job_id]
        head.counters["jobs_deleted"] += 1
        head.log.info("job.deleted", job_id=job.job_id, owner=job.owner, status=job.status, reason=reason)
        shutil.rmtree(doomed, ignore_errors=True)

    def sweep(self, now: float) -> None:
        """Delete jobs finished more than ``keep_finished`` seconds ago (at most every ``_period``)."""
        if not self._period or now < self._next:
            return
        self._next = now + self._period
        horizon = time.time() - self.head.config.keep_finished
        for job in [j for j in self.head.jobs.values() if j.finished and (j.finished_at or 0) <= horizon]:
            try:
                self.delete(job, reason="expired")
            except OSError as e:  # the disk failed: try again at the next sweep
                self.log.error("job.delete_failed", job_id=job.job_id, error=str(e))
                return
