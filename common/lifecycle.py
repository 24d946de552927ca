"""Process helpers: free ports for a local cluster, and exiting when the parent dies."""

from __future__ import annotations

import os
import random
import socket
import threading
from typing import Callable

from common.config import SOCKET_ROLES

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
