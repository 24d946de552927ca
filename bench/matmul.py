"""Matmul on a local cluster of 2 providers (1 BLAS thread each) against numpy and Dask in the same run.

    python bench/matmul.py [--sizes 1024 2048 4096] [--splits 2x1] [--repeat 5] [--no-dask]

Every method starts from A and B in this process and ends with C here. zcompute: a LocalCluster
of PROVIDERS providers, ``Client.matmul(a, b, splits)``: ``cluster_s`` as a user gets it (client and
providers on the head's machine use its files in place, PROTOCOL.md 6.9), ``wire_s`` with the head
started ``--no-local-data``, so every array crosses tcp loopback as it would cross a network. numpy:
``a @ b`` with 1 and 2 BLAS threads.
Dask: a distributed LocalCluster of PROVIDERS worker processes x 1 thread (BLAS limited to 1 thread),
``(da.from_array(a, row chunks of the same split) @ da.from_array(b)).compute()``, so the arrays travel
with the graph as zcompute's travel with the job. floor: the split's blocks computed by PROVIDERS
processes (1 BLAS thread each) at once, with nothing sent: what any such cluster must at least take
(``floor_vs_2t`` is the best ratio the split allows on this machine). zcompute, numpy and the floor are
timed interleaved, round by round (``interleaved``), so a burst of load from the machine's neighbours
(``steal_cores``: what the hypervisor took) falls on all of them alike. Prints the times and ratios
(ratio_vs_2t above 1: slower than numpy with 2 threads; dask_over_cluster above 1: zcompute is faster
than Dask); writes bench/results/matmul.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (RESULTS, Steal, best_of, clean_blas_env, machine, own_environ, print_table,  # noqa: E402
                          save, typical)


#: at most this many times numpy with 2 BLAS threads (issue 9, target 1)
TARGETS = {1024: 1.6, 2048: 1.3, 4096: 1.15}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--splits", default="2x1")
    p.add_argument("--repeat", type=int, default=5,
                   help="rounds (each method once per round, interleaved); 4x as many at 1024² and below")
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
    with own_environ():  # the workers' BLAS: one thread each, like the providers
        os.environ.update({k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
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


def _floor_worker(conn, a, b, blocks) -> None:
    """One process's share of the blocks, on 1 BLAS thread, each time the parent says so (False: stop)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    outs = [np.empty((r1 - r0, c1 - c0), np.float32) for r0, r1, c0, c1 in blocks]
    with threadpool_limits(limits=1):
        while conn.recv():
            start = time.monotonic()
            for (r0, r1, c0, c1), out in zip(blocks, outs):
                np.matmul(a[r0:r1], b[:, c0:c1], out=out)
            conn.send((start, time.monotonic()))


class Floor:
    """The split's compute alone: WORKERS processes, 1 BLAS thread each, computing the blocks the cluster's
    providers would (round robin) at the same moment into their own memory, with nothing sent; ``once()`` is
    the seconds from the first start to the last end. The cluster cannot beat it: what it adds is its
    overhead. Needs ``fork`` (the children share A and B): ``Floor.start`` is None without it."""

    def __init__(self, pipes, procs):
        self.pipes, self.procs = pipes, procs

    @classmethod
    def start(cls, a, b, splits: str, workers: int) -> "Floor | None":
        import multiprocessing as mp

        if "fork" not in mp.get_all_start_methods():
            return None  # the children would need the arrays sent: not the same measure
        rows, cols = _split_counts(splits)
        n, m = a.shape[0], b.shape[1]
        rs, cs = -(-n // rows), -(-m // cols)
        blocks = [(r, min(n, r + rs), c, min(m, c + cs)) for r in range(0, n, rs) for c in range(0, m, cs)]
        ctx, pipes, procs = mp.get_context("fork"), [], []
        for w in range(workers):
            parent, child = ctx.Pipe()
            procs.append(ctx.Process(target=_floor_worker, args=(child, a, b, blocks[w::workers]), daemon=True))
            pipes.append(parent)
            procs[-1].start()
        return cls(pipes, procs)

    def once(self) -> float:
        for conn in self.pipes:
            conn.send(True)
        spans = [conn.recv() for conn in self.pipes]
        return max(end for _, end in spans) - min(start for start, _ in spans)

    def close(self) -> None:
        for conn in self.pipes:
            conn.send(False)
        for p in self.procs:
            p.join()


def interleaved(methods: dict[str, Callable[[], Any]], rounds: int, settle: float = 0.2) -> dict[str, Any]:
    """Each method once to warm up, then ``rounds`` rounds of each method once, in an order that rotates
    every round, with ``settle`` seconds between runs (a 2-thread BLAS call leaves its threads spinning for
    about 0.1 s). Bursts of load from the machine's neighbours then fall on every method alike, not on
    whichever ran during them. Returns each method's typical seconds, and ``steal_cores``: CPU the
    hypervisor took per wall second meanwhile."""
    for fn in methods.values():
        fn()
    names, times = list(methods), {name: [] for name in methods}
    steal = Steal()
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(settle)
            start = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - start)
    out: dict[str, Any] = {name: typical(t) for name, t in times.items()}
    out["steal_cores"] = steal.cores()
    return out


def rounds_for(n: int, repeat: int) -> int:
    """More rounds for the sizes that take milliseconds (up to 4x ``repeat`` at 1024² and below): a burst
    of steal then covers a smaller share of them, and they cost little."""
    return repeat * min(4, max(1, (2048 // n) ** 2))


def run(args: argparse.Namespace) -> list[dict]:
    import numpy as np
    from threadpoolctl import threadpool_limits

    from user_client import LocalCluster

    rng = np.random.default_rng(0)
    inputs = {n: (rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32))
              for n in args.sizes}

    def numpy_with(threads: int, a, b) -> Callable[[], Any]:
        def go():
            with threadpool_limits(limits=threads):
                return a @ b
        return go

    measured = {}
    # forked before the cluster's client starts threads (a child of a threaded process may inherit a held lock)
    floors = {n: Floor.start(a, b, args.splits, args.providers) for n, (a, b) in inputs.items()}
    try:
        with LocalCluster(args.providers, blas_threads=1, insecure=True) as cluster, \
                cluster.client(timeout=120) as c:
            for n, (a, b) in inputs.items():
                methods = {"cluster_s": lambda a=a, b=b: c.matmul(a, b, splits=args.splits).result(),
                           "numpy_2t_s": numpy_with(2, a, b), "numpy_1t_s": numpy_with(1, a, b)}
                if floors[n] is not None:
                    methods["floor_s"] = floors[n].once
                measured[n] = interleaved(methods, rounds_for(n, args.repeat))
    finally:
        for floor in floors.values():
            if floor is not None:
                floor.close()
    with LocalCluster(args.providers, blas_threads=1, insecure=True, head_args=["--no-local-data"]) as cluster, \
            cluster.client(timeout=120) as c:
        for n, (a, b) in inputs.items():
            c.matmul(a, b, splits=args.splits).result()  # warm up: page cache, BLAS, sockets
            measured[n]["wire_s"] = best_of(lambda: c.matmul(a, b, splits=args.splits).result(), args.repeat)
    rows = []
    for n, m in measured.items():
        numpy_2t = m["numpy_2t_s"]
        rows.append({"n": n, "splits": args.splits, **m, "ratio_vs_1t": m["cluster_s"] / m["numpy_1t_s"],
                     "ratio_vs_2t": m["cluster_s"] / numpy_2t, "wire_vs_2t": m["wire_s"] / numpy_2t,
                     "target_vs_2t": TARGETS.get(n), "floor_s": m.get("floor_s"),
                     "floor_vs_2t": m["floor_s"] / numpy_2t if m.get("floor_s") else None})
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
          f"median of {args.repeat} interleaved rounds ({rounds_for(1024, args.repeat)} at 1024²)")
    print_table("matmul float32: cluster vs numpy (ratio < 1 means the cluster is faster)", rows,
                ["n", "splits", "cluster_s", "wire_s", "numpy_1t_s", "numpy_2t_s", "floor_s", "dask_s", "ratio_vs_2t",
                 "target_vs_2t", "floor_vs_2t", "wire_vs_2t", "dask_over_cluster", "dask_over_wire", "steal_cores"])
    print(f"\nwrote {RESULTS / 'matmul.json'}")


if __name__ == "__main__":
    main()
