"""TaskBook: what a provider runs, what waits in its outbox, and what the head has acknowledged."""

from __future__ import annotations

import threading

import pytest

from common import protocol
from common.provider.book import TaskBook


def result(key: str) -> protocol.Result:
    task_id, _, attempt = key.rpartition("#")
    return protocol.Result(provider_id="p", task_id=task_id, attempt=int(attempt), elapsed=0.1)


def test_start_records_a_task_once():
    book = TaskBook(slots=2)
    assert book.start("j.0#0")
    assert not book.start("j.0#0")  # a re-published assignment
    assert book.start("j.0#1")  # another attempt is another task
    assert book.snapshot() == (["j.0#0", "j.0#1"], [], 0)
    assert book.busy


def test_finish_moves_a_task_to_the_outbox():
    book = TaskBook(slots=2)
    book.start("j.0#0")
    msg = result("j.0#0")
    assert book.finish("j.0#0", msg)
    assert book.snapshot() == ([], ["j.0#0"], 2)
    assert not book.busy
    # the result is still owed: the same assignment arriving again is not started twice
    assert not book.start("j.0#0")


def test_acknowledge_clears_the_outbox():
    book = TaskBook(slots=1)
    for key in ("a.0#0", "a.1#0", "a.2#0"):
        book.start(key)
        book.finish(key, result(key))
    book.acknowledge(["a.0#0", "a.2#0", "unknown.9#9"])
    assert book.snapshot() == ([], ["a.1#0"], 1)
    assert [m.task_id for m in book.due(0)] == ["a.1"]
    book.acknowledge(["a.1#0"])
    assert book.due(0) == []
    assert book.start("a.0#0")  # acknowledged keys are forgotten


def test_cancel_while_running_drops_the_result():
    book = TaskBook(slots=2)
    book.start("j.0#0")
    book.start("j.1#0")
    book.cancel("j.0#0")
    assert book.is_cancelled("j.0#0") and not book.is_cancelled("j.1#0")
    # a cancelled task is not reported as running, but still occupies its slot until its compute returns
    assert book.snapshot() == (["j.1#0"], [], 0)
    assert not book.finish("j.0#0", result("j.0#0"))
    assert not book.is_cancelled("j.0#0")
    assert book.snapshot() == (["j.1#0"], [], 1)
    assert book.due(0) == []


def test_cancel_after_finish_drops_the_outbox_entry():
    book = TaskBook(slots=1)
    book.start("j.0#0")
    book.finish("j.0#0", result("j.0#0"))
    book.cancel("j.0#0")
    assert book.snapshot() == ([], [], 1)
    assert not book.is_cancelled("j.0#0")  # nothing running to stop
    assert book.due(0) == []


def test_cancel_of_an_unknown_task_is_harmless():
    book = TaskBook(slots=1)
    book.cancel("x.0#0")
    assert not book.is_cancelled("x.0#0")
    assert book.start("x.0#0")
    assert book.finish("x.0#0", result("x.0#0"))


def test_due_returns_old_results_and_marks_them_sent():
    book = TaskBook(slots=1)
    book.start("j.0#0")
    msg = result("j.0#0")
    book.finish("j.0#0", msg)
    assert book.due(older_than=3600) == []  # just sent
    assert book.due(older_than=0) == [msg]
    assert book.due(older_than=3600) == []  # due() marked it sent again
    assert book.due(older_than=0) == [msg]  # still unacknowledged


def test_snapshot_free_slots_never_negative():
    book = TaskBook(slots=1)
    book.start("a.0#0")
    book.start("a.1#0")  # the head over-assigned (e.g. after a restart)
    assert book.snapshot() == (["a.0#0", "a.1#0"], [], 0)


@pytest.mark.timeout(30)
def test_concurrent_start_is_exclusive():
    book = TaskBook(slots=8)
    wins = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        wins.append(book.start("j.0#0"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(wins) == [False] * 7 + [True]


def test_idle_means_nothing_running_and_nothing_owed():
    book = TaskBook(slots=1)
    assert book.idle and not book.busy
    book.start("j.0#0")
    assert not book.idle and book.busy
    book.finish("j.0#0", result("j.0#0"))
    assert not book.idle and not book.busy  # the result awaits the head's acknowledgement
    book.acknowledge(["j.0#0"])
    assert book.idle
