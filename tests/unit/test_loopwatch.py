"""The head's loop watch: busy time between turns at the heartbeat queue, poll waits left out."""

import math

from head_node.loopwatch import BUCKETS, LoopWatch, quantile


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Log:
    def __init__(self):
        self.warnings = []

    def warning(self, event, **fields):
        self.warnings.append((event, fields))


def test_a_turn_counts_the_busy_time_since_the_last_one_not_the_waiting_in_poll():
    clock, log = Clock(), Log()
    watch = LoopWatch(log, clock)
    watch.turn()  # the first turn only starts the count
    clock.now += 0.5
    watch.idle(0.497)  # half a second in poll, then 3 ms of work
    watch.turn()
    clock.now += 0.03  # 30 ms busy: a large submit
    watch.turn()
    s = watch.summary()
    assert sum(s["counts"]) == 2
    assert s["counts"][BUCKETS.index(0.005)] == 1 and s["counts"][BUCKETS.index(0.05)] == 1
    assert math.isclose(s["sum"], 0.033) and math.isclose(s["max"], 0.03)
    assert s["bounds"][-1] is None and log.warnings == []


def test_a_stall_of_a_second_is_logged_and_lands_in_its_bucket():
    clock, log = Clock(), Log()
    watch = LoopWatch(log, clock)
    watch.turn()
    clock.now += 1.5
    watch.turn()
    assert log.warnings == [("head.loop_stalled", {"seconds": 1.5})]
    assert watch.summary()["counts"][BUCKETS.index(2.0)] == 1


def test_quantile_is_the_bound_of_the_bucket_that_holds_it():
    bounds = [0.01, 0.1, 1.0, None]
    assert quantile([98, 1, 1, 0], bounds, 0.99) == 0.1
    assert quantile([98, 1, 1, 0], bounds, 0.5) == 0.01
    assert quantile([0, 0, 0, 5], bounds, 0.99) is None
    assert quantile([0, 0, 0, 0], bounds, 0.99) is None


def test_the_gc_watch_times_collections_per_generation_and_logs_a_long_one():
    import gc

    from head_node.loopwatch import GcWatch

    clock, log = Clock(), Log()
    watch = GcWatch(log, clock)
    watch("start", {"generation": 0})
    clock.now += 0.002
    watch("stop", {"generation": 0})
    watch("start", {"generation": 2})
    clock.now += 1.5
    watch("stop", {"generation": 2})
    s = watch.summary()
    assert s["collections"] == [1, 0, 1] and math.isclose(s["seconds"][2], 1.5) and math.isclose(s["max"][0], 0.002)
    assert log.warnings == [("head.gc_stalled", {"generation": 2, "seconds": 1.5})]

    real = GcWatch(Log())  # on the interpreter's own collections
    real.start()
    try:
        gc.collect()
    finally:
        real.stop()
    assert real.summary()["collections"][2] == 1 and real.summary()["seconds"][2] > 0
    assert real not in gc.callbacks


def test_settle_gc_freezes_what_start_up_left_and_spaces_full_collections():
    import subprocess
    import sys

    code = ("import gc; from head_node.loopwatch import FULL_GC_EVERY, settle_gc; settle_gc(); "
            "assert gc.get_freeze_count() > 1000, gc.get_freeze_count(); "
            "assert gc.get_threshold()[2] == FULL_GC_EVERY == 100, gc.get_threshold(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
