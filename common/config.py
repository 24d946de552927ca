"""Typed settings with documented defaults.

Every value can come from a CLI flag or a ``ZCOMPUTE_*`` variable (wired in the
CLIs through click's ``envvar=``). Times are seconds.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from common.codec import Limits
from common.errors import ConfigError

ENV_PREFIX = "ZCOMPUTE_"
DEFAULT_PORT_BASE = 5555
DEFAULT_DATA_DIR = Path("~/.zcompute").expanduser()
SOCKET_ROLES = ("registration", "heartbeat", "tasks", "results", "api")
_ADDRESS = re.compile(r"^tcp://(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>\d{1,5}))?/?$")


@dataclass(frozen=True)
class HeadAddress:
    """Where the head listens: five sockets on ``base .. base+4`` (DESIGN.md section 2)."""

    host: str
    base: int = DEFAULT_PORT_BASE

    @classmethod
    def parse(cls, text: str) -> "HeadAddress":
        """``tcp://HOST[:BASE]``; a bare ``HOST[:BASE]`` is accepted too."""
        text = text.strip()
        if "://" not in text:
            text = "tcp://" + text
        m = _ADDRESS.match(text)
        if not m:
            raise ConfigError(f"head address {text!r} is not of the form tcp://HOST[:PORT]")
        base = int(m["port"]) if m["port"] else DEFAULT_PORT_BASE
        if not 1 <= base <= 65535 - len(SOCKET_ROLES):
            raise ConfigError(f"port base {base} leaves no room for the head's {len(SOCKET_ROLES)} ports")
        return cls(m["host"], base)

    def port(self, role: str) -> int:
        return self.base + SOCKET_ROLES.index(role)

    def url(self, role: str) -> str:
        return f"tcp://{self.host}:{self.port(role)}"

    def __str__(self) -> str:
        return f"tcp://{self.host}:{self.base}"


@dataclass(frozen=True)
class Timing:
    """Liveness and lease timing shared by head and providers."""

    heartbeat_interval: float = 1.0  # provider -> head
    liveness: int = 3  # missed heartbeats before a provider is suspect (no new work)
    dead_after: float = 10.0  # seconds of silence before a provider is dead and its leases requeued
    ack_timeout: float = 2.0  # re-publish an assignment not accepted within this
    probe_interval: float = 0.25  # re-publish the readiness probe until acknowledged
    request_timeout: float = 5.0  # REQ Lazy Pirate timeout before reopen and resend


@dataclass(frozen=True)
class HeadConfig:
    data_dir: Path = DEFAULT_DATA_DIR
    bind_host: str = "0.0.0.0"
    port_base: int = DEFAULT_PORT_BASE
    insecure: bool = False
    allow_any_key: bool = False  # admit any CURVE key (tokens are still required)
    advertise: str = ""  # the address written into join strings; default tcp://HOSTNAME:BASE
    http_host: str = "127.0.0.1"  # dashboard, /metrics, /api/state; another address needs a token unless insecure
    http_port: int = 8080  # 0: no HTTP server
    timing: Timing = field(default_factory=Timing)
    limits: Limits = field(default_factory=Limits)
    max_attempts: int = 3  # a shard failing this often fails its job
    prefetch: int = 0  # shards a provider may hold beyond its slots (input transfer overlaps compute)
    speculate: bool = True  # copy straggling shards to idle providers
    speculate_after: float = 0.75  # fraction of a job done before it speculates
    straggler_factor: float = 1.2  # a shard running this many times the job's mean shard time straggles
    max_queued_jobs_per_client: int = 100
    max_shards_per_job: int = 100_000
    compression: str = "auto"  # raw | zstd | auto
    link_mbit: float | None = None  # the network's speed, for the codec's auto policy (None: unknown)
    local_data: bool = True  # peers on this machine read and write job files in place (common/localdata.py)
    keep_finished: float = 7 * 86400  # seconds a finished job (its arrays, its events) is kept; 0: for ever
    allow_models: tuple[str, ...] = ()  # package.module:factory models clients may train (and entry points)

    def bind_url(self, role: str) -> str:
        return f"tcp://{self.bind_host}:{self.port_base + SOCKET_ROLES.index(role)}"


@dataclass(frozen=True)
class ProviderConfig:
    head: HeadAddress
    join: object = None  # common.security.Join: keys and token for a secured head
    data_dir: Path = DEFAULT_DATA_DIR / "provider"
    name: str = ""
    slots: int = 1  # shards computed at once
    blas_threads: int = 1  # BLAS threads per slot
    device: str = "auto"  # auto | cpu | cuda | mps
    cache_bytes: int = 2 * 1024**3  # arrays kept for reuse across shards (a job's B, a data shard)
    insecure: bool = False
    timing: Timing = field(default_factory=Timing)
    limits: Limits = field(default_factory=Limits)
    compression: str = "auto"
    link_mbit: float | None = None


def env_default(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name, default)
