"""Process helpers: free ports for a local cluster, exiting when the parent dies, one process per data dir."""

from __future__ import annotations

import os
import random
import socket
import threading
from pathlib import Path
from typing import Callable

from common.config import SOCKET_ROLES
from common.errors import ConfigError

if os.name == "nt":
    import msvcrt
else:
    import fcntl

PARENT_PID_ENV = "ZCOMPUTE_PARENT_PID"


# Below every common system's ephemeral range (Linux 32768-60999, Windows and macOS 49152-65535): a port
# picked here is not handed out meanwhile to some process's outgoing connection or bind to port 0, which is
# how a test cluster once lost its port between the check below and the head's bind.
PORT_RANGE = (20000, 32767)


def free_port_base(host: str = "127.0.0.1", count: int = len(SOCKET_ROLES), tries: int = 200) -> int:
    """A port base with ``count`` consecutive free ports (checked by binding; only an explicit bind to the
    same port by another process in between can still take one)."""
    low, high = PORT_RANGE
    for _ in range(tries):
        base = random.randint(low, high - count)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise OSError(f"no {count} consecutive free ports found on {host}")


def watch_parent(on_orphaned: Callable[[], None], interval: float = 0.5) -> None:
    """Call ``on_orphaned`` once the process named by ``ZCOMPUTE_PARENT_PID`` is gone.

    A local cluster's head and providers use this so a killed parent leaves nothing running.
    """
    text = os.environ.get(PARENT_PID_ENV)
    if not text or not text.isdigit():
        return
    parent = int(text)

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(interval):
            if os.getppid() != parent:
                on_orphaned()
                return

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


LOCK_FILE = "lock"


class DataDirLock:
    """This process's hold on a data dir: two heads on one would share a journal, and the second would
    rewrite the token that proves a peer is on this machine; two providers would share an identity. The
    lock is the OS's (``flock``; ``msvcrt.locking`` on Windows), so it goes with the process however that
    ends; the file keeps the holder's pid for the message."""

    def __init__(self, directory: Path, role: str):
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LOCK_FILE
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _lock(self._fd)
        except OSError:
            os.close(self._fd)
            self._fd = None
            holder = _holder(path)
            raise ConfigError(f"{directory} is in use by another {role}{holder}; "
                              f"give this one a --data-dir of its own") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def _lock(fd: int) -> None:
    if os.name == "nt":
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
