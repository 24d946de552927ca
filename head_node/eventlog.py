"""Each job's events as JSON lines in ``DATA_DIR/jobs/JOB_ID/events.jsonl``:
submit, assign, accept, result, retry, speculate, finish (and drop for fenced results)."""

from __future__ import annotations

import json
import math
import time
from json.encoder import encode_basestring_ascii as _quote
from pathlib import Path
from typing import IO, Any


def _line(job_id: str, event: str, fields: dict[str, Any]) -> str:
    """The event as one JSON line, as ``json.dumps`` writes it; strings and numbers (three events a shard,
    thousands of shards a second) skip the general encoder, which costs twice as much."""
    parts = [f'{{"time": {round(time.time(), 6)!r}, "event": {_quote(event)}, "job_id": {_quote(job_id)}']
    for key, value in fields.items():
        kind = type(value)
        if kind is str:
            text = _quote(value)
        elif kind is int or (kind is float and math.isfinite(value)):
            text = repr(value)
        else:
            text = json.dumps(value)
        parts.append(f", {_quote(key)}: {text}")
    parts.append("}\n")
    return "".join(parts)


class EventLog:
    def __init__(self, jobs_dir: Path):
        self.jobs_dir = jobs_dir
        self._open: dict[str, IO[str]] = {}

    def _file(self, job_id: str) -> IO[str]:
        f = self._open.get(job_id)
        if f is None:
            path = self.jobs_dir / job_id / "events.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            f = self._open[job_id] = open(path, "a", encoding="utf-8")
        return f

    def record(self, job_id: str, event: str, **fields: Any) -> None:
        self._file(job_id).write(_line(job_id, event, fields))

    def flush(self) -> None:
        """Called every tick: buffered writes reach the file within ~50 ms."""
        for f in self._open.values():
            f.flush()

    def close_job(self, job_id: str) -> None:
        f = self._open.pop(job_id, None)
        if f is not None:
            f.close()

    def close(self) -> None:
        for job_id in list(self._open):
            self.close_job(job_id)

    def read(self, job_id: str, offset: int = 0, limit: int = 1000) -> tuple[list[dict[str, Any]], int]:
        """Events from line ``offset`` on (at most ``limit``), and the offset after them."""
        f = self._open.get(job_id)
        if f is not None:
            f.flush()
        path = self.jobs_dir / job_id / "events.jsonl"
        if not path.exists():
            return [], offset
        events = []
        with open(path, encoding="utf-8") as src:
            for i, line in enumerate(src):
                if i < offset:
                    continue
                if len(events) >= limit:
                    break
                if line.endswith("\n"):  # a line still being written is left for the next read
                    events.append(json.loads(line))
        return events, offset + len(events)
