"""Every performance target in one run, one table: what was measured against what it must beat.

    python bench/run.py [--quick] [--only matmul tiny dataplane memory scale train] [--readme]
    make bench                     (the same, full length, and README.md's table updated)

The benchmarks run one after another, so none shares the cores with another, each with its own
defaults (``--quick``: smaller sizes and shorter durations, for a look rather than a figure):

  matmul     bench/matmul.py     zcompute vs numpy (2 BLAS threads) and Dask distributed
  tiny       bench/tiny.py       no-op shards per second through the whole path, and Dask's
  dataplane  bench/dataplane.py  a 256 MiB array head -> provider vs raw pyzmq over the same transport
  memory     bench/memory.py     peak RSS of head and provider for an 8192^2 float32 matmul
  scale      bench/scale.py      1,000 simulated providers on one head (5 minutes unless --quick)
  train      bench/train.py      data-parallel training vs single-process torch and torch DDP

Each writes its raw figures to bench/results/NAME.json; this script adds summary.json and
summary.md (the table below, with the BLAS kernel and the cores), and with ``--readme`` puts the
table into README.md between its ``bench:start`` and ``bench:end`` markers. The machine's load
average is printed with the table: a busy machine makes every ratio worse.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, clean_blas_env, machine, own_environ  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"
Row = dict[str, Any]


def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def matmul_targets(rows: list[Row]) -> list[Row]:
    out = []
    for r in rows:
        if r.get("target_vs_2t"):
            out.append(_target(f"matmul {r['n']}² f32, split {r['splits']}: time / numpy 2 threads",
                               r["ratio_vs_2t"], f"≤ {r['target_vs_2t']}", r["ratio_vs_2t"] <= r["target_vs_2t"],
                               f"{_f(r['cluster_s'], 3)} s vs {_f(r['numpy_2t_s'], 3)} s; arrays over tcp "
                               f"(--no-local-data) {_f(r['wire_s'], 3)} s = {_f(r['wire_vs_2t'])}×"
                               + ("" if r.get("floor_vs_2t") is None else
                                  f"; the split's compute alone (no cluster) {_f(r['floor_vs_2t'])}×")
                               + ("" if r.get("steal_cores") is None else
                                  f"; hypervisor steal {_f(r['steal_cores'])} cores")))
        if r.get("dask_s") is not None and r["n"] == max(x["n"] for x in rows):
            out.append(_target(f"matmul {r['n']}² f32, split {r['splits']}: Dask time / zcompute time",
                               r["dask_over_cluster"], "≥ 2", r["dask_over_cluster"] >= 2,
                               f"Dask {_f(r['dask_s'], 3)} s; over tcp {_f(r['dask_over_wire'])}×"))
    return out


def tiny_targets(rows: list[Row]) -> list[Row]:
    r = rows[0]
    ref = f"Dask {r['dask_per_s']:.0f}/s ({_f(r['vs_dask'], 1)}×)" if r.get("dask_per_s") else "Dask not run"
    if r.get("steal_cores") is not None:
        ref += f"; hypervisor steal {_f(r['steal_cores'])} cores during zcompute's run"
    return [_target(f"tiny shards per second, {r['providers']} providers, whole path", r["zcompute_per_s"],
                    f"≥ {r['target_per_s']}", r["zcompute_per_s"] >= r["target_per_s"], ref, digits=0)]


def _target(name: str, measured: float, goal: str, met: bool, reference: str = "", digits: int = 2) -> Row:
    return {"target": name, "measured": round(measured, digits), "goal": goal, "met": bool(met),
            "reference": reference}


def generic_targets(rows: list[Row]) -> list[Row]:
    """Benchmarks whose rows already say target / measured / goal / met."""
    return [_target(r["target"], r["measured"], r["goal"], r["met"], r.get("reference", ""), r.get("digits", 2))
            for r in rows if "target" in r]


def memory_targets(rows: list[Row]) -> list[Row]:
    out = []
    for r in rows:
        if r.get("target_mib"):
            what = "the job's A+B+C" if r["process"] == "head" else "its largest shard (A rows + B band + C block)"
            data = {"local": "files in place", "wire": "arrays over tcp"}.get(r.get("data", "local"))
            out.append(_target(f"matmul 8192² f32 split {r['splits']} ({data}): {r['process']} peak RSS / {what}",
                               r["peak_mib"] / r["budget_mib"], "< 2", r["peak_mib"] < r["target_mib"],
                               f"{r['peak_mib']:.0f} MiB of {r['target_mib']:.0f} allowed"))
    return out


def scale_targets(rows: list[Row]) -> list[Row]:
    """Rows of bench/scale.py that carry a target (metric, target, measured, unit, ok); the rest beside."""
    figures = {r["metric"]: r for r in rows}
    out = []
    steal = figures.get("CPU taken by the hypervisor, idle / shards")
    for r in rows:
        if r.get("target") and r.get("ok"):
            out.append(_target(f"scale: {r['metric']}" + (f" ({r['unit']})" if r.get("unit") else ""),
                               float(r["measured"]), r["target"], r["ok"] == "yes",
                               f"hypervisor steal, idle / shards: {steal['measured']} cores"
                               if steal and r["metric"].startswith("heartbeat p99") else ""))
    info = [m for m in ("head RSS per provider", "head CPU per provider, idle", "shards per second") if m in figures]
    if out and info:
        out[-1]["reference"] = "; ".join(f"{m} {figures[m]['measured']:.3g} {figures[m]['unit']}" for m in info)
    return out


def train_targets(rows: list[Row]) -> list[Row]:
    out = []
    for r in rows:
        if r["method"] == "zcompute":
            out.append(_target(f"train {r['workload']}: s/epoch vs torch DDP (information: no target here)",
                               r["vs_ddp"], "—", True, f"vs single process {_f(r['vs_single'])}×"))
    return out


#: name -> (summary of its rows, arguments for --quick)
BENCHES: dict[str, tuple[Callable[[list[Row]], list[Row]], list[str]]] = {
    "matmul": (matmul_targets, ["--sizes", "1024", "2048", "--repeat", "1"]),
    "tiny": (tiny_targets, ["--shards", "5000", "--repeat", "1"]),
    "dataplane": (generic_targets, ["--quick"]),
    "memory": (memory_targets, ["--n", "4096", "--splits", "2x1"]),
    "scale": (scale_targets, ["--providers", "200", "--duration", "30"]),
    "train": (train_targets, ["--workloads", "digits", "--epochs", "3"]),
}
DEFAULT = ["matmul", "tiny", "dataplane", "memory", "scale"]


def markdown(table: list[Row], info: dict[str, Any], load: tuple[float, float]) -> str:
    lines = [f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} on {info['cores']} cores, BLAS {info['blas']}, "
             f"load average {load[0]:.1f} before and {load[1]:.1f} after (`make bench`; raw figures in "
             "`bench/results/`).", "",
             "| target | measured | goal | met | reference, same run |", "| --- | --- | --- | --- | --- |"]
    for t in table:
        lines.append(f"| {t['target']} | {t['measured']} | {t['goal']} | {'yes' if t['met'] else '**no**'} | "
                     f"{t['reference']} |")
    return "\n".join(lines) + "\n"


def update_readme(text: str) -> None:
    readme = README.read_text()
    pattern = re.compile(r"(<!-- bench:start -->\n).*?(<!-- bench:end -->)", re.S)
    if not pattern.search(readme):
        raise SystemExit("README.md has no <!-- bench:start --> ... <!-- bench:end --> section")
    README.write_text(pattern.sub(lambda m: m.group(1) + text + m.group(2), readme))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller and shorter runs (a look, not a figure)")
    p.add_argument("--only", nargs="+", choices=sorted(BENCHES), default=DEFAULT)
    p.add_argument("--readme", action="store_true", help="put the table into README.md")
    args = p.parse_args()
    clean_blas_env()
    load_before = os.getloadavg()
    table: list[Row] = []
    for name in args.only:
        summarize, quick = BENCHES[name]
        module = importlib.import_module(f"bench.{name}")
        bench_args = module.parser().parse_args(quick if args.quick else [])
        print(f"\n=== {name} {' '.join(quick) if args.quick else ''}", flush=True)
        try:
            with own_environ():  # no benchmark's settings reach the next one's processes
                table.extend(summarize(module.run(bench_args)))
        except Exception as e:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            table.append(_target(f"{name}: did not finish ({type(e).__name__}: {e})", float("nan"), "—", False))
    load = (load_before[0], os.getloadavg()[0])
    info = machine()
    text = markdown(table, info, load)
    print("\n" + text)
    (RESULTS / "summary.md").write_text(text)
    (RESULTS / "summary.json").write_text(json.dumps({"machine": info, "quick": args.quick, "load": load,
                                                      "targets": table}, indent=2) + "\n")
    if args.readme:
        update_readme(text)
        print("README.md updated")


if __name__ == "__main__":
    main()
