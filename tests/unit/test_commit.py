"""The group commit: a shard is journaled done only after its job's output files were synced."""

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from head_node import commit as commit_module
from head_node.commit import GroupCommit


class Journal:
    def __init__(self):
        self.calls = []

    def shards_done(self, done, jobs=()):  # one transaction: shards first, then the jobs they complete
        if done:
            self.calls.append(("done", sorted(done)))
        self.calls += [("job", job.job_id, job.status) for job in jobs]


class Log:
    def __init__(self):
        self.warnings = []

    def warning(self, event, **fields):
        self.warnings.append(event)


def _job(tmp_path: Path, job_id: str):
    root = tmp_path / job_id
    root.mkdir()
    (root / "out-c.npy").write_bytes(b"x" * 100)
    flushed = []
    files = SimpleNamespace(output_paths=lambda: sorted(root.glob("out-*.npy")), flush=lambda: flushed.append(1))
    return SimpleNamespace(job_id=job_id, status="running", files=files, flushed=flushed)


@pytest.fixture
def synced(monkeypatch):
    """The paths the commit thread synced, in order; ``gate`` holds the thread until set."""
    seen, gate = [], threading.Event()
    gate.set()

    def sync(path):
        gate.wait(10)
        seen.append(path.parent.name)
    monkeypatch.setattr(commit_module, "_sync_data", sync)
    return SimpleNamespace(paths=seen, gate=gate)


def test_shards_are_journaled_after_their_files_are_synced_and_a_finished_job_after_its_shards(tmp_path, synced):
    journal, jobs = Journal(), {}
    jobs["j1"] = _job(tmp_path, "j1")
    gc = GroupCommit(journal, jobs, Log(), background=True)
    synced.gate.clear()  # the disk is slow
    gc.merged("j1", 0, "p-a")
    gc.merged("j1", 1, "p-b")
    jobs["j1"].status = "succeeded"
    gc.finished(jobs["j1"])
    gc.start()
    gc.collect()
    assert journal.calls == [] and not gc.committed("j1", 0)  # being synced: not journaled, not acknowledged
    synced.gate.set()
    gc.flush()
    assert synced.paths == ["j1"]
    assert journal.calls == [("done", [("j1", 0, "p-a"), ("j1", 1, "p-b")]), ("job", "j1", "succeeded")]
    assert gc.committed("j1", 0) and gc.committed("j1", 1)
    gc.close()


def test_a_failed_sync_journals_nothing_and_is_tried_again(tmp_path, monkeypatch):
    journal, jobs, log = Journal(), {"j1": _job(tmp_path, "j1")}, Log()
    failures = [OSError(5, "Input/output error")]

    def sync(path):
        if failures:
            raise failures.pop()
    monkeypatch.setattr(commit_module, "_sync_data", sync)
    gc = GroupCommit(journal, jobs, log, background=True)
    gc.merged("j1", 3, "p-a")
    with pytest.raises(OSError):
        gc.flush()
    assert journal.calls == [] and not gc.committed("j1", 3) and log.warnings == ["commit.sync_failed"]
    gc.flush()  # the disk is back
    assert journal.calls == [("done", [("j1", 3, "p-a")])] and gc.committed("j1", 3)
    gc.close()


def test_without_the_thread_the_maps_are_flushed_in_place_before_the_journal(tmp_path):
    journal, jobs = Journal(), {"j1": _job(tmp_path, "j1"), "j2": _job(tmp_path, "j2")}
    gc = GroupCommit(journal, jobs, Log(), background=False)
    gc.merged("j1", 0, "p-a")
    gc.start()
    assert jobs["j1"].flushed == [1] and jobs["j2"].flushed == []
    assert journal.calls == [("done", [("j1", 0, "p-a")])] and gc.committed("j1", 0)
    gc.start()  # nothing pending: nothing written
    assert len(journal.calls) == 1


def test_sync_data_of_a_deleted_jobs_file_is_not_an_error(tmp_path):
    commit_module._sync_data(tmp_path / "gone.npy")
    real = tmp_path / "here.npy"
    real.write_bytes(b"1")
    commit_module._sync_data(real)


def test_a_sync_that_breaks_otherwise_is_a_failed_sync_and_the_thread_goes_on(tmp_path, monkeypatch):
    journal, jobs, log = Journal(), {"j1": _job(tmp_path, "j1")}, Log()
    calls = []

    def sync(path):
        calls.append(path)
        if len(calls) == 1:
            raise ValueError("not an OSError")
    monkeypatch.setattr(commit_module, "_sync_data", sync)
    gc = GroupCommit(journal, jobs, log, background=True)
    gc.merged("j1", 0, "p-a")
    with pytest.raises(OSError, match="not an OSError"):
        gc.flush()
    assert journal.calls == []
    gc.flush()
    assert journal.calls == [("done", [("j1", 0, "p-a")])]
    gc.close()


def test_a_flush_does_not_wait_forever_for_a_disk_that_never_answers(tmp_path, monkeypatch, synced):
    monkeypatch.setattr(commit_module, "FLUSH_TIMEOUT", 0.2)
    journal, jobs = Journal(), {"j1": _job(tmp_path, "j1")}
    gc = GroupCommit(journal, jobs, Log(), background=True)
    synced.gate.clear()
    gc.merged("j1", 0, "p-a")
    with pytest.raises(OSError, match="not synced within"):
        gc.flush()
    assert journal.calls == [] and not gc.committed("j1", 0)
    synced.gate.set()
    gc.flush()  # the disk answered after all: the batch is collected and journaled
    assert journal.calls == [("done", [("j1", 0, "p-a")])]
    gc.close()
