"""The speed of the link to each provider, measured when it becomes ready, for the ``auto`` codec.

Without it ``auto`` can only guess from how well an array compresses (``common/codec.py``): on this
machine's links that guess chose the slower codec for a photo-like array at 1 Gbit/s (1.55 times the
faster one's time) and for random floats at 100 Mbit/s (1.16 times).

When a provider that is not on the head's machine becomes ready, and the operator gave no
``--link-mbit``, the head publishes three probes to it back to back: an empty one, then two carrying
``PROBE_BYTES`` of random bytes each. They travel the same connection in order and the provider
acknowledges each as soon as it has decoded it, so the time between two acknowledgements is the
later probe's transfer (plus decoding it, a fraction of a millisecond). The longer of the two gaps
counts: a shaper that lets a first burst through at full speed (a token bucket) is then read at its
rate, not its burst's. ``bits per second = PROBE_BYTES * 8 / gap``. What the head then sends that
provider is encoded for its own link (``Outbox.link_bits``). A probe whose acknowledgement is lost
leaves the guess in place.
"""

from __future__ import annotations

import secrets

import numpy as np

from common import protocol

PROBE_BYTES = 512 * 1024  # each big probe: 4 ms at 1 Gbit/s, 42 ms at 100 Mbit/s (1 GiB for 1,000 providers)
MIN_GAP = 2e-4  # seconds: a shorter gap reads as this (about 21 Gbit/s: as fast as we can tell)

_payload: np.ndarray | None = None


def _random_bytes() -> np.ndarray:
    global _payload
    if _payload is None:  # incompressible, so it goes raw whatever the codec policy
        _payload = np.random.default_rng().integers(0, 256, PROBE_BYTES, dtype=np.uint8)
    return _payload


class LinkProbes:
    def __init__(self) -> None:
        self._pending: dict[str, tuple[list[str], dict[str, float]]] = {}  # provider -> (probe ids, acks)

    def start(self, provider_id: str) -> list[protocol.Probe]:
        """The probes to publish to ``provider_id``, in this order."""
        tag = secrets.token_hex(6)
        ids = [f"link-{tag}-{i}" for i in range(3)]
        self._pending[provider_id] = (ids, {})
        return [protocol.Probe(probe_id=ids[0]),
                *(protocol.Probe(probe_id=i, arrays={"pad": _random_bytes()}) for i in ids[1:])]

    def owns(self, provider_id: str, probe_id: str) -> bool:
        pending = self._pending.get(provider_id)
        return pending is not None and probe_id in pending[0]

    def acked(self, provider_id: str, probe_id: str, now: float) -> float | None:
        """Record an acknowledgement (``now``: monotonic); the link's bits per second once all are in."""
        ids, acks = self._pending[provider_id]
        acks.setdefault(probe_id, now)
        if len(acks) < len(ids):
            return None
        del self._pending[provider_id]
        gap = max(acks[later] - acks[earlier] for earlier, later in zip(ids, ids[1:]))
        return PROBE_BYTES * 8 / max(MIN_GAP, gap)

    def forget(self, provider_id: str) -> None:
        self._pending.pop(provider_id, None)
