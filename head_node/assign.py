"""Matching shards and providers: which provider takes the next shard (a heap of those with room, so S
shards over P providers cost O(P + S log P), not a scan of every provider for every shard), and which
shard a provider takes (one whose inputs it already holds)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Collection, Iterable

from head_node.ledger import _Job, _Provider, _Shard

AFFINITY_LOOKAHEAD = 256  # pending shards looked at for one whose inputs a provider already holds


class Candidates:
    """The providers with room for one job's shards: most free slots first, ties to the first registered."""

    def __init__(self, providers: Iterable[_Provider], task_type: str, extra: int):
        self.extra = extra  # shards beyond its slots a provider may hold for this job
        self._heap = [(-free, p.seq, p) for p in providers
                      if task_type in p.task_types and (free := p.free(extra)) > 0]
        heapq.heapify(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def take(self, shard: _Shard, avoid: Collection[str] = ()) -> _Provider | None:
        """The best provider holding no lease of ``shard``, out of the heap until ``put_back``. One outside
        ``avoid`` if there is one: avoiding is a preference, a shard retries on an excluded provider
        rather than stall."""
        passed, fallback, chosen = [], None, None
        while self._heap:
            item = heapq.heappop(self._heap)
            pid = item[2].provider_id
            if pid in shard.leases or pid in avoid:
                passed.append(item)
                if fallback is None and pid not in shard.leases:
                    fallback = item
                continue
            chosen = item
            break
        if chosen is None and fallback is not None:
            chosen = fallback
            passed.remove(fallback)
        for item in passed:
            heapq.heappush(self._heap, item)
        return chosen[2] if chosen is not None else None

    def put_back(self, p: _Provider) -> None:
        """After ``p`` took a shard: it stays a candidate while it has room."""
        free = p.free(self.extra)
        if free > 0:
            heapq.heappush(self._heap, (-free, p.seq, p))


def held_inputs_first(job: _Job, shard: _Shard, p: _Provider) -> _Shard:
    """Instead of ``shard``, a pending shard whose inputs ``p`` already holds, if ``shard``'s are new to it
    (matmul: the B band it has; training: its data shard). Looks at the next shards only."""
    held = p.holds.get(job.job_id)
    if not held or shard.affinity is None or shard.affinity in held:
        return shard
    for index in itertools.islice(job.pending, 1, AFFINITY_LOOKAHEAD):
        other = job.shards[index]
        if other.affinity in held and p.provider_id not in other.excluded and p.provider_id not in other.leases:
            return other
    return shard
