"""The group commit: merged shards become journaled-done, their blocks on disk first.

A restarted head never trusts a block that was not written, so a shard is
recorded done only after its job's output files reached the disk. Syncing a
large output takes long (64 MiB: ~50 ms here), and ``msync`` holds the GIL
for all of it. On Linux a shared mapping's dirty pages are the file's page
cache, so ``fdatasync`` of the file writes them back too (what ``msync``
does there), and it lets go of the GIL: a background thread syncs while the
loop goes on serving (a client fetching the result it was just told of,
heartbeats), and the loop journals each synced batch at its next turn
(``collect``). Elsewhere the maps are
flushed in place, on the loop, as before.

A finished job's final state is journaled with the batch that holds its last
shards, so the journal never says a job succeeded before its output is on
disk; the client learns of the end at once (its output is complete in memory
and in the page cache). A head that dies in between runs the unjournaled
shards again after its restart, or takes them from the providers' outboxes.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from head_node.jobs import Job
    from head_node.journal import Journal

#: how long a waiting commit (a new round, a stop) waits for the disk before it gives up
FLUSH_TIMEOUT = 120.0
#: whether syncing a file writes back the dirty pages of its shared mappings (it does on Linux)
FSYNC_WRITES_MAPS = sys.platform.startswith("linux")


@dataclass
class _Batch:
    shards: dict[tuple[str, int], str]  # (job_id, index) -> provider name
    jobs: list["Job"]  # finished: their final state goes in with these shards
    paths: list[Path] = field(default_factory=list)  # files to sync first
    error: OSError | None = None


class GroupCommit:
    def __init__(self, journal: "Journal", jobs: dict[str, "Job"], log, background: bool = FSYNC_WRITES_MAPS):
        self.journal, self.jobs, self.log = journal, jobs, log
        self.pending: dict[tuple[str, int], str] = {}  # merged, waiting for the next batch
        self._finished: list["Job"] = []  # finished jobs waiting for the next batch
        self._in_flight: dict[tuple[str, int], str] = {}  # being synced
        self._jobs_in_flight: set[str] = set()  # finished jobs whose final state is in a batch being synced
        self._synced: queue.Queue[_Batch] = queue.Queue()
        self._work: queue.Queue[_Batch | None] | None = None
        self._busy = 0  # batches handed to the thread and not yet collected
        if background:
            self._work = queue.Queue()
            threading.Thread(target=self._sync_loop, name="group-commit", daemon=True).start()

    def merged(self, job_id: str, index: int, provider_name: str) -> None:
        self.pending[job_id, index] = provider_name

    def finished(self, job: "Job") -> None:
        """``job`` ended: its final state is journaled with (after) its last shards."""
        self._finished.append(job)

    def committed(self, job_id: str, index: int) -> bool:
        """Is this merged shard journaled done (neither waiting for a batch nor being synced)?"""
        key = (job_id, index)
        return key not in self.pending and key not in self._in_flight

    def held_jobs(self) -> set[str]:
        """The jobs of which something still waits to be synced or journaled."""
        return {*self._jobs_in_flight, *(j.job_id for j in self._finished),
                *(job_id for job_id, _ in self.pending), *(job_id for job_id, _ in self._in_flight)}

    def start(self) -> None:
        """Commit what is pending: sync its files (on the thread, where there is one), then journal it."""
        if not self.pending and not self._finished:
            return
        batch = _Batch(self.pending, self._finished)
        self.pending, self._finished = {}, []
        touched = {job_id for job_id, _ in batch.shards} | {j.job_id for j in batch.jobs}
        if self._work is None:
            for job_id in touched:
                self.jobs[job_id].files.flush()
            self._journal(batch)
            return
        batch.paths = [p for job_id in sorted(touched) for p in self.jobs[job_id].files.output_paths()]
        self._in_flight.update(batch.shards)
        self._jobs_in_flight.update(j.job_id for j in batch.jobs)
        self._busy += 1
        self._work.put(batch)

    def collect(self) -> None:
        """Journal the batches the thread has synced (the loop calls this at every turn of its timer)."""
        while True:
            try:
                self._take(self._synced.get_nowait())
            except queue.Empty:
                return

    def flush(self) -> None:
        """Commit everything now, waiting for the disk (a new round's plan, a stop)."""
        self.start()
        while self._busy:
            try:
                batch = self._synced.get(timeout=FLUSH_TIMEOUT)
            except queue.Empty:
                raise OSError(f"the output files were not synced within {FLUSH_TIMEOUT:g} s") from None
            self._take(batch)
            if batch.error is not None:
                raise batch.error

    def _take(self, batch: _Batch) -> None:
        self._busy -= 1
        for key in batch.shards:
            self._in_flight.pop(key, None)
        self._jobs_in_flight.difference_update(j.job_id for j in batch.jobs)
        if batch.error is not None:  # not on disk: not done; tried again with the next batch
            self.log.warning("commit.sync_failed", error=str(batch.error), shards=len(batch.shards))
            self.pending = {**batch.shards, **self.pending}
            self._finished = batch.jobs + self._finished
            return
        self._journal(batch)

    def close(self) -> None:
        if self._work is not None:
            self._work.put(None)

    def _journal(self, batch: _Batch) -> None:
        self.journal.shards_done([(job_id, i, name) for (job_id, i), name in batch.shards.items()], batch.jobs)

    def _sync_loop(self) -> None:
        assert self._work is not None
        while (batch := self._work.get()) is not None:
            try:
                for path in batch.paths:
                    _sync_data(path)
            except OSError as e:
                batch.error = e
            except Exception as e:  # anything else: the batch is not on disk either, and the thread goes on
                batch.error = OSError(f"syncing {batch.paths}: {e!r}")
            self._synced.put(batch)


def _sync_data(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return  # the job's files were deleted: nothing left to keep
    try:
        os.fdatasync(fd)  # the data, as msync would; not the file's times (a journal commit of their own)
    finally:
        os.close(fd)
