"""Arrays a provider keeps between shards (a job's B for every row shard, a training data shard),
so the head sends them once. Least recently used first out, within a byte budget."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class ArrayCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self.bytes = 0

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
            return arr

    def put(self, key: str, arr: np.ndarray) -> None:
        if arr.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            self._items[key] = arr
            self.bytes += arr.nbytes
            while self.bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.bytes -= evicted.nbytes

    def forget_jobs(self, job_ids: list[str]) -> None:
        """Drop every array of these (finished) jobs; keys start with ``JOB_ID/``."""
        prefixes = tuple(f"{j}/" for j in job_ids)
        with self._lock:
            for key in [k for k in self._items if k.startswith(prefixes)]:
                self.bytes -= self._items.pop(key).nbytes

    def __len__(self) -> int:
        return len(self._items)
