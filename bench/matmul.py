"""Matmul on a local cluster of 2 providers (1 BLAS thread each) against numpy and Dask in the same run.

    python bench/matmul.py [--sizes 1024 2048 4096] [--splits 2x1] [--repeat 3] [--no-dask]

Every method starts from A and B in this process and ends with C here. zcompute: a LocalCluster
of PROVIDERS providers, ``Client.matmul(a, b, splits)``: ``cluster_s`` as a user gets it (client and
providers on the head's machine use its files in place, PROTOCOL.md 6.9), ``wire_s`` with the head
started ``--no-local-data``, so every array crosses tcp loopback as it would cross a network. numpy:
``a @ b`` with 1 and 2 BLAS threads.
Dask: a distributed LocalCluster of PROVIDERS worker processes x 1 thread (BLAS limited to 1 thread),
``(da.from_array(a, row chunks of the same split) @ da.from_array(b)).compute()``, so the arrays travel
with the graph as zcompute's travel with the job. floor: the split's blocks computed by PROVIDERS
processes (1 BLAS thread each) at once, with nothing sent: what any such cluster must at least take
(``floor_vs_2t`` is the best ratio the split allows on this machine). Prints the times and ratios
(ratio_vs_2t above 1: slower than numpy with 2 threads; dask_over_cluster above 1: zcompute is faster
than Dask); writes bench/results/matmul.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, best_of, clean_blas_env, machine, print_table, save, typical  # noqa: E402


#: at most this many times numpy with 2 BLAS threads (issue 9, target 1)
TARGETS = {1024: 1.6, 2048: 1.3, 4096: 1.15}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--splits", default="2x1")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--providers", type=int, default=2)
    p.add_argument("--no-dask", action="store_true", help="skip the Dask distributed run")
    return p


def _split_counts(splits: str) -> tuple[int, int]:
    """``"RxC"`` or ``"R"`` -> (row blocks, column blocks)."""
    rows, _, cols = splits.lower().partition("x")
    return int(rows), int(cols or 1)


def dask_times(inputs: dict[int, tuple], splits: str, workers: int, repeat: int) -> dict[int, float]:
    """Median seconds of Dask distributed for each size, with the same row split."""
    import dask.array as da
    from dask.distributed import Client, LocalCluster

    rows, cols = _split_counts(splits)
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: "1" for k in saved})  # the workers' BLAS: one thread each, like the providers
    try:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
                Client(cl) as client:
            out = {}
            for n, (a, b) in inputs.items():
                def run(a=a, b=b, n=n):
                    da_a = da.from_array(a, chunks=(-(-n // rows), n))
                    da_b = da.from_array(b, chunks=(n, -(-n // cols)))
                    return client.compute(da_a @ da_b).result()
                run()  # warm up
                out[n] = best_of(run, repeat)
            return out
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _floor_worker(conn, a, b, blocks, repeat: int) -> None:
    """One process's share of the blocks, on 1 BLAS thread, ``repeat`` times at the parent's signal."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    outs = [np.empty((r1 - r0, c1 - c0), np.float32) for r0, r1, c0, c1 in blocks]
    with threadpool_limits(limits=1):
        for _ in range(repeat + 1):  # the first is a warm-up
            conn.recv()
            start = time.monotonic()
            for (r0, r1, c0, c1), out in zip(blocks, outs):
                np.matmul(a[r0:r1], b[:, c0:c1], out=out)
            conn.send((start, time.monotonic()))


def floor_times(inputs: dict[int, tuple], splits: str, workers: int, repeat: int) -> dict[int, float | None]:
    """The split's compute alone: WORKERS processes, 1 BLAS thread each, computing the blocks the cluster's
    providers would (round robin) at the same moment into their own memory, with nothing sent; seconds from
    the first start to the last end. The cluster cannot beat it: what it adds is its overhead."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        return {n: None for n in inputs}  # the children would need the arrays sent: not the same measure
    rows, cols = _split_counts(splits)
    out = {}
    for n, (a, b) in inputs.items():
        rs, cs = -(-n // rows), -(-n // cols)
        blocks = [(r, min(n, r + rs), c, min(n, c + cs)) for r in range(0, n, rs) for c in range(0, n, cs)]
        ctx, pipes, procs = mp.get_context("fork"), [], []
        for w in range(workers):
            parent, child = ctx.Pipe()
            procs.append(ctx.Process(target=_floor_worker, args=(child, a, b, blocks[w::workers], repeat)))
            pipes.append(parent)
            procs[-1].start()
        times = []
        for i in range(repeat + 1):
            for conn in pipes:
                conn.send(None)
            spans = [conn.recv() for conn in pipes]
            if i:
                times.append(max(end for _, end in spans) - min(start for start, _ in spans))
        for p in procs:
            p.join()
        out[n] = typical(times)
    return out


def run(args: argparse.Namespace) -> list[dict]:
    import numpy as np
    from threadpoolctl import threadpool_limits

    from user_client import LocalCluster

    rows = []
    rng = np.random.default_rng(0)
    inputs = {n: (rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32))
              for n in args.sizes}

    def cluster_times(head_args: list[str]) -> dict[int, float]:
        with LocalCluster(args.providers, blas_threads=1, insecure=True, head_args=head_args) as cluster, \
                cluster.client(timeout=120) as c:
            out = {}
            for n, (a, b) in inputs.items():
                c.matmul(a, b, splits=args.splits).result()  # warm up: page cache, BLAS, sockets
                out[n] = best_of(lambda: c.matmul(a, b, splits=args.splits).result(), args.repeat)
            return out

    cluster, wire = cluster_times([]), cluster_times(["--no-local-data"])
    floor = floor_times(inputs, args.splits, args.providers, args.repeat)
    for n, (a, b) in inputs.items():
        cluster_s = cluster[n]
        numpy_s = {}
        for threads in (1, 2):
            with threadpool_limits(limits=threads):
                a @ b
                numpy_s[threads] = best_of(lambda: a @ b, args.repeat)
        rows.append({"n": n, "splits": args.splits, "cluster_s": cluster_s, "wire_s": wire[n],
                     "numpy_1t_s": numpy_s[1], "numpy_2t_s": numpy_s[2], "ratio_vs_1t": cluster_s / numpy_s[1],
                     "ratio_vs_2t": cluster_s / numpy_s[2], "wire_vs_2t": wire[n] / numpy_s[2],
                     "target_vs_2t": TARGETS.get(n), "floor_s": floor[n],
                     "floor_vs_2t": None if floor[n] is None else floor[n] / numpy_s[2]})
    if not args.no_dask:  # after our cluster stopped: the two never share the cores
        for row, (n, seconds) in zip(rows, dask_times(inputs, args.splits, args.providers, args.repeat).items()):
            row.update(dask_s=seconds, dask_over_cluster=seconds / row["cluster_s"],
                       dask_over_wire=seconds / row["wire_s"])
    save("matmul", {"rows": rows, "args": vars(args), "loadavg_after": os.getloadavg()})
    return rows


def main() -> None:
    args = parser().parse_args()
    clean_blas_env()
    rows = run(args)
    info = machine()
    print(f"cores {info['cores']}, BLAS {info['blas']}, providers {args.providers} x 1 BLAS thread, "
          f"median of {args.repeat}")
    print_table("matmul float32: cluster vs numpy (ratio < 1 means the cluster is faster)", rows,
                ["n", "splits", "cluster_s", "wire_s", "numpy_1t_s", "numpy_2t_s", "floor_s", "dask_s", "ratio_vs_2t",
                 "target_vs_2t", "floor_vs_2t", "wire_vs_2t", "dask_over_cluster", "dask_over_wire"])
    print(f"\nwrote {RESULTS / 'matmul.json'}")


if __name__ == "__main__":
    main()
