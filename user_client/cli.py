"""``user-client``: submit jobs to a head node, follow them, fetch results; ``demo`` runs a local cluster."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

import click
import numpy as np

from common import cli_options as opt
from common.config import HeadConfig
from common.errors import ConfigError, JobCancelled, JobFailed, ZComputeError
from common.logs import setup_logging
from common.tasks.noop import MAX_SLEEP
from user_client.client import DEFAULT_HEAD, Client, JobHandle
from user_client.cli_filemean import filemean_command
from user_client.format import progress_bar, table


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"  # np.savez writes a zip archive
NO_CREDENTIALS = ("no credentials: pass --join STRING or --join @FILE (from `head-node invite --role client --name "
                  "NAME`), or --insecure for a head started with --insecure")


class ClientError(click.ClickException):
    """A zcompute error shown as one clear line and exit code 1."""


@click.group(help="zcompute user client: submit work to a head node and collect results.")
@click.option("--head", envvar=opt.env("HEAD"), default=None,
              help=f"The head node, tcp://HOST[:PORT_BASE] (default: from --join, else {DEFAULT_HEAD}).")
@click.option("--join", "join_text", envvar=opt.env("JOIN"),
              help="Join string from `head-node invite --role client` (or @FILE).")
@click.option("--timeout", type=opt.Number(0.1, 3600), default=30.0, show_default=True,
              help="Seconds to wait for each reply from the head before retrying.")
@opt.insecure
@opt.log_level
@click.pass_context
def cli(ctx: click.Context, head: str | None, join_text: str | None, timeout: float, insecure: bool,
        log_level: str) -> None:
    setup_logging(log_level if log_level != "info" else "warning", json=False)
    ctx.obj = {"head": head, "join": join_text, "timeout": timeout, "insecure": insecure}


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """A zcompute error becomes one clear line on stderr and exit code 1."""
    try:
        yield
    except ZComputeError as e:
        raise ClientError(str(e)) from None


def _client(ctx: click.Context) -> Client:
    if not ctx.obj["join"] and not ctx.obj["insecure"]:
        raise ClientError(NO_CREDENTIALS)
    try:
        return Client(ctx.obj["head"], join=ctx.obj["join"], insecure=ctx.obj["insecure"],
                      timeout=ctx.obj["timeout"])
    except ConfigError as e:
        raise ClientError(str(e)) from None


def _load(path: Path) -> np.ndarray:
    """The one array of a .npy file; never unpickled."""
    try:
        with open(path, "rb") as f:
            reason = _not_npy(f.read(len(NPY_MAGIC)))
            if reason is None:
                f.seek(0)
                return np.load(f, allow_pickle=False)
    except OSError as e:
        reason = e.strerror or str(e)
    except (ValueError, EOFError) as e:  # a damaged .npy, or one of objects
        # for objects numpy advises allow_pickle=True: not advice to pass on
        reason = "it holds Python objects, not numbers" if "allow_pickle" in str(e) else str(e)
    raise ClientError(f"cannot read {path}: {reason}")


def _not_npy(start: bytes) -> str | None:
    if not start:
        return "file is empty"
    if start.startswith(ZIP_MAGIC):
        return "it is an .npz archive; give a single array as a .npy file (np.save)"
    return None if start == NPY_MAGIC else "not a .npy file"


@contextlib.contextmanager
def _detach_on_ctrl_c(job_id: str) -> Iterator[None]:
    """Ctrl-C stops this command, not the job: say how to come back to it."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; job {job_id} keeps running on the head (user-client watch {job_id}, "
                   f"user-client result {job_id} --out FILE, or user-client cancel {job_id})", err=True)
        raise click.exceptions.Exit(130) from None


def _wait_and_save(job: JobHandle, out: Path | None, show_progress: bool) -> None:
    with _detach_on_ctrl_c(job.id):
        with progress_bar(show_progress) as update:
            try:
                summary = job.wait(on_progress=update)
            except (JobFailed, JobCancelled) as e:
                raise ClientError(str(e)) from None
        click.echo(f"job {job.id} {summary['status']} in {summary['elapsed']:.3f}s "
                   f"({summary['total']} shards: {_by_provider(summary)})")
        if out is not None:
            _save(job, out)


def _save(job: JobHandle, out: Path) -> None:
    """Write exactly ``out`` (np.save and np.savez given a name would add .npy or .npz to it)."""
    arrays = job.outputs()
    try:
        with open(out, "wb") as f:
            if len(arrays) == 1:
                np.save(f, next(iter(arrays.values())), allow_pickle=False)
            else:
                np.savez(f, **arrays)
    except OSError as e:
        raise ClientError(f"cannot write {out}: {e.strerror or e}") from None
    click.echo(f"saved {out}" + ("" if len(arrays) == 1 else f" (an .npz archive of {', '.join(arrays)})"))


def _by_provider(summary: dict) -> str:
    return ", ".join(f"{n} {k}" for n, k in sorted(summary["shards_by_provider"].items())) or "none"


@cli.group(help="Submit a job; add --wait to follow it to the end.")
def submit() -> None:
    pass


submit.add_command(filemean_command)


@submit.command("matmul", epilog="Example: user-client submit matmul --a A.npy --b B.npy --splits 2x2 --wait "
                                 "--out C.npy")
@click.option("--a", "a_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="A as a .npy file (m x k).")
@click.option("--b", "b_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="B as a .npy file (k x n).")
@click.option("--splits", default="auto", show_default=True,
              help="ROWSxCOLS grid of blocks (2x2), a row count (4), or auto.")
@opt.priority
@click.option("--wait/--no-wait", default=False, help="Wait for the result, with a progress bar.")
@opt.out_file("Save C here (.npy); implies --wait.")
@click.pass_context
def submit_matmul(ctx, a_path, b_path, splits, priority, wait, out):
    """C = A @ B, sharded by rows or as a grid of blocks."""
    a, b = _load(a_path), _load(b_path)
    with _client(ctx) as c:
        with _errors():
            job = c.matmul(a, b, splits=splits, priority=priority)
        click.echo(f"submitted job {job.id}")
        if wait or out:
            _wait_and_save(job, out, sys.stderr.isatty())


@submit.command("noop", epilog="Example: user-client submit noop --shards 1000 --wait")
@click.option("--shards", type=click.IntRange(1, HeadConfig.max_shards_per_job), default=10, show_default=True)
@click.option("--sleep", type=opt.Number(0, MAX_SLEEP), default=0.0, show_default=True, help="Seconds per shard.")
@click.option("--wait/--no-wait", default=False)
@click.pass_context
def submit_noop(ctx, shards, sleep, wait):
    """Shards that do nothing: measure the cluster's overhead."""
    with _client(ctx) as c:
        with _errors():
            job = c.submit("noop", {"shards": shards, "sleep": sleep})
        click.echo(f"submitted job {job.id}")
        if wait:
            _wait_and_save(job, None, sys.stderr.isatty())


@cli.command(epilog="Example: user-client train --model mlp:64,128,10 --data digits --epochs 20 --batch-size 64 "
                    "--lr 0.05 --wait --out model.pt")
@click.option("--model", required=True, help="mlp:IN,HIDDEN...,OUT, cnn:HxW,CLASSES, or package.module:factory "
                                                 "(one the head's operator allows).")
@click.option("--data", default="digits", show_default=True,
              help="digits, a .npz with X and y, an MNIST directory, or IMAGES,LABELS IDX files.")
@click.option("--epochs", type=click.IntRange(1, 100_000), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True, help="Global batch size.")
@click.option("--lr", type=opt.Number(0, min_open=True), default=0.05, show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True)
@click.option("--momentum", type=opt.Number(0, 1, max_open=True), default=0.0, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--local-steps", type=click.IntRange(1), default=1, show_default=True,
              help="1: providers return gradients; K>1: weight changes after K local SGD steps.")
@click.option("--wire-dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32",
              show_default=True, help="How parameters and updates travel (16-bit halves the bytes).")
@click.option("--every-round", is_flag=True, help="Print every round, not only the end of each epoch.")
@click.option("--wait/--no-wait", default=False, help="Follow the training and print its progress.")
@opt.out_file("Save the trained state_dict here (torch.save; .npz without torch); implies --wait.")
@click.pass_context
def train(ctx, model, data, epochs, batch_size, lr, optimizer, momentum, seed, local_steps, wire_dtype, every_round,
          wait, out):
    """Data-parallel training of a torch model across the providers."""
    from user_client.training import follow_training, save_state_dict

    with _client(ctx) as c:
        try:
            job = c.train(model, data, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                          momentum=momentum, seed=seed, local_steps=local_steps, wire_dtype=wire_dtype)
            click.echo(f"submitted job {job.id}")
            if wait or out:
                with _detach_on_ctrl_c(job.id):
                    follow_training(job, every_round)
                    if out is not None:
                        click.echo(f"saved {save_state_dict(job.result(), out)}")
        except (ZComputeError, TimeoutError) as e:
            raise ClientError(str(e)) from None


@cli.command(epilog="Example: user-client status 3f2a9c1b7d4e")
@click.argument("job_id")
@click.pass_context
def status(ctx, job_id):
    """Show one job's state and progress."""
    with _client(ctx) as c:
        with _errors():
            s = c.job(job_id).status()
    click.echo(table([s], ["job_id", "task_type", "status", "done", "total", "reruns", "elapsed", "error"]))


@cli.command(epilog="Example: user-client result 3f2a9c1b7d4e --out C.npy")
@click.argument("job_id")
@opt.out_file("Where to save it.", required=True)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait if the job is still running.")
@click.pass_context
def result(ctx, job_id, out, wait):
    """Save a job's result to a .npy file (several outputs: .npz)."""
    with _client(ctx) as c:
        job = c.job(job_id)
        with _errors():
            if not wait and not job.done():
                raise ClientError(f"job {job_id} has not finished")
            _wait_and_save(job, out, sys.stderr.isatty())


@cli.command(epilog="Example: user-client events 3f2a9c1b7d4e")
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until the job ends.")
@click.pass_context
def events(ctx, job_id, follow):
    """Print a job's event log: submit, assign, accept, result, retry, speculate, finish (JSON lines)."""
    import json
    import time

    with _client(ctx) as c:
        job, offset = c.job(job_id), 0
        with _errors(), _detach_on_ctrl_c(job_id):
            while True:
                batch, offset = job.events(offset)
                for event in batch:
                    click.echo(json.dumps(event))
                if not follow or (not batch and job.done()):
                    return
                if not batch:
                    time.sleep(0.5)


@cli.command(epilog="Example: user-client watch 3f2a9c1b7d4e")
@click.argument("job_id")
@click.pass_context
def watch(ctx, job_id):
    """Follow a job with a live progress bar (shards or rounds, rate, ETA) until it ends."""
    with _client(ctx) as c:
        with _errors():
            job = c.job(job_id)
            job.status()  # an unknown job is named before a progress bar is drawn
            _wait_and_save(job, None, True)


@cli.command(epilog="Example: user-client cancel 3f2a9c1b7d4e")
@click.argument("job_id")
@click.pass_context
def cancel(ctx, job_id):
    """Cancel a job; running shards are told to stop."""
    with _client(ctx) as c:
        with _errors():
            s = c.job(job_id).cancel()
    click.echo(f"job {job_id} {s['status']}")


@cli.command(epilog="Example: user-client delete 3f2a9c1b7d4e")
@click.argument("job_id")
@click.pass_context
def delete(ctx, job_id):
    """Delete a finished job from the head (its arrays, events and record); cancel a running one first."""
    with _client(ctx) as c:
        with _errors():
            c.job(job_id).delete()
    click.echo(f"job {job_id} deleted")


@cli.command(epilog="Example: user-client jobs --state running")
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]))
@click.pass_context
def jobs(ctx, state):
    """List jobs."""
    with _client(ctx) as c:
        with _errors():
            rows = c.jobs(state)
    click.echo(table(rows, ["job_id", "task_type", "owner", "status", "done", "total", "reruns", "elapsed"]))


@cli.command(epilog="Example: user-client providers")
@click.pass_context
def providers(ctx):
    """List providers with their devices, slots and supported task types."""
    with _client(ctx) as c:
        with _errors():
            rows = c.providers()
    click.echo(table(rows, ["name", "platform", "device", "state", "slots", "free_slots", "gflops",
                            "shards_done", "link_mbit", "task_types"]))


@cli.command(epilog="Example: user-client demo --size 2048 --splits 2x2")
@click.option("--size", type=click.IntRange(1, 32768), default=2048, show_default=True, help="Matrix size N (NxN).")
@click.option("--splits", default="2x2", show_default=True, help="Split of the result.")
@click.option("--providers", "n_providers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--insecure", "demo_insecure", is_flag=True, help="Run the local cluster without security.")
def demo(size, splits, n_providers, demo_insecure):
    """Start a local cluster, multiply two random matrices on it, check against numpy, stop it."""
    from user_client.demo import run_demo

    with _errors():
        run_demo(size, splits, n_providers, insecure=demo_insecure)


def main() -> None:
    cli()
