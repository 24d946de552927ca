"""Tiny tasks: shards that do almost nothing, through the whole path, on zcompute and on Dask distributed.

    python bench/tiny.py [--shards 20000] [--providers 2] [--repeat 3] [--no-dask]

zcompute: a LocalCluster of PROVIDERS providers runs one ``noop`` job of SHARDS shards; the time runs from
submit to the job's finish as the client sees it (plan, assign, compute, result, merge included), so the
figure is shards per second of the whole path. Dask: a distributed LocalCluster of PROVIDERS workers x 1
thread (processes) runs SHARDS no-op tasks submitted with ``client.map`` and gathered; the same count.
Writes bench/results/tiny.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, Steal, clean_blas_env, machine, own_environ, print_table, save  # noqa: E402

TARGET_PER_S = 5000


def _noop(i: int) -> int:
    return i


def zcompute_rate(shards: int, providers: int, repeat: int) -> list[float]:
    from user_client import LocalCluster

    rates = []
    with LocalCluster(providers, blas_threads=1, insecure=True) as cluster, cluster.client(timeout=120) as c:
        c.submit("noop", {"shards": 200}).wait(timeout=120)  # warm up: sockets, imports, first leases
        for _ in range(repeat):
            start = time.perf_counter()
            c.submit("noop", {"shards": shards}).wait(timeout=600)
            rates.append(shards / (time.perf_counter() - start))
    return rates


def dask_rate(shards: int, providers: int, repeat: int) -> list[float]:
    from dask.distributed import Client, LocalCluster

    rates = []
    with own_environ(), \
            LocalCluster(n_workers=providers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.gather(client.map(_noop, range(200), pure=False))  # warm up
        for _ in range(repeat):
            start = time.perf_counter()
            client.gather(client.map(_noop, range(shards), pure=False))
            rates.append(shards / (time.perf_counter() - start))
    return rates


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import statistics

    load = os.getloadavg()
    steal = Steal()
    ours = statistics.median(zcompute_rate(args.shards, args.providers, args.repeat))
    steal_cores = steal.cores()
    row: dict[str, Any] = {"shards": args.shards, "providers": args.providers, "zcompute_per_s": ours,
                           "target_per_s": TARGET_PER_S, "vs_target": ours / TARGET_PER_S,
                           "steal_cores": steal_cores}
    if not args.no_dask:
        theirs = statistics.median(dask_rate(args.shards, args.providers, args.repeat))
        row.update(dask_per_s=theirs, vs_dask=ours / theirs)
    row["load_before"] = load[0]
    save("tiny", {"rows": [row], "args": vars(args), "load_after": os.getloadavg()})
    return [row]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=20000)
    p.add_argument("--providers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-dask", action="store_true", help="skip the Dask distributed run")
    return p


def main() -> None:
    args = parser().parse_args()
    clean_blas_env()
    rows = run(args)
    info = machine()
    print(f"cores {info['cores']}, providers {args.providers}, median of {args.repeat}")
    print_table("tiny tasks: shards per second through the whole path (higher is better)", rows,
                ["shards", "providers", "zcompute_per_s", "dask_per_s", "vs_dask", "target_per_s", "vs_target"])
    print(f"\nwrote {RESULTS / 'tiny.json'}")


if __name__ == "__main__":
    main()
