"""The speed of the link to each provider, measured when it becomes ready, for the ``auto`` codec.

Without it ``auto`` can only guess from how well an array compresses (``common/codec.py``): on this
machine's links that guess chose the slower codec for a photo-like array at 1 Gbit/s (1.55 times the
faster one's time) and for random floats at 100 Mbit/s (1.16 times).

When a provider that is not on the head's machine becomes ready, and the operator gave no
``--link-mbit``, the head publishes three probes to it back to back, before any task: an empty one,
then two carrying ``PROBE_BYTES`` of random bytes each. They travel the same connection in order,
and the provider's acknowledgement of each says when (on its own clock) it decoded it, so the time
between two of them is the later probe's transfer (plus decoding it, a fraction of a millisecond),
however the acknowledgements are batched on the way back or wait in the head's queue. (A provider
that does not say is timed by the acknowledgements' arrival.) The longer of the two gaps counts: a
shaper that lets a first burst through at full speed (a token bucket) is then read at its rate,
not its burst's. ``bits per second = PROBE_BYTES * 8 / gap``. What the head then sends that
provider is encoded for its own link (``Outbox.link_bits``), and the heartbeat replies pass the figure
on (``heartbeat_reply.link_mbit``), so the provider encodes its results for it too. Probes not all
acknowledged within ``RETRY_AFTER`` (one dropped at the high-water mark, an acknowledgement lost) go
out again, ``TRIES`` times in all; after that the guess stays in place.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import numpy as np

from common import protocol

PROBE_BYTES = 512 * 1024  # each big probe: 4 ms at 1 Gbit/s, 42 ms at 100 Mbit/s (1 GiB for 1,000 providers)
MIN_GAP = 2e-4  # seconds: a shorter gap reads as this (about 21 Gbit/s: as fast as we can tell)
RETRY_AFTER = 10.0  # seconds without all three acknowledgements: probe again
TRIES = 3

_payload: np.ndarray | None = None


def _random_bytes() -> np.ndarray:
    global _payload
    if _payload is None:  # incompressible, so it goes raw whatever the codec policy
        _payload = np.random.default_rng().integers(0, 256, PROBE_BYTES, dtype=np.uint8)
    return _payload


@dataclass
class _Pending:
    ids: list[str]
    sent: float  # our monotonic clock
    tries: int
    acks: dict[str, tuple[float, float]] = field(default_factory=dict)  # id -> (our clock, the provider's)


class LinkProbes:
    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}  # provider -> its probes in flight

    def start(self, provider_id: str, now: float | None = None) -> list[protocol.Probe]:
        """The probes to publish to ``provider_id``, in this order (again, if it has some in flight)."""
        tag = secrets.token_hex(6)
        ids = [f"{protocol.LINK_PROBE_PREFIX}{tag}-{i}" for i in range(3)]
        earlier = self._pending.get(provider_id)
        self._pending[provider_id] = _Pending(ids, time.monotonic() if now is None else now,
                                              earlier.tries + 1 if earlier else 1)
        return [protocol.Probe(probe_id=ids[0]),
                *(protocol.Probe(probe_id=i, arrays={"pad": _random_bytes()}) for i in ids[1:])]

    def owns(self, provider_id: str, probe_id: str) -> bool:
        pending = self._pending.get(provider_id)
        return pending is not None and probe_id in pending.ids

    def overdue(self, now: float) -> tuple[list[str], list[str]]:
        """(providers to probe again, providers given up on: dropped here) among those whose probes went out
        ``RETRY_AFTER`` ago and are not all acknowledged."""
        late = [pid for pid, p in self._pending.items() if now - p.sent >= RETRY_AFTER]
        given_up = [pid for pid in late if self._pending[pid].tries >= TRIES]
        for pid in given_up:
            del self._pending[pid]
        return [pid for pid in late if pid not in given_up], given_up

    def acked(self, provider_id: str, probe_id: str, now: float, received: float = 0.0) -> float | None:
        """Record an acknowledgement (``now``: our monotonic clock; ``received``: the provider's when it
        decoded the probe, 0 if it did not say); the link's bits per second once all are in."""
        pending = self._pending[provider_id]
        ids, acks = pending.ids, pending.acks
        acks.setdefault(probe_id, (now, received))
        if len(acks) < len(ids):
            return None
        del self._pending[provider_id]
        clock = 1 if all(acks[i][1] > 0 for i in ids) else 0  # one clock for all three
        gap = max(acks[later][clock] - acks[earlier][clock] for earlier, later in zip(ids, ids[1:]))
        return PROBE_BYTES * 8 / max(MIN_GAP, gap)

    def forget(self, provider_id: str) -> None:
        self._pending.pop(provider_id, None)
