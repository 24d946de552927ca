"""Ctrl-C, Ctrl-Break and closing the console window drain the provider (Windows).

Windows sends console events to a handler thread (``SetConsoleCtrlHandler``), not signals. Ctrl-C
and Ctrl-Break ask the provider to drain, a second one stops it at once (as SIGINT does elsewhere).
Closing the window, logging off or shutting down gives a process about 5 seconds before Windows
ends it: the handler drains for most of that, then stops at once so the provider still deregisters
(the head requeues its shards immediately instead of after ``--dead-after``).

Importable everywhere; ``install`` does nothing off Windows unless given a ``kernel32`` (tests).
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from typing import Any, Callable

from common.logs import get_logger

CTRL_C, CTRL_BREAK, CTRL_CLOSE, CTRL_LOGOFF, CTRL_SHUTDOWN = 0, 1, 2, 5, 6
ENDING = {CTRL_CLOSE, CTRL_LOGOFF, CTRL_SHUTDOWN}
CLOSE_BUDGET = 4.5  # seconds Windows allows after a close event (it waits 5 s, then ends the process)
DEREGISTER_TIME = 1.2  # kept from the budget for the immediate stop: deregistration waits up to 1 s
log = get_logger("provider.console")


def make_handler(stop: Callable[[], None], stopped: threading.Event, *, budget: float = CLOSE_BUDGET,
                 deregister_time: float = DEREGISTER_TIME, sleep: Callable[[float], None] = time.sleep
                 ) -> Callable[[int], bool]:
    """The handler's logic: True means handled (Windows runs no other handler for it)."""

    def handler(event: int) -> bool:
        if event in (CTRL_C, CTRL_BREAK):
            stop()  # first: drain; second: stop now (Provider.stop)
            return True
        if event in ENDING:
            log.info("console.closing", ctrl_event=event)
            stop()
            if not stopped.wait(max(0.0, budget - deregister_time)):
                stop()  # no time left to finish shards: stop now, still deregistering
                sleep(deregister_time)
            return True
        return False

    return handler


def install(provider: Any, kernel32: Any = None, factory: Callable | None = None) -> Callable | None:
    """Register the handler for ``provider`` (its ``stop()`` and ``stop_event``); None off Windows.

    Returns the registered callback; it must stay referenced while the process runs.
    """
    if kernel32 is None:
        if sys.platform != "win32":
            return None
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    if factory is None:
        factory = getattr(ctypes, "WINFUNCTYPE", ctypes.CFUNCTYPE)(ctypes.c_int, ctypes.c_uint)
    callback = factory(make_handler(provider.stop, provider.stop_event))
    if not kernel32.SetConsoleCtrlHandler(callback, True):
        log.warning("console.handler_failed", error=ctypes.get_last_error() if sys.platform == "win32" else 0)
        return None
    _keep.append(callback)
    return callback


_keep: list[Callable] = []  # a ctypes callback that is garbage-collected crashes the process when called
