"""The head's durable record: jobs, their shards and which shards are finished (SQLite, WAL mode).

Arrays live beside it as ``.npy`` files (``head_node.store``). A shard is
recorded done only after its result was merged into the memory-mapped output
and flushed, so a restarted head never recomputes a finished shard and never
trusts one that was not written.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, request_id TEXT, owner TEXT NOT NULL, task_type TEXT NOT NULL,
    params BLOB NOT NULL, priority INTEGER NOT NULL, status TEXT NOT NULL, error TEXT NOT NULL,
    submitted_at REAL NOT NULL, started_at REAL, finished_at REAL, state BLOB NOT NULL,
    round INTEGER NOT NULL, reruns INTEGER NOT NULL, seq INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_request ON jobs (request_id);
CREATE TABLE IF NOT EXISTS shards (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, params BLOB NOT NULL, attempt INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0, provider TEXT, round INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (job_id, idx)
);
"""


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


@dataclass
class JobRecord:
    job_id: str
    request_id: str | None
    owner: str
    task_type: str
    params: dict
    priority: int
    status: str
    error: str
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    state: dict
    round: int
    reruns: int
    shards: list[tuple[int, dict, int, bool, str | None, int]]  # (index, params, attempt, done, provider, round)


class Journal:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()[0]

    def _tx(self, statements: list[tuple[str, tuple]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for sql, group in itertools.groupby(statements, key=lambda s: s[0]):  # runs of one statement
                    self._db.executemany(sql, [args for _, args in group])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def add_job(self, job, request_id: str | None) -> None:
        self._seq += 1
        rows = [("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                 (job.job_id, request_id, job.owner, job.task_type, _pack(job.params), job.priority, job.status,
                  job.error, job.submitted_at, job.started_at, job.finished_at, _pack(job.state), job.round,
                  job.reruns, self._seq))]
        rows += self._shard_rows(job.job_id, [job.shards[i] for i in sorted(job.shards)], job.round)
        self._tx(rows)

    @staticmethod
    def _shard_rows(job_id: str, shards, round_: int) -> list[tuple[str, tuple]]:
        return [("INSERT OR REPLACE INTO shards (job_id, idx, params, attempt, round) VALUES (?,?,?,0,?)",
                 (job_id, s.index, _pack(s.params), round_)) for s in shards]

    def add_round(self, job, shards) -> None:
        self._tx([*self._shard_rows(job.job_id, shards, job.round), *self._job_update(job)])

    def shards_done(self, done: list[tuple[str, int, str]]) -> None:
        """Record (job_id, index, provider name) shards as finished, in one transaction."""
        self._tx([("UPDATE shards SET done=1, provider=? WHERE job_id=? AND idx=?", (name, job_id, index))
                  for job_id, index, name in done])

    def shard_attempt(self, job_id: str, index: int, attempt: int) -> None:
        self._tx([("UPDATE shards SET attempt=? WHERE job_id=? AND idx=?", (attempt, job_id, index))])

    @staticmethod
    def _job_update(job) -> list[tuple[str, tuple]]:
        return [("UPDATE jobs SET status=?, error=?, started_at=?, finished_at=?, state=?, round=?, reruns=? "
                 "WHERE job_id=?", (job.status, job.error, job.started_at, job.finished_at, _pack(job.state),
                                    job.round, job.reruns, job.job_id))]

    def update_job(self, job) -> None:
        self._tx(self._job_update(job))

    def job_for_request(self, request_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT job_id FROM jobs WHERE request_id=?", (request_id,)).fetchone()
        return row[0] if row else None

    def load(self) -> list[JobRecord]:
        """Every job, oldest first, with its shards."""
        with self._lock:
            jobs = self._db.execute("SELECT job_id, request_id, owner, task_type, params, priority, status, error, "
                                    "submitted_at, started_at, finished_at, state, round, reruns FROM jobs "
                                    "ORDER BY seq").fetchall()
            shards: dict[str, list] = {}
            for job_id, idx, params, attempt, done, provider, round_ in self._db.execute(
                    "SELECT job_id, idx, params, attempt, done, provider, round FROM shards ORDER BY job_id, idx"):
                shards.setdefault(job_id, []).append((idx, _unpack(params), attempt, bool(done), provider, round_))
        return [JobRecord(j[0], j[1], j[2], j[3], _unpack(j[4]), j[5], j[6], j[7], j[8], j[9], j[10],
                          _unpack(j[11]), j[12], j[13], shards.get(j[0], [])) for j in jobs]

    def close(self) -> None:
        with self._lock:
            self._db.close()
