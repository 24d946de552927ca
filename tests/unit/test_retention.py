"""Deleting finished jobs (``head_node.retention``) on a head without sockets."""

from __future__ import annotations

import time

import pytest

from common import protocol
from common.config import HeadConfig
from common.errors import RequestError, UnknownJobError, ValidationError
from head_node.auth import INSECURE, Principal
from head_node.retention import DELETED_PREFIX
from head_node.server import HeadNode


def _head(path, **config) -> HeadNode:
    node = HeadNode(HeadConfig(data_dir=path, insecure=True, http_port=0, **config))
    node.publish = lambda provider_id, msg: None  # no task socket
    return node


@pytest.fixture
def open_head(tmp_path):
    """Factory: a head on ``tmp_path`` with these config fields; the one before it is closed first (a
    restart), and the last one after the test."""
    heads: list[HeadNode] = []

    def factory(**config) -> HeadNode:
        while heads:
            heads.pop().close()
        heads.append(_head(tmp_path, **config))
        return heads[-1]

    yield factory
    while heads:
        heads.pop().close()


@pytest.fixture
def head(open_head):
    return open_head()


def _submit(head: HeadNode, **params) -> str:
    return head.api._on_submit(protocol.Submit(task_type="noop", params={"shards": 2, **params}), INSECURE).job_id


def _finished(head: HeadNode) -> str:
    job_id = _submit(head)
    head.api._on_cancel(protocol.CancelJob(job_id=job_id), INSECURE)  # no providers: cancelling ends it
    assert head.jobs[job_id].finished
    head.commit.flush()  # as the tick's group commit would, within 0.2 s
    return job_id


def _journaled(head: HeadNode) -> set[str]:
    return {rec.job_id for rec in head.journal.load()}


def test_a_deleted_job_leaves_no_files_no_record_and_stays_gone_after_a_restart(open_head, tmp_path):
    head = open_head()
    gone, kept = _finished(head), _finished(head)
    head.events.record(gone, "note")  # its event log is in its directory too
    assert (tmp_path / "jobs" / gone).is_dir()
    assert isinstance(head.api._on_delete(protocol.DeleteJob(job_id=gone), INSECURE), protocol.Ok)
    assert not (tmp_path / "jobs" / gone).exists() and gone not in head.jobs
    assert _journaled(head) == {kept} and head.counters["jobs_deleted"] == 1
    with pytest.raises(UnknownJobError, match=rf"no job '{gone}': it was deleted \d+ s ago \(by anonymous\)"):
        head.api._on_status(protocol.Status(job_id=gone), INSECURE)
    with pytest.raises(UnknownJobError) as other:  # another client is not told it existed
        head.api._on_status(protocol.Status(job_id=gone), Principal("mallory", "client"))
    assert str(other.value) == f"no job '{gone}'"
    head = open_head()
    assert set(head.jobs) == {kept} and head.jobs[kept].status == "cancelled"


def test_an_unfinished_job_is_refused_and_nothing_changes(head, tmp_path):
    job_id = _submit(head)
    with pytest.raises(ValidationError, match="is queued: cancel it first"):
        head.api._on_delete(protocol.DeleteJob(job_id=job_id), INSECURE)
    assert job_id in head.jobs and job_id in _journaled(head) and (tmp_path / "jobs" / job_id).is_dir()
    assert head.counters["jobs_deleted"] == 0
    with pytest.raises(UnknownJobError, match="no job 'nonexistent'"):
        head.api._on_delete(protocol.DeleteJob(job_id="nonexistent"), INSECURE)


def test_a_journal_failure_keeps_the_job_whole(head, tmp_path, monkeypatch):
    job_id = _finished(head)

    def broken(job_id):
        raise OSError("disk full")

    monkeypatch.setattr(head.journal, "delete_job", broken)
    with pytest.raises(OSError, match="disk full"):
        head.api._on_delete(protocol.DeleteJob(job_id=job_id), INSECURE)
    assert job_id in head.jobs and (tmp_path / "jobs" / job_id).is_dir()
    assert not list((tmp_path / "jobs").glob(DELETED_PREFIX + "*"))


def test_a_deletion_cut_short_by_a_crash_is_finished_at_the_next_start(open_head, tmp_path):
    head = open_head()
    job_id, kept = _finished(head), _finished(head)
    (tmp_path / "jobs" / job_id).rename(tmp_path / "jobs" / (DELETED_PREFIX + job_id))  # step 1 done, then a crash
    head = open_head()
    assert set(head.jobs) == {kept} and _journaled(head) == {kept}
    assert not list((tmp_path / "jobs").glob(DELETED_PREFIX + "*"))


def test_the_sweep_deletes_only_jobs_finished_longer_ago_than_keep_finished(open_head, tmp_path):
    head = open_head(keep_finished=60)
    old, recent, running = _finished(head), _finished(head), _submit(head)
    head.jobs[old].finished_at = time.time() - 61
    head.retention.sweep(time.monotonic())
    assert set(head.jobs) == {recent, running} and _journaled(head) == {recent, running}
    with pytest.raises(UnknownJobError, match=r"deleted \d+ s ago \(finished more than --keep-finished 1 min ago\)"):
        head.api._on_fetch(protocol.Fetch(job_id=old), INSECURE)
    assert not (tmp_path / "jobs" / old).exists() and (tmp_path / "jobs" / recent).is_dir()
    head.jobs[recent].finished_at = time.time() - 61
    head.retention.sweep(time.monotonic())  # within its period: not looked at yet
    assert recent in head.jobs
    head.retention.sweep(time.monotonic() + 16)  # a quarter of keep_finished later
    assert set(head.jobs) == {running}


def test_keep_finished_zero_keeps_jobs_for_ever(open_head):
    head = open_head(keep_finished=0)
    job_id = _finished(head)
    head.jobs[job_id].finished_at = 0.0
    head.retention.sweep(time.monotonic() + 10**6)
    assert job_id in head.jobs


def test_a_job_whose_end_is_not_journaled_yet_waits_for_the_group_commit(open_head):
    head = open_head(keep_finished=60)
    job_id = _submit(head)
    head.commit.merged(job_id, 0, "p1")  # a merged shard the group commit has not journaled yet
    head.api._on_cancel(protocol.CancelJob(job_id=job_id), INSECURE)
    head.jobs[job_id].finished_at = time.time() - 61
    assert job_id in head.commit.held_jobs()
    head.retention.sweep(time.monotonic())
    assert job_id in head.jobs  # the sweep leaves it for later rather than wait for the disk
    head.api._on_delete(protocol.DeleteJob(job_id=job_id), INSECURE)  # a request waits for the commit
    head.commit.flush()
    rows = head.journal._db.execute("SELECT COUNT(*) FROM shard_states WHERE job_id=?", (job_id,)).fetchone()
    assert rows == (0,) and job_id not in _journaled(head)  # the late commit left nothing behind


def test_one_job_that_cannot_be_deleted_holds_back_no_other(open_head, tmp_path, monkeypatch):
    head = open_head(keep_finished=60)
    stuck, other = _finished(head), _finished(head)
    for job_id in (stuck, other):
        head.jobs[job_id].finished_at = time.time() - 61
    real_rename = type(tmp_path).rename

    def rename(path, target):
        if path.name == stuck:
            raise PermissionError(13, "in use by another process")
        return real_rename(path, target)

    monkeypatch.setattr(type(tmp_path), "rename", rename)
    head.retention.sweep(time.monotonic())
    assert set(head.jobs) == {stuck}  # the other went; the stuck one waits for a later sweep
    with pytest.raises(RequestError, match="files are in use") as refused:
        head.api._on_delete(protocol.DeleteJob(job_id=stuck), INSECURE)
    assert refused.value.code == "busy" and stuck in _journaled(head)


def test_deleted_jobs_stay_counted_in_the_metrics(open_head):
    from head_node.metrics import Metrics, figures

    head = open_head()
    job_id = _finished(head)
    job = head.jobs[job_id]
    job.done, job.status = 3, "succeeded"  # as if it had run: three shards merged, 0.3 s end to end
    job.finished_at = job.submitted_at + 0.3
    before = figures(head.state())["tasks_completed"]
    held = Metrics(head.state, lambda: 0).render()[1].decode()
    head.api._on_delete(protocol.DeleteJob(job_id=job_id), INSECURE)
    assert before == figures(head.state())["tasks_completed"] == 3
    text = Metrics(head.state, lambda: 0).render()[1].decode()
    for line in ('zcompute_tasks_completed_total{task_type="noop"} 3.0',
                 'zcompute_job_latency_seconds_bucket{le="0.25",task_type="noop"} 0.0',
                 'zcompute_job_latency_seconds_bucket{le="0.5",task_type="noop"} 1.0',
                 'zcompute_job_latency_seconds_count{task_type="noop"} 1.0'):
        assert line in held and line in text
