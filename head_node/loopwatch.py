"""How long the head's loop leaves its heartbeat queue unserved.

Every heartbeat that arrives while the loop is busy elsewhere (a large submit,
a batch of results, a tick) waits in the queue until the loop's next turn at
it. The busy time between two turns (time spent waiting in ``poll`` does not
count: a heartbeat arriving then ends the wait) is the longest any heartbeat
waited, so it is the head's share of a provider's heartbeat round trip, free
of the network's and the provider's. Kept as a histogram (``/metrics``,
``/api/state``) and logged when one wait reaches ``STALL_SECONDS``: a head
that blocks that long starts to look dead to its providers.
"""

from __future__ import annotations

import bisect
import gc
import math
import time
from typing import Any

#: upper bounds of the histogram's buckets, in seconds (the last one takes the rest)
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, math.inf)
STALL_SECONDS = 1.0


class LoopWatch:
    def __init__(self, log, clock=time.monotonic):
        self.log, self.clock = log, clock
        self.counts = [0] * len(BUCKETS)
        self.total = 0.0
        self.longest = 0.0
        self._last: float | None = None
        self._idle = 0.0

    def idle(self, seconds: float) -> None:
        """The loop waited this long in ``poll`` with nothing to do."""
        self._idle += seconds

    def turn(self) -> None:
        """The loop has just served its heartbeat queue."""
        now = self.clock()
        if self._last is not None:
            gap = max(0.0, now - self._last - self._idle)
            self.counts[bisect.bisect_left(BUCKETS, gap)] += 1
            self.total += gap
            self.longest = max(self.longest, gap)
            if gap >= STALL_SECONDS:
                self.log.warning("head.loop_stalled", seconds=round(gap, 3))
        self._last, self._idle = now, 0.0

    def summary(self) -> dict[str, Any]:
        """Counts per bucket (not cumulative), with the bounds in seconds (``inf`` as None for JSON)."""
        return {"bounds": [None if b == math.inf else b for b in BUCKETS], "counts": list(self.counts),
                "sum": self.total, "max": self.longest}


def quantile(counts: list[int], bounds: list[float | None], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (None: no turns, or past the last bound)."""
    total = sum(counts)
    if not total:
        return None
    need, seen = q * total, 0
    for count, bound in zip(counts, bounds):
        seen += count
        if seen >= need:
            return bound
    return None


class GcWatch:
    """The time CPython's cyclic garbage collector holds the head's loop, per generation.

    A full (generation 2) collection walks every tracked object the head holds: with a few jobs of
    thousands of shards that is 50-100 ms here, during which no heartbeat is answered. Counted for
    ``/metrics`` and ``/api/state``; a collection of ``STALL_SECONDS`` or more is logged.
    """

    def __init__(self, log, clock=time.perf_counter):
        self.log, self.clock = log, clock
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._start: float | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = self.clock()
            return
        if self._start is None:
            return
        took, gen = self.clock() - self._start, min(int(info.get("generation", 2)), 2)
        self._start = None
        self.collections[gen] += 1
        self.seconds[gen] += took
        self.longest[gen] = max(self.longest[gen], took)
        if took >= STALL_SECONDS:
            self.log.warning("head.gc_stalled", generation=gen, seconds=round(took, 3))

    def start(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def stop(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def summary(self) -> dict[str, Any]:
        return {"collections": list(self.collections), "seconds": list(self.seconds), "max": list(self.longest)}


#: a full collection at most once per this many generation-1 collections (CPython's default is 10)
FULL_GC_EVERY = 100


def settle_gc() -> None:
    """Tune the collector for a long-running head (its process only: the CLI calls this before serving).

    Everything alive after start-up (modules, recovered jobs) is collected once, then frozen: later
    full collections skip it. And a full collection may come at most every 100 generation-1 collections
    instead of 10, i.e. after about 700,000 objects more were kept alive rather than 70,000: a submit of
    20,000 shards keeps about 42,000, and at 10 it set off 2-4 full collections of 30-160 ms each, during
    which no heartbeat is answered. Young collections (which free almost all cyclic garbage) are unchanged.
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_GC_EVERY)
