"""Data-parallel training: zcompute (2 providers) against single-process torch and torch DDP (gloo), one run.

    python bench/train.py [--workloads digits synthetic] [--epochs N] [--workers 2]

Every method trains the same model from the same seed on the same train/test split (the one the head
makes) with the same global batch, learning rate and momentum, one torch thread per process:

  single   plain torch in this process (torch.set_num_threads(1))
  ddp      torch DistributedDataParallel, gloo backend, WORKERS processes, a DistributedSampler split
           of the training set, per-process batch = global batch / WORKERS
  zcompute a LocalCluster of WORKERS providers (1 BLAS thread, OMP_NUM_THREADS=1) running a ``train`` job

Workloads: ``digits`` (8x8 digits, mlp:64,128,10, 20 epochs, batch 64) where per-round overhead dominates,
and ``synthetic`` (20,000 x 784 features from a 16-dim latent, labels a linear rule on the latent,
mlp:784,512,256,10, 5 epochs, batch 512) where compute does.

s_per_epoch is the median epoch (robust to a noisy neighbour), first_epoch_s the first one (lazy setup,
zcompute's data shards reaching the providers), train_s the whole training loop: for zcompute from the
head's first assignment to the job's finish (epoch ends from the head's event log), so the data upload is
in total_s only; for DDP between barriers on rank 0, so process start, torch import and process-group
setup are in total_s only. Ratios compare s_per_epoch: above 1 means slower than the baseline. The load
average before and after is recorded: other work on the machine skews every figure.
Writes bench/results/train.json.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, clean_blas_env, machine, print_table, save  # noqa: E402

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

WORKLOADS: dict[str, dict[str, Any]] = {
    "digits": {"model": "mlp:64,128,10", "epochs": 20, "batch_size": 64, "lr": 0.1, "momentum": 0.9},
    "synthetic": {"model": "mlp:784,512,256,10", "epochs": 5, "batch_size": 512, "lr": 0.05, "momentum": 0.9},
}
SEED, TEST_FRACTION = 0, 0.2


def make_data(name: str, samples: int):
    """The workload's (x float32, y int64); deterministic, so DDP ranks rebuild it instead of receiving it."""
    import numpy as np

    if name == "digits":
        from user_client.datasets import load_digits

        return load_digits()
    rng = np.random.default_rng(1234)
    z = rng.standard_normal((samples, 16)).astype(np.float32)
    embed = rng.standard_normal((16, 784)).astype(np.float32) / 4.0
    x = (np.tanh(z @ embed) + 0.3 * rng.standard_normal((samples, 784))).astype(np.float32)
    y = np.argmax(z @ rng.standard_normal((16, 10)).astype(np.float32), axis=1).astype(np.int64)
    return x, y


def split(n: int):
    """The head's split: test rows first in a seeded permutation, the training rows sorted."""
    import numpy as np

    order = np.random.default_rng(SEED).permutation(n)
    n_test = int(n * TEST_FRACTION)
    return order[:n_test], np.sort(order[n_test:])


def accuracy(model, x, y) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


# -- (a) single process ----------------------------------------------------------------------------------

def run_single(name: str, cfg: dict[str, Any], samples: int) -> dict[str, Any]:
    import torch

    from common.tasks.torchmodels import build_model

    torch.set_num_threads(1)
    start = time.perf_counter()
    x, y = make_data(name, samples)
    test, train = split(len(x))
    model = build_model(cfg["model"], SEED)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    epoch_s = []
    loop_start = time.perf_counter()
    for _ in range(cfg["epochs"]):
        t = time.perf_counter()
        perm = torch.randperm(len(train), generator=gen)
        for lo in range(0, len(train), cfg["batch_size"]):
            rows = perm[lo:lo + cfg["batch_size"]]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[rows]), yt[rows]).backward()
            opt.step()
        epoch_s.append(time.perf_counter() - t)
    train_s = time.perf_counter() - loop_start
    return {"train_s": train_s, "total_s": time.perf_counter() - start, "epoch_s": epoch_s,
            "test_acc": accuracy(model, x[test], y[test]), "threads": torch.get_num_threads()}


# -- (c) torch DDP, gloo ---------------------------------------------------------------------------------

def _ddp_worker(rank: int, world: int, name: str, cfg: dict[str, Any], samples: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DistributedSampler, TensorDataset

    from common.tasks.torchmodels import build_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, y = make_data(name, samples)
        test, train = split(len(x))
        xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
        model = DistributedDataParallel(build_model(cfg["model"], SEED))
        opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
        sampler = DistributedSampler(TensorDataset(xt, yt), num_replicas=world, rank=rank, shuffle=True, seed=SEED)
        local_batch = max(1, cfg["batch_size"] // world)
        epoch_s = []
        dist.barrier()
        loop_start = time.perf_counter()
        for epoch in range(cfg["epochs"]):
            t = time.perf_counter()
            sampler.set_epoch(epoch)
            idx = torch.tensor(list(sampler))
            for lo in range(0, len(idx), local_batch):
                rows = idx[lo:lo + local_batch]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xt[rows]), yt[rows]).backward()  # all-reduce here
                opt.step()
            epoch_s.append(time.perf_counter() - t)
        dist.barrier()
        train_s = time.perf_counter() - loop_start
        if rank == 0:
            out.put({"train_s": train_s, "epoch_s": epoch_s, "test_acc": accuracy(model.module, x[test], y[test]),
                     "threads": torch.get_num_threads(), "local_batch": local_batch})
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ddp(name: str, cfg: dict[str, Any], samples: int, world: int) -> dict[str, Any]:
    import torch.multiprocessing as mp

    out = mp.get_context("spawn").SimpleQueue()
    start = time.perf_counter()
    mp.spawn(_ddp_worker, args=(world, name, cfg, samples, free_port(), out), nprocs=world, join=True)
    result = out.get()
    return {**result, "total_s": time.perf_counter() - start}


# -- (b) zcompute --------------------------------------------------------------------------------------

def all_events(job) -> list[dict[str, Any]]:
    events, offset = [], 0
    while True:
        batch, offset = job.events(offset, 1000)  # ~140 bytes an event: a reply header must stay under 256 KiB
        events += batch
        if not batch:
            return events


def run_zcompute(client, name: str, cfg: dict[str, Any], samples: int, world: int) -> dict[str, Any]:
    x, y = make_data(name, samples)
    start = time.perf_counter()
    job = client.train(cfg["model"], (x, y), epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                       momentum=cfg["momentum"], seed=SEED, test_fraction=TEST_FRACTION, shards=world)
    summary = job.wait(timeout=600)
    total_s = time.perf_counter() - start
    history = job.metrics()
    events = all_events(job)
    first_assign = min(e["time"] for e in events if e["event"] == "assign")
    finish = next(e["time"] for e in events if e["event"] == "finish")
    # a round's last result closes it; shard index = step * shards + i (task id JOB.INDEX)
    n_train = len(x) - int(len(x) * TEST_FRACTION)
    steps_per_epoch = math.ceil(n_train / cfg["batch_size"])
    round_end: dict[int, float] = {}
    compute = [e["elapsed"] for e in events if e["event"] == "result" and e.get("elapsed") is not None]
    for e in events:
        if e["event"] == "result":
            step = int(e["task_id"].rsplit(".", 1)[1]) // world
            round_end[step] = max(round_end.get(step, 0.0), e["time"])
    bounds = [first_assign] + [round_end[(k + 1) * steps_per_epoch - 1] for k in range(cfg["epochs"])]
    bounds[-1] = finish
    epoch_s = [b - a for a, b in zip(bounds, bounds[1:])]
    train_s = finish - first_assign
    return {"train_s": train_s, "total_s": total_s, "epoch_s": epoch_s, "test_acc": history[-1].get("test_acc"),
            "rounds": len(history), "round_ms": 1e3 * train_s / max(1, len(history)),
            "provider_compute_ms": 1e3 * statistics.mean(compute) if compute else None,
            "reruns": summary.get("reruns"), "speculated": summary.get("speculated"),
            "shards_by_provider": summary.get("shards_by_provider")}


# -- main ------------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=["digits", "synthetic"])
    p.add_argument("--epochs", type=int, default=None, help="epochs for every workload (default: digits 20, synthetic 5)")
    p.add_argument("--workers", type=int, default=2, help="zcompute providers and DDP processes")
    p.add_argument("--samples", type=int, default=20_000, help="synthetic set size (a fifth is held out)")
    return p


def main() -> None:
    args = parser().parse_args()
    clean_blas_env()
    rows = run(args)
    print_table("training: time per epoch and final test accuracy (vs_* are time ratios: > 1 means slower)", rows,
                ["workload", "method", "epochs", "s_per_epoch", "first_epoch_s", "train_s", "total_s", "test_acc",
                 "vs_single", "vs_ddp"])
    print(f"\nwrote {RESULTS / 'train.json'}")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train every workload with every method; print the context, save train.json, return the rows."""
    load_before = os.getloadavg()
    for k, v in ONE_THREAD.items():  # before torch loads: this process and the DDP children get one thread
        os.environ.setdefault(k, v)

    from user_client import LocalCluster

    configs = {name: {**WORKLOADS[name], **({"epochs": args.epochs} if args.epochs else {})}
               for name in args.workloads}
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for name, cfg in configs.items():  # baselines first, while no cluster shares the cores
        print(f"{name}: single process ...", flush=True)
        results[name, "single"] = run_single(name, cfg, args.samples)
        print(f"{name}: torch DDP gloo x{args.workers} ...", flush=True)
        results[name, "ddp"] = run_ddp(name, cfg, args.samples, args.workers)

    with LocalCluster(args.workers, insecure=True, blas_threads=1, env=ONE_THREAD) as cluster, \
            cluster.client(timeout=120) as client:
        print("zcompute: warm-up job (torch import on head and providers) ...", flush=True)
        run_zcompute(client, "digits", {**WORKLOADS["digits"], "epochs": 1}, args.samples, args.workers)
        for name, cfg in configs.items():
            print(f"{name}: zcompute x{args.workers} providers ...", flush=True)
            results[name, "zcompute"] = run_zcompute(client, name, cfg, args.samples, args.workers)

    rows = []
    for name, cfg in configs.items():
        single, ddp = results[name, "single"], results[name, "ddp"]
        for method in ("single", "ddp", "zcompute"):
            r = results[name, method]
            per_epoch = statistics.median(r["epoch_s"])
            rows.append({"workload": name, "method": method, "epochs": cfg["epochs"], "s_per_epoch": per_epoch,
                         "first_epoch_s": r["epoch_s"][0], "train_s": r["train_s"], "total_s": r["total_s"],
                         "test_acc": r["test_acc"], "vs_single": per_epoch / statistics.median(single["epoch_s"]),
                         "vs_ddp": per_epoch / statistics.median(ddp["epoch_s"]), **r})
    load_after = os.getloadavg()
    info = machine()
    print(f"\nload average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"cores {info['cores']}, BLAS {info['blas']}, {args.workers} workers x 1 torch thread; "
          + "; ".join(f"{n}: {c['model']} batch {c['batch_size']} lr {c['lr']} momentum {c['momentum']}"
                      for n, c in configs.items()))
    for name in configs:
        z = results[name, "zcompute"]
        print(f"zcompute {name}: {z['rounds']} rounds, {z['round_ms']:.1f} ms a round, "
              f"{z['provider_compute_ms']:.1f} ms of it computing a shard on a provider")
    import torch

    save("train", {"rows": rows, "args": vars(args), "workloads": configs, "torch": torch.__version__,
                   "loadavg_before": load_before, "loadavg_after": load_after})
    return rows


if __name__ == "__main__":
    main()
