"""Shared benchmark plumbing: a clean BLAS environment, timing, and the results table."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

RESULTS = Path(__file__).parent / "results"
_BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def clean_blas_env() -> None:
    """Re-exec without the machine's OpenBLAS core-type override (it slows a current numpy).

    Only the benchmark's own process tree is affected; tests and CI keep the variable.
    """
    if any(v in os.environ for v in _BLAS_ENV):
        env = {k: v for k, v in os.environ.items() if k not in _BLAS_ENV}
        env["ZCOMPUTE_BENCH_BLAS_OVERRIDE_WAS"] = os.environ.get("OPENBLAS_CORETYPE", "")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


@contextlib.contextmanager
def own_environ() -> Iterator[None]:
    """``os.environ`` as it was, again on leaving. Dask's LocalCluster leaves its workers' settings in its
    parent's environment (``MALLOC_TRIM_THRESHOLD_=65536``, ``OMP/MKL/OPENBLAS_NUM_THREADS=1``,
    ``PYTHONHASHSEED``), and every process started later inherits them: a data-plane receiver whose
    glibc hands freed memory back at once moves half as many bytes a second, and a provider's peak
    RSS reads lower than a user's would."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def blas_info() -> str:
    from threadpoolctl import threadpool_info

    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    if not libs:
        return "unknown"
    # numpy's own (what np.matmul calls), not whichever was loaded first: scipy brings another OpenBLAS
    lib = next((i for i in libs if "numpy" in str(i.get("filepath", ""))), libs[0])
    return f"{lib.get('internal_api')} {lib.get('version')} ({lib.get('architecture')})"


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return typical(times)


def typical(times: list[float]) -> float:
    """The figure a table shows for repeated timings: the fastest of one or two, else the median."""
    return min(times) if len(times) < 3 else statistics.median(times)


def steal_s() -> float | None:
    """CPU seconds the hypervisor has taken from this machine since boot (Linux /proc/stat; None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")  # cpu user nice system idle iowait irq softirq steal
    except (OSError, IndexError, ValueError):
        return None


class Steal:
    """CPU the hypervisor takes from this machine, from the moment this is made."""

    def __init__(self) -> None:
        self.s0, self.t0 = steal_s(), time.monotonic()

    def cores(self) -> float | None:
        """Seconds taken per wall second so far (None where the kernel does not say)."""
        now = steal_s()
        return None if now is None or self.s0 is None else (now - self.s0) / (time.monotonic() - self.t0)


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "blas": blas_info(), "openblas_override_removed": os.environ.get("ZCOMPUTE_BENCH_BLAS_OVERRIDE_WAS")}


def print_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    print(f"\n{title}")
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "" if v is None else str(v)


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                **payload}, indent=2) + "\n")
    return path
