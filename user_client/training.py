"""Terminal side of ``user-client train``: follow the rounds, save the trained model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from common.errors import JobCancelled, JobFailed
from user_client.client import TrainJob


def _line(entry: dict[str, Any]) -> str:
    test = f"  test_acc {entry['test_acc']:.4f}" if entry.get("test_acc") is not None else ""
    return (f"round {entry['step']:>6}  epoch {entry['epoch']:7.2f}  loss {entry['loss']:.4f}  "
            f"train_acc {entry['train_acc']:.4f}{test}")


def follow_training(job: TrainJob, every_round: bool = False, poll: float = 0.5) -> list[dict[str, Any]]:
    """Print rounds as they finish (each round, or each epoch's last) until the job ends."""
    shown = 0
    while True:
        status = job.status()["status"]
        history = job.metrics()
        for entry in history[shown:]:
            if every_round or entry.get("test_acc") is not None:
                click.echo(_line(entry))
        shown = len(history)
        if status == "failed":
            raise JobFailed(f"job {job.id} failed: {job.status()['error']}")
        if status == "cancelled":
            raise JobCancelled(f"job {job.id} was cancelled")
        if status == "succeeded":
            return history
        time.sleep(poll)


def save_state_dict(state: dict[str, Any], out: Path) -> Path:
    """torch.save when torch is here (loads with model.load_state_dict(torch.load(out))), else .npz."""
    try:
        import torch
    except ImportError:
        if out.suffix != ".npz":
            out = out.with_suffix(".npz")
        np.savez(out, **{k: np.asarray(v) for k, v in state.items()})
        return out
    torch.save(state, out)
    return out

