"""Fault injection for tests, off unless ``ZCOMPUTE_FAULTS`` is set.

``ZCOMPUTE_FAULTS="drop:task=0.3,dup:result=0.5,delay:compute=2.0,seed=7"``
drops 30 % of outgoing ``task`` messages, sends half the ``result`` messages
twice, and sleeps 2 s before each shard's compute. Keys after ``drop:`` and
``dup:`` are message type names from ``common.protocol.MsgType``.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

ENV = "ZCOMPUTE_FAULTS"


@dataclass
class Faults:
    drop: dict[str, float] = field(default_factory=dict)
    dup: dict[str, float] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def parse(cls, spec: str) -> "Faults":
        faults = cls()
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, _, value = item.partition("=")
            if key == "seed":
                faults.rng.seed(int(value))
                continue
            kind, _, name = key.partition(":")
            if kind not in ("drop", "dup", "delay") or not name:
                raise ValueError(f"{ENV}: cannot read {item!r} (expected drop:TYPE=P, dup:TYPE=P, delay:compute=S)")
            getattr(faults, kind)[name] = float(value)
        return faults

    @property
    def active(self) -> bool:
        return bool(self.drop or self.dup or self.delay)

    def copies(self, msg_type: str) -> int:
        """How many times to send a message of this type: 0 (dropped), 1 or 2 (duplicated)."""
        if self.rng.random() < self.drop.get(msg_type, 0.0):
            return 0
        return 2 if self.rng.random() < self.dup.get(msg_type, 0.0) else 1


FAULTS = Faults.parse(os.environ.get(ENV, ""))
