"""``LocalCluster``: a head node and providers as child processes on this machine.

It picks free ports, keeps state in a temporary data dir, waits until every
provider is ready, and stops everything it started on exit, on Ctrl-C, and
(through a parent watchdog in the children) when this process is killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common.config import HeadAddress
from common.errors import ZComputeError
from common.lifecycle import PARENT_PID_ENV, free_port_base
from user_client.client import Client


class LocalCluster:
    def __init__(self, providers: int = 2, *, slots: int = 1, blas_threads: int = 1, insecure: bool = False,
                 data_dir: str | Path | None = None, heartbeat_interval: float = 0.5, dead_after: float = 5.0,
                 log_level: str = "warning", head_args: list[str] | None = None,
                 provider_args: list[str] | None = None, env: dict[str, str] | None = None,
                 start_timeout: float = 60.0, host: str = "127.0.0.1", http_port: int = 0):
        self.n_providers, self.slots, self.blas_threads = providers, slots, blas_threads
        self.insecure, self.heartbeat_interval, self.dead_after = insecure, heartbeat_interval, dead_after
        self.log_level, self.start_timeout, self.host, self.http_port = log_level, start_timeout, host, http_port
        self.head_args, self.provider_args = head_args or [], provider_args or []
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="zcompute-"))
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("ZCOMPUTE_")}  # ours, not the shell's
        # ZCOMPUTE_CONFIG=none: a developer's ~/.zcompute/zcompute.toml must not change a local cluster
        self.env = {**inherited, "ZCOMPUTE_CONFIG": "none", **(env or {}), PARENT_PID_ENV: str(os.getpid())}
        self.env.setdefault("OMP_NUM_THREADS", str(blas_threads))
        self.head: subprocess.Popen | None = None
        self.providers: list[subprocess.Popen] = []
        self.address: HeadAddress | None = None
        self.keystore = None
        self.admin_join = ""

    # -- processes -----------------------------------------------------------

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
               wrapper: list[str] | None = None) -> subprocess.Popen:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as log:
            # own session: a terminal's Ctrl-C reaches only us, and we stop the children in order
            return subprocess.Popen([*(wrapper or []), sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                    env={**self.env, **(env or {})},
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.data_dir / "logs" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def start(self) -> "LocalCluster":
        base = free_port_base(self.host)
        self.address = HeadAddress(self.host, base)
        if not self.insecure:  # throw-away keys and tokens, made before the head starts
            from head_node.keystore import KeyStore

            self.keystore = KeyStore(self.data_dir / "head")
            self.keystore.init(self.address)
            self.admin_join = (self.data_dir / "head" / "admin.join").read_text().strip()
        self.start_head()
        for _ in range(self.n_providers):
            self.add_provider()
        try:
            self.wait_for_providers(self.n_providers, self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_head(self) -> subprocess.Popen:
        """Start the head (again, after ``kill_head``: same ports, same data dir, so it recovers its jobs)."""
        self.head = self._spawn("head", [
            "-m", "head_node", "start", "--data-dir", str(self.data_dir / "head"), "--bind", self.host,
            "--port-base", str(self.address.base), "--dead-after", str(self.dead_after),
            "--http-port", str(self.http_port),
            "--log-level", self.log_level, "--log-json", "--heartbeat-interval", str(self.heartbeat_interval),
            *(["--insecure"] if self.insecure else []), *self.head_args])
        return self.head

    def kill_head(self) -> None:
        """SIGKILL the head, as a crash would."""
        self.head.kill()
        self.head.wait()

    def add_provider(self, *extra: str, env: dict[str, str] | None = None,
                     wrapper: list[str] | None = None) -> subprocess.Popen:
        """Start one more provider process (it gets its own data dir, so its own id).

        ``wrapper`` prefixes the command (``["ip", "netns", "exec", "ns1"]`` runs it in a namespace).
        """
        i = len(self.providers)
        env = dict(env or {})
        if not self.insecure:  # the join travels in the environment, not on the command line
            env.setdefault("ZCOMPUTE_JOIN", self.invite("provider", f"local-{i}"))
        proc = self._spawn(f"provider-{i}", [
            "-m", "common.provider", "start", "--head", str(self.address),
            "--data-dir", str(self.data_dir / f"provider-{i}"), "--name", f"local-{i}",
            "--slots", str(self.slots), "--blas-threads", str(self.blas_threads),
            "--log-level", self.log_level, "--log-json", "--heartbeat-interval", str(self.heartbeat_interval),
            *(["--insecure"] if self.insecure else []), *self.provider_args, *extra], env=env, wrapper=wrapper)
        self.providers.append(proc)
        return proc

    def wait_for_providers(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Block until ``count`` providers are ready; raise with the children's logs if not."""
        deadline = time.monotonic() + timeout
        with self.client(timeout=2.0, retries=0) as c:
            while True:
                if self.head is not None and self.head.poll() is not None:
                    raise ZComputeError(f"head node exited with code {self.head.returncode}:\n{self.log_tail('head')}")
                try:
                    ready = [p for p in c.providers() if p["state"] == "ready"]
                except ZComputeError:
                    ready = []
                if len(ready) >= count:
                    return ready
                if time.monotonic() > deadline:
                    raise ZComputeError(f"only {len(ready)} of {count} providers ready after {timeout}s; "
                                        f"head log:\n{self.log_tail('head')}\nprovider-0 log:\n"
                                        f"{self.log_tail('provider-0')}")
                time.sleep(0.05)

    def invite(self, role: str, name: str, ttl: float = 7 * 86400) -> str:
        """A join string for this cluster (secured clusters only)."""
        return self.keystore.invite(role, name, ttl, self.address).encode()

    def client(self, join: str | None = None, **kwargs: Any) -> Client:
        """A client; by default with the cluster's admin credentials."""
        if self.address is None:
            raise ZComputeError("the local cluster is not started")
        if self.insecure:
            return Client(self.address, insecure=True, **kwargs)
        return Client(self.address, join=join or self.admin_join, **kwargs)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM providers (they drain and deregister while the head still answers), then the head;
        SIGKILL whatever lingers past ``timeout``."""
        for group in (self.providers, [self.head] if self.head is not None else []):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for proc in group:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
