"""Keep the Mac awake while the provider holds work: ``caffeinate -i -w PID``, and only then.

``KeepAwake`` is a small state machine driven by ``update()``: when ``busy()`` turns true it spawns
caffeinate (which also exits by itself when this process dies: ``-w``); when ``busy()`` has been false
for ``idle_grace`` seconds it stops it, so an idle provider lets the Mac sleep. Both the spawn and the
probe are injected, so the logic is tested on any platform.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from functools import partial
from typing import Any, Callable

from common.logs import get_logger

CAFFEINATE = "/usr/bin/caffeinate"
log = get_logger("provider.keepawake")


def _popen(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class KeepAwake:
    def __init__(self, busy: Callable[[], bool], spawn: Callable[[list[str]], Any] | None = None, *,
                 pid: int | None = None, idle_grace: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 command: str = CAFFEINATE):
        self.busy, self.spawn, self.clock = busy, spawn or _popen, clock
        self.argv = [command, "-i", "-w", str(pid or os.getpid())]  # -i: no idle sleep; -w: until PID exits
        self.idle_grace = idle_grace  # shards of one job arrive back to back: do not flap between them
        self.proc: Any = None
        self.disabled = False
        self._idle_since: float | None = None

    @property
    def holding(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def update(self) -> None:
        """One step: hold the assertion while busy, release it after ``idle_grace`` seconds idle."""
        if self.busy():
            self._idle_since = None
            if not self.holding and not self.disabled:
                self._hold()
        elif self.proc is not None:
            now = self.clock()
            self._idle_since = now if self._idle_since is None else self._idle_since
            if now - self._idle_since >= self.idle_grace:
                self.release()

    def _hold(self) -> None:
        try:
            self.proc = self.spawn(self.argv)
        except OSError as e:  # no caffeinate (not macOS, or a stripped system): run without it
            self.disabled = True
            log.warning("keepawake.unavailable", command=self.argv[0], error=str(e))
            return
        log.info("keepawake.on", command=" ".join(self.argv))

    def release(self) -> None:
        proc, self.proc, self._idle_since = self.proc, None, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.info("keepawake.off")

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        try:
            while not stop.wait(interval):
                self.update()
        finally:
            self.release()

    def start(self, stop: threading.Event, interval: float = 1.0) -> threading.Thread:
        thread = threading.Thread(target=partial(self.run, stop, interval), name="keep-awake", daemon=True)
        thread.start()
        return thread


def keep_awake(provider, interval: float = 1.0) -> threading.Thread:
    """The provider hook: awake while shards run or results wait for the head's acknowledgement."""
    return KeepAwake(busy=lambda: not provider.book.idle).start(provider.stop_event, interval)
