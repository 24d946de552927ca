"""Peak memory of the head and the providers for one large matmul, against the targets.

    python bench/memory.py [--n 8192] [--splits 2x1 4x1 2x2] [--providers 2]

Targets: the head's peak RSS stays under 2 x (the job's input + output bytes); a provider's
under 2 x its shard's bytes, where a shard's bytes are its A row block + the B (column) block it
multiplies by + the C block it produces (the largest such shard the provider ran).

Each split runs on a fresh ``LocalCluster`` (insecure, 1 BLAS thread per provider), so no job
leaves heap behind for the next. Peaks are the kernel's ``VmHWM``, reset after start-up
(``/proc/PID/clear_refs``); "base" is ``VmRSS`` after start-up (python, numpy, zmq imported).
RSS counts file pages the process maps, so the head's memory-mapped job files count too; a
sampler (every ~10 ms) splits the peak into anonymous and file-backed memory and per phase
(submit, run, fetch). The client's own peak is shown for information (it holds A, B and C).
Writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, clean_blas_env, machine, print_table, save  # noqa: E402

MIB = 1024**2
_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
COLUMNS = ["data", "splits", "process", "shards", "b_bands", "budget", "budget_mib", "target_mib", "base_mib", "peak_mib",
           "peak_minus_base_mib", "anon_at_peak_mib", "file_at_peak_mib", "submit_mib", "run_mib", "fetch_mib",
           "ok"]


def proc_status(pid: int | str) -> dict[str, int]:
    """``VmRSS``, ``VmHWM``, ``RssAnon``, ``RssFile`` of a process, in bytes (empty once it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in _FIELDS:
                    out[key] = int(value.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def reset_peak(pid: int | str) -> bool:
    """Reset the kernel's peak RSS (``VmHWM``) of a process we own to its current RSS."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Sampler(threading.Thread):
    """Samples RSS of some processes; keeps, per process and phase, the largest sample."""

    def __init__(self, pids: dict[str, int | str], interval: float = 0.01):
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.phase = "idle"
        self.peaks: dict[tuple[str, str], dict[str, int]] = {}
        self.overall: dict[str, dict[str, int]] = {}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            for name, pid in self.pids.items():
                s = proc_status(pid)
                if "VmRSS" not in s:
                    continue
                for key, table in (((name, self.phase), self.peaks), (name, self.overall)):
                    if s["VmRSS"] > table.get(key, {}).get("VmRSS", -1):
                        table[key] = s
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


def shard_bytes(params: dict[str, Any], k: int, itemsize: int) -> int:
    """A row block + B column block + C block of one matmul shard."""
    (r0, r1), (c0, c1) = params["rows"], params["cols"]
    return itemsize * ((r1 - r0) * k + k * (c1 - c0) + (r1 - r0) * (c1 - c0))


def _shards_by_provider(handle, grid: tuple[int, int], n: int) -> dict[str, list[dict[str, Any]]]:
    """Per provider id, the shards it was sent (from the job's event log), with their bounds."""
    from common.tasks.matmul import block_bounds

    events, offset = [], 0
    while True:
        batch, offset = handle.events(offset)
        if not batch:
            break
        events += batch
    ran: dict[str, set[int]] = {}
    for e in events:  # a re-published assignment is the same shard again
        if e.get("event") in ("assign", "republish", "speculate") and e.get("provider_id"):
            ran.setdefault(e["provider_id"], set()).add(int(e["task_id"].rpartition(".")[2]))
    rows, cols = block_bounds(n, grid[0]), block_bounds(n, grid[1])
    return {pid: [{"index": i, "rows": rows[i // grid[1]], "cols": cols[i % grid[1]]} for i in sorted(idx)]
            for pid, idx in ran.items()}


def measure_split(n: int, splits: str, providers: int, a, b, timeout: float,
                  data: str = "local") -> tuple[list[dict], dict]:
    """One fresh cluster, one job; returns rows (one per process) and details."""
    import numpy as np

    from common.tasks.matmul import parse_splits
    from user_client import LocalCluster

    grid = parse_splits(splits)
    itemsize = a.dtype.itemsize
    job_bytes = a.nbytes + b.nbytes + n * n * itemsize
    head_args = ["--no-local-data"] if data == "wire" else []
    with LocalCluster(providers, blas_threads=1, insecure=True, head_args=head_args) as cluster, \
            cluster.client(timeout=timeout) as c:
        time.sleep(1.0)  # let start-up settle (provider GFLOP/s probe, first heartbeats)
        pids: dict[str, int | str] = {"head": cluster.head.pid,
                                      **{f"provider-{i}": p.pid for i, p in enumerate(cluster.providers)},
                                      "client": "self"}
        base = {name: proc_status(pid) for name, pid in pids.items()}
        peaks_reset = all([reset_peak(pid) for pid in pids.values()])
        sampler = Sampler(pids)
        sampler.start()
        phases: dict[str, float] = {}
        try:
            t0 = time.perf_counter()
            sampler.phase = "submit"
            handle = c.matmul(a, b, splits=splits)
            phases["submit_s"] = time.perf_counter() - t0
            sampler.phase = "run"
            handle.wait(timeout=timeout)
            phases["run_s"] = time.perf_counter() - t0 - phases["submit_s"]
            sampler.phase = "fetch"
            result = handle.result(timeout=timeout)
            phases["fetch_s"] = time.perf_counter() - t0 - phases["submit_s"] - phases["run_s"]
            sampler.phase = "after"
            time.sleep(0.1)
        finally:
            sampler.stop()
        after = {name: proc_status(pid) for name, pid in pids.items()}
        rng = np.random.default_rng(1)
        check = np.sort(rng.choice(n, 16, replace=False))
        correct = bool(np.allclose(result[check], a[check] @ b, rtol=1e-3, atol=1e-2))
        store = cluster.data_dir / "head" / "jobs" / handle.id / "out-c.npy"
        on_disk = np.load(store, mmap_mode="r", allow_pickle=False) if store.exists() else None
        stored = on_disk is not None and bool(np.array_equal(on_disk[check], result[check]))
        del on_disk, result
        summary = handle.status()
        names = {p["provider_id"]: p["name"] for p in c.providers()}
        ran = _shards_by_provider(handle, grid, n)

    rows = []
    for name in pids:
        peak = after[name].get("VmHWM", 0)
        at_peak = sampler.overall.get(name, {})
        row = {"splits": splits, "process": name, "base_mib": base[name]["VmRSS"] / MIB, "peak_mib": peak / MIB,
               "peak_minus_base_mib": (peak - base[name]["VmRSS"]) / MIB,
               "anon_at_peak_mib": at_peak.get("RssAnon", 0) / MIB,
               "file_at_peak_mib": at_peak.get("RssFile", 0) / MIB,
               **{f"{ph}_mib": sampler.peaks.get((name, ph), {}).get("VmRSS", 0) / MIB
                  for ph in ("submit", "run", "fetch")}}
        if name == "head":
            row.update(budget="A+B+C", budget_mib=job_bytes / MIB, shards=summary["total"])
        elif name.startswith("provider"):
            idx = name.rpartition("-")[2]
            mine = next((s for pid, s in ran.items() if names.get(pid) == f"local-{idx}"), [])
            biggest = max((shard_bytes(s, a.shape[1], itemsize) for s in mine), default=0)
            # more than one B column band: it also keeps the band it cached for an earlier shard
            row.update(budget="a_blk+b_blk+c_blk", budget_mib=biggest / MIB,
                       shards=",".join(str(s["index"]) for s in mine),
                       b_bands=len({tuple(s["cols"]) for s in mine}))
        else:
            row.update(budget="(info)", budget_mib=None)
        if row["budget_mib"]:
            row["target_mib"] = 2 * row["budget_mib"]
            row["ok"] = "yes" if row["peak_mib"] < row["target_mib"] else "NO"
        rows.append(row)
    details = {"splits": splits, **phases, "correct_sampled_rows": correct, "store_holds_result": stored,
               "peaks_reset_after_startup": peaks_reset, "speculated": summary.get("speculated"),
               "reruns": summary.get("reruns"), "shards_by_provider": summary.get("shards_by_provider")}
    return rows, details


DEFAULTS = {"n": 8192, "splits": ["2x1", "4x1", "2x2"], "providers": 2, "timeout": 600.0, "data": ["local", "wire"]}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The table's rows, one per process and split; per-split details go to ``args.details``.

    Missing attributes of ``args`` take ``DEFAULTS`` (an aggregate runner may pass its own namespace).
    """
    import numpy as np

    opts = {k: getattr(args, k, v) for k, v in DEFAULTS.items()}
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    n = opts["n"]
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    rows, details = [], []
    for data in opts["data"]:
        for splits in opts["splits"]:
            r, d = measure_split(n, splits, opts["providers"], a, b, opts["timeout"], data)
            rows += [{**row, "data": data} for row in r]
            details.append({**d, "data": data})
    args.details = details
    args.loadavg = (load_before, os.getloadavg())
    save("memory", {"rows": rows, "details": details, "loadavg_before": load_before,
                    "loadavg_after": args.loadavg[1],
                    "args": {k: v for k, v in vars(args).items() if k not in ("details", "loadavg")}})
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=DEFAULTS["n"])
    p.add_argument("--splits", nargs="+", default=DEFAULTS["splits"])
    p.add_argument("--providers", type=int, default=DEFAULTS["providers"])
    p.add_argument("--timeout", type=float, default=DEFAULTS["timeout"])
    p.add_argument("--data", nargs="+", choices=["local", "wire"], default=DEFAULTS["data"],
                   help="local: the default, peers use the head's files in place (PROTOCOL.md 6.9); "
                        "wire: the head started --no-local-data, every array crosses a socket")
    return p


def main() -> None:
    args = parser().parse_args()
    clean_blas_env()
    rows = run(args)
    load_before, load_after = args.loadavg
    info = machine()
    print(f"cores {info['cores']}, {args.providers} providers x 1 BLAS thread, {args.n}x{args.n} float32, "
          f"load {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print_table("peak RSS (MiB) against the targets (target = 2 x budget; file = memory-mapped pages)", rows,
                COLUMNS)
    for d in args.details:
        print(f"  {d['data']} {d['splits']}: submit {d['submit_s']:.1f}s run {d['run_s']:.1f}s fetch {d['fetch_s']:.1f}s, "
              f"result correct (sampled rows) {d['correct_sampled_rows']}, in the head's store "
              f"{d['store_holds_result']}, speculated {d['speculated']}, reruns {d['reruns']}")
    print(f"\nwrote {RESULTS / 'memory.json'}")


if __name__ == "__main__":
    main()
