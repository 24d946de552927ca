"""The README's first command: a local cluster multiplies two matrices and checks the answer."""

from __future__ import annotations

import sys
import time

import click
import numpy as np
from threadpoolctl import threadpool_limits

from common.tasks.matmul import MatmulTask
from user_client.format import progress_bar
from user_client.local import LocalCluster


def run_demo(size: int, splits: str, providers: int, insecure: bool = False) -> None:
    rng = np.random.default_rng(42)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    MatmulTask().validate({"splits": splits}, {"a": a, "b": b})  # as the head will, before a cluster starts for it
    click.echo(f"starting a local cluster: 1 head node, {providers} providers ...")
    with LocalCluster(providers, insecure=insecure) as cluster, cluster.client() as client:
        click.echo(f"head at {cluster.address} ({'INSECURE' if insecure else 'secured: CurveZMQ + tokens'}); "
                   f"submitting {size}x{size} float32 matmul split {splits}")
        start = time.perf_counter()
        job = client.matmul(a, b, splits=splits)
        with progress_bar(sys.stderr.isatty()) as update:
            summary = job.wait(timeout=600, on_progress=update)
        c = job.result()
        cluster_s = time.perf_counter() - start
    with threadpool_limits(limits=providers):  # numpy with as many threads as the cluster has providers
        start = time.perf_counter()
        ref = a @ b
        numpy_s = time.perf_counter() - start
    err = float(np.max(np.abs(c - ref)) / np.max(np.abs(ref)))
    ok = err < 1e-5
    click.echo(f"result shape      {c.shape} {c.dtype}")
    click.echo(f"shards            {summary['total']}: " + ", ".join(
        f"{name} {n}" for name, n in sorted(summary["shards_by_provider"].items())))
    click.echo(f"cluster wall time {cluster_s:.3f}s (submit to result in hand)")
    click.echo(f"numpy time        {numpy_s:.3f}s ({providers} BLAS threads, same run)")
    click.echo(f"max relative err  {err:.2e} ({'OK' if ok else 'TOO LARGE'})")
    click.echo("local cluster stopped")
    if not ok:
        raise SystemExit(1)
