"""Terminal output: aligned tables and a shards progress bar."""

from __future__ import annotations

import contextlib
import datetime
from typing import Any, Callable, Iterator


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 1e9 else datetime.datetime.fromtimestamp(value).strftime("%H:%M:%S")
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "" if value is None else str(value)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Yield an ``on_progress(summary)`` callback drawing shards done / total with rate and ETA."""
    if not enabled:
        yield lambda summary: None
        return
    from tqdm import tqdm

    bar = tqdm(unit="shard", desc="shards", leave=True)
    try:
        def update(summary: dict[str, Any]) -> None:
            done, total = summary.get("progress_done", summary["done"]), summary.get("progress_total", summary["total"])
            unit = summary.get("progress_unit", "shard")
            if bar.total != total or bar.unit != unit:
                bar.total, bar.unit, bar.desc = total, unit, f"{unit}s"
                bar.refresh()
            bar.update(done - bar.n)
        yield update
    finally:
        bar.close()
