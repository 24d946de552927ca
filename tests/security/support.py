"""Helpers for the security suite: invites, raw CURVE sockets, counter snapshots.

Everything here talks to a secured ``LocalCluster`` through real sockets.
Every socket and context made here is closed by its owner (``RawPeer`` is a
context manager), because the suite runs with ``filterwarnings = error``.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import zmq

from common import protocol, wire
from common.reqclient import ReqChannel
from common.security import Join
from user_client import Client, LocalCluster

#: counters a refused message can raise, summed where a test only needs "was counted"
REJECTION_COUNTERS = ("rejected_bad_message", "rejected_bad_result", "rejected_auth", "rejected_invalid",
                      "rejected_unknown_job", "rejected_bad_request", "results_fenced")


NO_TORCH = Path(__file__).resolve().parent / "no_torch"


def start_cluster(providers: int = 1, **kwargs: Any) -> LocalCluster:
    """A secured local cluster with the suite's fast timings; its processes cannot import torch
    (see no_torch/torch.py: saves seconds of CPU per process, and no security test needs torch)."""
    from tests.conftest import FAST

    env = dict(kwargs.pop("env", None) or {})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(NO_TORCH), os.environ.get("PYTHONPATH", "")) if p)
    options = {**FAST, "log_level": "info", **kwargs, "env": env, "insecure": False}
    local = LocalCluster(providers, **options).start()
    assert local.keystore is not None and local.admin_join
    return local


@contextmanager
def secured_cluster(providers: int = 1, **kwargs: Any) -> Iterator[LocalCluster]:
    local = start_cluster(providers, **kwargs)
    try:
        yield local
    finally:
        local.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


#: every join this test session handed out: test_secrets makes sure none of their secrets reached a log
ISSUED: list[Join] = []


def invite(cluster: LocalCluster, role: str, name: str | None = None, ttl: float = 3600.0) -> Join:
    """A fresh peer of ``role`` recorded in the head's peers.json (the running head re-reads it)."""
    join = cluster.keystore.invite(role, name or unique(role), ttl, cluster.address)
    ISSUED.append(join)
    return join


def client(cluster: LocalCluster, join: Join | str, timeout: float = 3.0, retries: int = 0) -> Client:
    return Client(cluster.address, join=join, timeout=timeout, retries=retries)


def jobs_snapshot(admin: Client) -> list[tuple[str, str, str]]:
    """What a state change would alter: every job's id, owner and status (admin sees all)."""
    return sorted((j["job_id"], j["owner"], j["status"]) for j in admin.jobs())


def delta(before: dict[str, Any], after: dict[str, Any], *keys: str) -> int:
    return sum(after.get(k, 0) - before.get(k, 0) for k in keys)


def head_log_events(cluster: LocalCluster) -> list[dict[str, Any]]:
    """The head's JSON log lines (other lines, e.g. a traceback, are skipped)."""
    path = Path(cluster.data_dir) / "logs" / "head.log"
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


class RawPeer:
    """Raw pyzmq sockets with a peer's CURVE keys, for frames no ``Client`` would send."""

    def __init__(self, cluster: LocalCluster):
        self.cluster = cluster
        self.ctx = zmq.Context()
        self.sockets: list[zmq.Socket] = []
        self.channels: list[ReqChannel] = []

    def socket(self, kind: int, role: str, join: Join | None, *, curve_keys: tuple[bytes, bytes] | None = None,
               server_key: bytes | None = None) -> zmq.Socket:
        """A socket connected to the head's ``role`` socket; CURVE from ``join`` unless ``join`` is None."""
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if join is not None:
            public, secret = curve_keys or (join.public.encode(), join.secret.encode())
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            sock.curve_serverkey = server_key or join.server_key.encode()
        sock.connect(self.cluster.address.url(role))
        self.sockets.append(sock)
        return sock

    def request(self, role: str, join: Join | None, frames: list[Any] | protocol.Message,
                timeout: float = 3.0) -> protocol.Message | None:
        """One REQ round trip on a fresh socket; the decoded reply, or None when nothing came back."""
        if isinstance(frames, protocol.Message):
            if frames.token is None and join is not None:
                frames.token = join.token
            frames = wire.encode(frames)
        sock = self.socket(zmq.REQ, role, join)
        try:
            sock.send_multipart(frames)
            if not sock.poll(timeout * 1000):
                return None
            return wire.decode(sock.recv_multipart())
        finally:
            self.close_socket(sock)

    def channel(self, role: str, join: Join, timeout: float = 3.0) -> ReqChannel:
        """The product's own REQ client (Lazy Pirate, no retries) with the join's keys and token:
        an error reply comes back raised as the matching ``RequestError`` (``AuthError`` and so on)."""
        channel = ReqChannel(self.ctx, self.cluster.address.url(role), timeout=timeout, retries=0, curve=join.curve,
                             token=join.token)
        self.channels.append(channel)
        return channel

    def push(self, join: Join | None, msgs: list[protocol.Message | list[Any]]) -> zmq.Socket:
        """Send messages on the results socket (PUSH), each with the join's token unless it has one."""
        sock = self.socket(zmq.PUSH, "results", join)
        for msg in msgs:
            if isinstance(msg, protocol.Message):
                if msg.token is None and join is not None:
                    msg.token = join.token
                msg = wire.encode(msg)
            sock.send_multipart(msg)
        return sock

    def close_socket(self, sock: zmq.Socket) -> None:
        sock.close(linger=0)
        if sock in self.sockets:
            self.sockets.remove(sock)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        for sock in self.sockets:
            sock.close(linger=0)
        self.sockets.clear()
        self.ctx.term()

    def __enter__(self) -> "RawPeer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def register_msg(provider_id: str | None = None, **overrides: Any) -> protocol.Register:
    """A valid registration of a (fake) CPU provider."""
    fields = dict(provider_id=provider_id or uuid.uuid4().hex, name="raw-provider", platform="linux",
                  devices=[{"kind": "cpu", "name": "raw cpu", "memory_bytes": 1 << 30}],
                  memory_bytes=1 << 30, cores=1, slots=1, gflops=1.0, torch=False, task_types=["matmul", "noop"],
                  version="0")
    fields.update(overrides)
    return protocol.Register(**fields)


def secrets_of(join: Join) -> list[str]:
    """The strings of a join that must never show up in a log: its token, its secret key, the join itself."""
    return [join.token, join.secret, join.encode()]


def clean_env() -> dict[str, str]:
    """This process's environment without ZCOMPUTE_* (for CLI subprocesses)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ZCOMPUTE_")}


def wait_counted(admin: Client, before: dict[str, Any], keys: str | tuple[str, ...], at_least: int,
                 timeout: float = 10.0) -> dict[str, Any]:
    """Poll the head's counters until the deltas of ``keys`` reach ``at_least``; return those counters."""
    import time

    keys = (keys,) if isinstance(keys, str) else keys
    deadline = time.monotonic() + timeout
    while True:
        now = admin.stats()
        if delta(before, now, *keys) >= at_least:
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"{'+'.join(keys)} rose by {delta(before, now, *keys)}, expected >= {at_least} "
                                 f"within {timeout}s; counters: {now}")
        time.sleep(0.05)
