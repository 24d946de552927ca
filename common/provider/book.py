"""What a provider is doing, shared by its main loop, workers and heartbeat thread.

``running`` holds accepted task keys; ``outbox`` holds finished results
(successes and failures) until the head acknowledges them in a heartbeat reply.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from common import protocol


@dataclass
class _Sent:
    msg: protocol.Message
    sent_at: float


class TaskBook:
    def __init__(self, slots: int):
        self.slots = slots
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._cancelled: set[str] = set()
        self._outbox: dict[str, _Sent] = {}
        self.computed = 0  # shards finished by this process (a plain int: only workers add, under the lock)

    def start(self, key: str) -> bool:
        """Record an accepted task; False if we already hold it (a re-published assignment)."""
        with self._lock:
            if key in self._running or key in self._outbox:
                return False
            self._running.add(key)
            return True

    def finish(self, key: str, msg: protocol.Message) -> bool:
        """Move a task to the outbox; False when it was cancelled meanwhile (drop the result)."""
        with self._lock:
            self._running.discard(key)
            if not isinstance(msg, protocol.Ok):  # Ok marks a task dropped before it ran
                self.computed += 1
            if key in self._cancelled:
                self._cancelled.discard(key)
                return False
            self._outbox[key] = _Sent(msg, time.monotonic())
            return True

    def cancel(self, key: str) -> None:
        with self._lock:
            if key in self._running:
                self._cancelled.add(key)
            self._outbox.pop(key, None)

    def is_cancelled(self, key: str) -> bool:
        with self._lock:
            return key in self._cancelled

    def acknowledge(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._outbox.pop(key, None)

    def due(self, older_than: float) -> list[protocol.Message]:
        """Outbox results sent more than ``older_than`` seconds ago; marks them sent now."""
        now = time.monotonic()
        with self._lock:
            late = [s for s in self._outbox.values() if now - s.sent_at >= older_than]
            for s in late:
                s.sent_at = now
            return [s.msg for s in late]

    def snapshot(self) -> tuple[list[str], list[str], int]:
        """(running keys, outbox keys, free slots) for a heartbeat."""
        with self._lock:
            running = sorted(self._running - self._cancelled)
            return running, sorted(self._outbox), max(0, self.slots - len(self._running))

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._running)

    @property
    def idle(self) -> bool:
        """Nothing running and nothing awaiting the head's acknowledgement."""
        with self._lock:
            return not self._running and not self._outbox
