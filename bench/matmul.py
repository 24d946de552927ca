"""Matmul on a local cluster of 2 providers (1 BLAS thread each) against numpy in the same run.

    python bench/matmul.py [--sizes 1024 2048 4096] [--splits 2x1] [--repeat 3]

Prints cluster time, numpy with 1 and 2 BLAS threads, and the ratios; writes bench/results/matmul.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import best_of, clean_blas_env, machine, print_table, save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--splits", default="2x1")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--providers", type=int, default=2)
    args = parser.parse_args()
    clean_blas_env()

    import numpy as np
    from threadpoolctl import threadpool_limits

    from user_client import LocalCluster

    rows = []
    rng = np.random.default_rng(0)
    with LocalCluster(args.providers, blas_threads=1, insecure=True) as cluster, cluster.client(timeout=120) as c:
        for n in args.sizes:
            a = rng.standard_normal((n, n), dtype=np.float32)
            b = rng.standard_normal((n, n), dtype=np.float32)
            c.matmul(a, b, splits=args.splits).result()  # warm up: page cache, BLAS, sockets
            cluster_s = best_of(lambda: c.matmul(a, b, splits=args.splits).result(), args.repeat)
            numpy_s = {}
            for threads in (1, 2):
                with threadpool_limits(limits=threads):
                    a @ b
                    numpy_s[threads] = best_of(lambda: a @ b, args.repeat)
            rows.append({"n": n, "splits": args.splits, "cluster_s": cluster_s, "numpy_1t_s": numpy_s[1],
                         "numpy_2t_s": numpy_s[2], "ratio_vs_1t": cluster_s / numpy_s[1],
                         "ratio_vs_2t": cluster_s / numpy_s[2]})
    info = machine()
    print(f"cores {info['cores']}, BLAS {info['blas']}, providers {args.providers} x 1 BLAS thread, "
          f"median of {args.repeat}")
    print_table("matmul float32: cluster vs numpy (ratio < 1 means the cluster is faster)", rows,
                ["n", "splits", "cluster_s", "numpy_1t_s", "numpy_2t_s", "ratio_vs_1t", "ratio_vs_2t"])
    print(f"\nwrote {save('matmul', {'rows': rows, 'args': vars(args)})}")


if __name__ == "__main__":
    main()
