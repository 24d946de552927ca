"""The journal: what a restarted head reads back is what was recorded, round by round."""

import sqlite3
from types import SimpleNamespace

import msgpack

from common.tasks.base import Shard
from head_node.journal import Journal


def _job(job_id="j1", shards=3, round_=1):
    return SimpleNamespace(job_id=job_id, owner="alice", task_type="noop", params={"shards": shards}, priority=0,
                           status="queued", error="", submitted_at=1.0, started_at=None, finished_at=None,
                           state={"k": 1}, round=round_, reruns=0,
                           shards={i: Shard(i, {"i": i}) for i in range(shards)})


def _by_index(record):
    return {idx: rest for idx, *rest in record.shards}


def test_a_job_comes_back_with_its_plan_attempts_and_finished_shards(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    j.add_job(_job(shards=3), request_id="alice:r1")
    j.shard_attempt("j1", 1, 2)
    j.shards_done([("j1", 0, "p-a"), ("j1", 1, "p-b")])
    j.close()

    (rec,) = Journal(tmp_path / "j.sqlite").load()
    assert (rec.job_id, rec.request_id, rec.params, rec.state) == ("j1", "alice:r1", {"shards": 3}, {"k": 1})
    assert _by_index(rec) == {0: [{"i": 0}, 0, True, "p-a", 1],
                              1: [{"i": 1}, 2, True, "p-b", 1],
                              2: [{"i": 2}, 0, False, None, 1]}


def test_a_later_round_replans_its_indices_afresh_and_keeps_the_others(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    job = _job(shards=3)
    j.add_job(job, request_id=None)
    j.shard_attempt("j1", 0, 3)
    j.shards_done([("j1", 0, "p-a"), ("j1", 2, "p-c")])
    job.round = 2
    j.add_round(job, [Shard(0, {"i": 0, "round": 2}), Shard(5, {"i": 5})])

    (rec,) = j.load()
    assert rec.round == 2
    assert _by_index(rec) == {0: [{"i": 0, "round": 2}, 0, False, None, 2],
                              1: [{"i": 1}, 0, False, None, 1],
                              2: [{"i": 2}, 0, True, "p-c", 1],
                              5: [{"i": 5}, 0, False, None, 2]}


def test_jobs_load_in_submission_order_and_requests_map_to_their_job(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    for name in ("zz", "aa", "mm"):
        j.add_job(_job(job_id=name), request_id=f"alice:{name}")
    assert [r.job_id for r in j.load()] == ["zz", "aa", "mm"]
    assert j.job_for_request("alice:aa") == "aa" and j.job_for_request("alice:nope") is None


def test_a_journal_with_a_row_per_shard_is_migrated_without_losing_state(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE jobs (job_id TEXT PRIMARY KEY, request_id TEXT, owner TEXT NOT NULL, task_type TEXT NOT NULL,
            params BLOB NOT NULL, priority INTEGER NOT NULL, status TEXT NOT NULL, error TEXT NOT NULL,
            submitted_at REAL NOT NULL, started_at REAL, finished_at REAL, state BLOB NOT NULL,
            round INTEGER NOT NULL, reruns INTEGER NOT NULL, seq INTEGER NOT NULL);
        CREATE TABLE shards (job_id TEXT NOT NULL, idx INTEGER NOT NULL, params BLOB NOT NULL,
            attempt INTEGER NOT NULL, done INTEGER NOT NULL DEFAULT 0, provider TEXT,
            round INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (job_id, idx));
    """)
    pack = msgpack.packb
    db.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
               ("j1", "alice:r", "alice", "noop", pack({"shards": 3}), 0, "running", "", 1.0, 2.0, None,
                pack({}), 2, 0, 1))
    db.executemany("INSERT INTO shards VALUES (?,?,?,?,?,?,?)",
                   [("j1", 0, pack({"i": 0}), 0, 1, "p-a", 1), ("j1", 1, pack({"i": 1}), 4, 0, None, 2),
                    ("j1", 2, pack({"i": 2}), 0, 0, None, 2)])
    db.commit()
    db.close()

    j = Journal(path)
    (rec,) = j.load()
    assert _by_index(rec) == {0: [{"i": 0}, 0, True, "p-a", 1],
                              1: [{"i": 1}, 4, False, None, 2],
                              2: [{"i": 2}, 0, False, None, 2]}
    j.shards_done([("j1", 2, "p-b")])
    j.close()
    (rec,) = Journal(path).load()  # migrated once: the old table is gone, the new state stays
    assert _by_index(rec)[2] == [{"i": 2}, 0, True, "p-b", 2]


def test_a_finished_job_is_recorded_with_its_last_shards(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    job = _job(shards=1)
    j.add_job(job, request_id=None)
    job.status, job.finished_at = "succeeded", 9.0
    j.shards_done([("j1", 0, "p-a")], [job])
    (rec,) = Journal(tmp_path / "j.sqlite").load()
    assert (rec.status, rec.finished_at) == ("succeeded", 9.0)
    assert _by_index(rec) == {0: [{"i": 0}, 0, True, "p-a", 1]}
