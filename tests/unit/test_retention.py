"""Deleting finished jobs (``head_node.retention``) on a head without sockets."""

from __future__ import annotations

import time

import pytest

from common import protocol
from common.config import HeadConfig
from common.errors import UnknownJobError, ValidationError
from head_node.auth import INSECURE
from head_node.retention import DELETED_PREFIX
from head_node.server import HeadNode


def _head(path, **config) -> HeadNode:
    node = HeadNode(HeadConfig(data_dir=path, insecure=True, http_port=0, **config))
    node.publish = lambda provider_id, msg: None  # no task socket
    return node


@pytest.fixture
def head(tmp_path):
    node = _head(tmp_path)
    yield node
    node.close()


def _submit(head: HeadNode, **params) -> str:
    return head.api._on_submit(protocol.Submit(task_type="noop", params={"shards": 2, **params}), INSECURE).job_id


def _finished(head: HeadNode) -> str:
    job_id = _submit(head)
    head.api._on_cancel(protocol.CancelJob(job_id=job_id), INSECURE)  # no providers: cancelling ends it
    assert head.jobs[job_id].finished
    return job_id


def _journaled(head: HeadNode) -> set[str]:
    return {rec.job_id for rec in head.journal.load()}


def test_a_deleted_job_leaves_no_files_no_record_and_stays_gone_after_a_restart(tmp_path):
    head = _head(tmp_path)
    gone, kept = _finished(head), _finished(head)
    head.events.record(gone, "note")  # its event log is in its directory too
    assert (tmp_path / "jobs" / gone).is_dir()
    assert isinstance(head.api._on_delete(protocol.DeleteJob(job_id=gone), INSECURE), protocol.Ok)
    assert not (tmp_path / "jobs" / gone).exists() and gone not in head.jobs
    assert _journaled(head) == {kept} and head.counters["jobs_deleted"] == 1
    with pytest.raises(UnknownJobError):
        head.api._on_status(protocol.Status(job_id=gone), INSECURE)
    head.close()
    head = _head(tmp_path)
    try:
        assert set(head.jobs) == {kept} and head.jobs[kept].status == "cancelled"
    finally:
        head.close()


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


def test_a_deletion_cut_short_by_a_crash_is_finished_at_the_next_start(tmp_path):
    head = _head(tmp_path)
    job_id, kept = _finished(head), _finished(head)
    head.close()
    (tmp_path / "jobs" / job_id).rename(tmp_path / "jobs" / (DELETED_PREFIX + job_id))  # step 1 done, then a crash
    head = _head(tmp_path)
    try:
        assert set(head.jobs) == {kept} and _journaled(head) == {kept}
        assert not list((tmp_path / "jobs").glob(DELETED_PREFIX + "*"))
    finally:
        head.close()


def test_the_sweep_deletes_only_jobs_finished_longer_ago_than_keep_finished(tmp_path):
    head = _head(tmp_path, keep_finished=60)
    try:
        old, recent, running = _finished(head), _finished(head), _submit(head)
        head.jobs[old].finished_at = time.time() - 61
        head.retention.sweep(time.monotonic())
        assert set(head.jobs) == {recent, running} and _journaled(head) == {recent, running}
        assert not (tmp_path / "jobs" / old).exists() and (tmp_path / "jobs" / recent).is_dir()
        head.jobs[recent].finished_at = time.time() - 61
        head.retention.sweep(time.monotonic())  # within its period: not looked at yet
        assert recent in head.jobs
        head.retention.sweep(time.monotonic() + 16)  # a quarter of keep_finished later
        assert set(head.jobs) == {running}
    finally:
        head.close()


def test_keep_finished_zero_keeps_jobs_for_ever(tmp_path):
    head = _head(tmp_path, keep_finished=0)
    try:
        job_id = _finished(head)
        head.jobs[job_id].finished_at = 0.0
        head.retention.sweep(time.monotonic() + 10**6)
        assert job_id in head.jobs
    finally:
        head.close()
