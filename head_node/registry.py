"""What the head knows about each provider: capabilities from ``register``, load from heartbeats."""

from __future__ import annotations

import time
import re
from dataclasses import dataclass, field
from typing import Any

from common.protocol import MAX_PROVIDER_NAME, Register


@dataclass
class ProviderInfo:
    provider_id: str
    name: str
    platform: str
    devices: list[dict]
    memory_bytes: int
    cores: int
    slots: int
    gflops: float
    torch: bool
    task_types: list[str]
    version: str
    owner: str = ""  # the peer (token subject) that registered it; only it may speak for this provider
    topic: str = ""  # its topic on the task socket (derived from its CURVE key when secured)
    state: str = "joining"  # joining -> ready -> suspect -> dead | left
    registered_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    free_slots: int = 0
    load: float = 0.0
    memory_used: int = 0
    shards_done: int = 0
    computed: int = 0  # as the provider reports it: shards it computed since it started
    cached: set = field(default_factory=set)  # cache keys of arrays we sent it (it may have evicted some)
    probe_id: str = ""
    probe_next: float = 0.0
    local: bool = False  # proved it reads the head's files: arrays go by reference (common/localdata.py)
    link_bits: float | None = None  # the link's speed as measured at readiness (head_node/linkprobe.py)

    @classmethod
    def from_register(cls, msg: Register) -> "ProviderInfo":
        return cls(
            provider_id=msg.provider_id, name=msg.name or msg.provider_id[:8], platform=msg.platform,
            devices=msg.devices, memory_bytes=msg.memory_bytes, cores=msg.cores, slots=msg.slots,
            gflops=msg.gflops, torch=msg.torch, task_types=list(msg.task_types), version=msg.version,
            free_slots=msg.slots,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "provider_id": self.provider_id, "name": self.name, "platform": self.platform,
            "devices": self.devices, "device": ", ".join(d.get("name", d.get("kind", "?")) for d in self.devices),
            "memory_bytes": self.memory_bytes, "cores": self.cores, "slots": self.slots,
            "free_slots": self.free_slots, "gflops": self.gflops, "torch": self.torch,
            "task_types": self.task_types, "version": self.version, "state": self.state,
            "load": self.load, "memory_used": self.memory_used, "shards_done": self.shards_done,
            "computed": self.computed, "local": self.local,
            "link_mbit": None if self.link_bits is None else round(self.link_bits / 1e6, 1),
            "last_seen": self.last_seen, "registered_at": self.registered_at,
        }


_PROVIDER_ID = re.compile(r"^[0-9a-f]{32}$")


def check_register(msg: Register) -> str | None:
    """A reason to refuse a registration, or None."""
    if not _PROVIDER_ID.fullmatch(msg.provider_id):
        # fixed length: PUB/SUB matches topics by prefix, so no id may be a prefix of another
        return "provider_id must be 32 lowercase hex digits (a uuid4 hex)"
    if not 1 <= msg.slots <= 256:
        return "slots must be from 1 to 256"
    if not msg.task_types:
        return "a provider must support at least one task type"
    if len(msg.devices) > 64 or not all(
            isinstance(d, dict) and isinstance(d.get("kind"), str) and isinstance(d.get("name"), str)
            and isinstance(d.get("memory_bytes", 0), int) for d in msg.devices):
        return "devices must be at most 64 maps with string 'kind' and 'name' and integer 'memory_bytes'"
    if len(msg.name) > MAX_PROVIDER_NAME or len(msg.platform) > 64 or len(msg.task_types) > 256:
        return "name, platform or task_types is too long"
    return None
