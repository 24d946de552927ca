"""The head's durable record: jobs, their shards and which shards are finished (SQLite, WAL mode).

Arrays live beside it as ``.npy`` files (``head_node.store``). A shard is
recorded done only after its result was merged into the memory-mapped output
and flushed, so a restarted head never recomputes a finished shard and never
trusts one that was not written.
"""

from __future__ import annotations

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
CREATE TABLE IF NOT EXISTS plans (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, shards BLOB NOT NULL,
    PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS shard_states (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0, provider TEXT,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
"""
#: a round's plan is one row (its shards' parameters packed together), so submitting 5,000 shards writes
#: one row, not 5,000; a shard gets a state row only once it has one (a later attempt, or done)
_SET_DONE = ("INSERT INTO shard_states (job_id, idx, done, provider) VALUES (?,?,1,?) "
             "ON CONFLICT (job_id, idx) DO UPDATE SET done=1, provider=excluded.provider")
_SET_ATTEMPT = ("INSERT INTO shard_states (job_id, idx, attempt) VALUES (?,?,?) "
                "ON CONFLICT (job_id, idx) DO UPDATE SET attempt=excluded.attempt")


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
        self._migrate()
        self._seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()[0]

    def _migrate(self) -> None:
        """A journal written before plans were packed per round (a ``shards`` table, a row per shard)."""
        if not self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='shards'").fetchone():
            return
        plans: dict[tuple[str, int], list] = {}
        states = []
        for job_id, idx, params, attempt, done, provider, round_ in self._db.execute(
                "SELECT job_id, idx, params, attempt, done, provider, round FROM shards ORDER BY job_id, idx"):
            plans.setdefault((job_id, round_), []).append([idx, _unpack(params)])
            if attempt or done:
                states.append((job_id, idx, attempt, done, provider))
        self._tx([("INSERT OR REPLACE INTO plans VALUES (?,?,?)",
                   [(job_id, round_, _pack(shards)) for (job_id, round_), shards in plans.items()]),
                  ("INSERT OR REPLACE INTO shard_states VALUES (?,?,?,?,?)", states)],
                 then="DROP TABLE shards")

    def _tx(self, statements: list[tuple[str, list[tuple]]], then: str | None = None) -> None:
        """Run each (statement, rows) for all its rows, and ``then`` once, in one transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for sql, rows in statements:
                    self._db.executemany(sql, rows)
                if then is not None:
                    self._db.execute(then)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def add_job(self, job, request_id: str | None) -> None:
        self._seq += 1
        self._tx([("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   [(job.job_id, request_id, job.owner, job.task_type, _pack(job.params), job.priority, job.status,
                     job.error, job.submitted_at, job.started_at, job.finished_at, _pack(job.state), job.round,
                     job.reruns, self._seq)]),
                  self._plan(job.job_id, [job.shards[i] for i in sorted(job.shards)], job.round)])

    @staticmethod
    def _plan(job_id: str, shards, round_: int) -> tuple[str, list[tuple]]:
        return ("INSERT OR REPLACE INTO plans VALUES (?,?,?)",
                [(job_id, round_, _pack([[s.index, s.params] for s in shards]))])

    def add_round(self, job, shards) -> None:
        """The job's next round: these shards start afresh (an index planned again loses its old state)."""
        self._tx([self._plan(job.job_id, shards, job.round),
                  ("DELETE FROM shard_states WHERE job_id=? AND idx=?", [(job.job_id, s.index) for s in shards]),
                  self._job_update(job)])

    def shards_done(self, done: list[tuple[str, int, str]], jobs=()) -> None:
        """Record (job_id, index, provider name) shards as finished, and the state of ``jobs`` (those whose
        end these shards complete), in one transaction."""
        self._tx([(_SET_DONE, done), *(self._job_update(job) for job in jobs)])

    def shard_attempt(self, job_id: str, index: int, attempt: int) -> None:
        self._tx([(_SET_ATTEMPT, [(job_id, index, attempt)])])

    @staticmethod
    def _job_update(job) -> tuple[str, list[tuple]]:
        return ("UPDATE jobs SET status=?, error=?, started_at=?, finished_at=?, state=?, round=?, reruns=? "
                "WHERE job_id=?", [(job.status, job.error, job.started_at, job.finished_at, _pack(job.state),
                                    job.round, job.reruns, job.job_id)])

    def update_job(self, job) -> None:
        self._tx([self._job_update(job)])

    def delete_job(self, job_id: str) -> None:
        """Forget the job: its row, its plans and its shard states, in one transaction that is on disk when
        this returns (WAL with ``synchronous=NORMAL`` may lose the last commits at a power cut: the job's
        files are removed next, and a journal that came back with the job would then point at nothing)."""
        with self._lock:
            self._db.execute("PRAGMA synchronous=FULL")
        try:
            self._tx([(f"DELETE FROM {table} WHERE job_id=?", [(job_id,)])
                      for table in ("shard_states", "plans", "jobs")])
        finally:
            with self._lock:
                self._db.execute("PRAGMA synchronous=NORMAL")

    def job_for_request(self, request_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT job_id FROM jobs WHERE request_id=?", (request_id,)).fetchone()
        return row[0] if row else None

    def load(self) -> list[JobRecord]:
        """Every job, oldest first, with its shards: each index as its latest round planned it."""
        with self._lock:
            jobs = self._db.execute("SELECT job_id, request_id, owner, task_type, params, priority, status, error, "
                                    "submitted_at, started_at, finished_at, state, round, reruns FROM jobs "
                                    "ORDER BY seq").fetchall()
            planned: dict[str, dict[int, tuple[dict, int]]] = {}
            for job_id, round_, blob in self._db.execute("SELECT job_id, round, shards FROM plans ORDER BY round"):
                latest = planned.setdefault(job_id, {})
                for idx, params in _unpack(blob):
                    latest[idx] = (params, round_)
            states = {(job_id, idx): (attempt, bool(done), provider) for job_id, idx, attempt, done, provider
                      in self._db.execute("SELECT job_id, idx, attempt, done, provider FROM shard_states")}
        records = []
        for j in jobs:
            shards = []
            for idx, (params, round_) in sorted(planned.get(j[0], {}).items()):
                attempt, done, provider = states.get((j[0], idx), (0, False, None))
                shards.append((idx, params, attempt, done, provider, round_))
            records.append(JobRecord(j[0], j[1], j[2], j[3], _unpack(j[4]), j[5], j[6], j[7], j[8], j[9], j[10],
                                     _unpack(j[11]), j[12], j[13], shards))
        return records

    def close(self) -> None:
        with self._lock:
            self._db.close()
