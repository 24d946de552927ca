"""``Client`` and ``JobHandle``: submit work to a head node and collect the answer."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zmq

from common import localdata, protocol
from common.config import DEFAULT_PORT_BASE, HeadAddress, env_default
from common.errors import ConfigError, JobCancelled, JobFailed, TransportError, ZComputeError
from common.logs import get_logger
from common.reqclient import ReqChannel
from common.security import Join

DEFAULT_HEAD = f"tcp://127.0.0.1:{DEFAULT_PORT_BASE}"
_TERMINAL = ("succeeded", "failed", "cancelled")
LOCAL_MIN_BYTES = 1 << 20  # arrays of a submit from this size up go by file to a head on this machine
LONG_POLL = 2.0  # seconds the head may hold a status request in wait(); it answers at once when the job ends
LONG_POLL_PROGRESS = 0.5  # the same when the caller shows progress
log = get_logger(__name__)


class Client:
    """A connection to a head node's client API; safe to share between threads.

    Credentials: ``join`` is the string from ``head-node invite --role client``
    (or ``@FILE``; default ``$ZCOMPUTE_JOIN``); it also names the head.
    ``insecure=True`` talks to a head started with ``--insecure``.
    ``head`` is ``tcp://HOST[:PORT_BASE]`` (default: the join's address,
    ``$ZCOMPUTE_HEAD`` or ``tcp://127.0.0.1:5555``). Requests time out after
    ``timeout`` seconds and are resent ``retries`` times on a fresh socket (Lazy Pirate).
    On the head's machine, large arrays go to and from the head's data directory
    as files instead of over the socket (``local_data=False`` turns that off).
    """

    def __init__(self, head: str | HeadAddress | None = None, *, join: str | Join | None = None,
                 insecure: bool = False, timeout: float = 30.0, retries: int = 3, compression: str = "auto",
                 local_data: bool = True):
        if not join and not insecure:
            join = env_default("JOIN")
            if not join:
                raise ConfigError("no credentials: pass join= (a string from `head-node invite --role client`) "
                                  "or insecure=True for a head started with --insecure")
        if isinstance(join, str):
            join = Join.decode(join)
        if insecure:
            join = None
        if not isinstance(head, HeadAddress):
            text = head or env_default("HEAD")
            head = HeadAddress.parse(text) if text else (join.address if join else HeadAddress.parse(DEFAULT_HEAD))
        self.address, self.insecure, self.join = head, insecure, join
        self._ctx = zmq.Context()
        self._lock = threading.Lock()
        self._timeout = timeout
        self._new_channel = lambda: ReqChannel(self._ctx, head.url("api"), timeout=timeout, retries=retries,
                                               compression=compression, curve=join.curve if join else None,
                                               token=join.token if join else None)
        self._channel = self._new_channel()
        self._waiters = threading.local()  # a channel per waiting thread: a held request blocks no other
        self._waiter_channels: list[ReqChannel] = []
        self._local: localdata.LocalFiles | None | bool = None if local_data else False  # None: not asked yet
        self._writers: ThreadPoolExecutor | None = None  # writes uploads, several at once (started on first use)
        self._writers_lock = threading.Lock()
        self._closed = False

    def request(self, msg: protocol.Message, **kwargs: Any) -> protocol.Message:
        with self._lock:
            return self._channel.request(msg, **kwargs)

    def status(self, job_id: str, wait: float = 0.0) -> dict[str, Any]:
        """A job's summary; with ``wait``, the head answers as soon as the job ends, or after ``wait`` s."""
        if wait <= 0:
            return self.request(protocol.Status(job_id=job_id)).job
        return self.held_request(protocol.Status(job_id=job_id, wait=wait)).job

    def held_request(self, msg: protocol.Status | protocol.Fetch) -> protocol.Message:
        """A request the head may hold for ``msg.wait`` s, on this thread's own channel: a held request
        blocks no other thread."""
        channel = getattr(self._waiters, "channel", None)
        if channel is None:
            channel = self._waiters.channel = self._new_channel()
            with self._lock:
                self._waiter_channels.append(channel)
        return channel.request(msg, timeout=self._timeout + msg.wait)

    def local_files(self) -> localdata.LocalFiles | None:
        """The head's data directory, if this client is on its machine and may use it (asked once)."""
        if self._local is None:
            reply = self.request(protocol.Stats())
            token = localdata.read_probe(reply.local_dir, reply.local_check)
            self._local = localdata.LocalFiles(reply.local_dir, token) if token else False
        return self._local or None

    # -- jobs ----------------------------------------------------------------

    def submit(self, task_type: str, params: dict[str, Any] | None = None,
               arrays: dict[str, np.ndarray] | None = None, priority: int = 0) -> "JobHandle":
        """Submit any task type; returns at once with a handle."""
        protocol.check_priority(priority)
        arrays = dict(arrays or {})
        msg = protocol.Submit(task_type=task_type, params=params or {}, priority=priority, arrays=arrays)
        local = self.local_files() if sum(_nbytes(a) for a in arrays.values()) >= LOCAL_MIN_BYTES else None
        if local is not None:  # the head takes them as files: one copy, no socket
            msg.local_arrays = _write_uploads(self._upload_pool(), local,
                                              {n: a for n, a in arrays.items() if isinstance(a, np.ndarray)})
            for name in msg.local_arrays:
                del arrays[name]
        try:
            reply = self.request(msg)
        except BaseException:
            if local is not None:  # the head deletes what it refused; this is for the unsent
                localdata.discard_uploads(local.root, msg.local_arrays.values())
            raise
        return JobHandle(self, reply.job_id)

    def matmul(self, a: np.ndarray, b: np.ndarray, splits: Any = "auto", priority: int = 0) -> "JobHandle":
        """C = A @ B; ``splits`` is ``(rows, cols)``, ``"RxC"``, a row count, or ``"auto"``."""
        if isinstance(splits, tuple):
            splits = list(splits)
        return self.submit("matmul", {"splits": splits}, {"a": np.asarray(a), "b": np.asarray(b)}, priority)

    def train(self, model: str, data: Any = "digits", *, epochs: int = 10, batch_size: int = 64, lr: float = 0.05,
              optimizer: str = "sgd", priority: int = 0, **options: Any) -> "TrainJob":
        """Data-parallel training of a torch model across the providers.

        ``data`` is ``(X, y)`` arrays or a name/path for ``user_client.datasets.load_dataset``
        (``"digits"``, ``.npz``, MNIST IDX). ``options``: momentum, weight_decay, seed, test_fraction,
        shards, local_steps, wire_dtype (float32/float16/bfloat16), round_timeout, min_shards.
        """
        from user_client.datasets import load_dataset

        x, y = load_dataset(data) if isinstance(data, (str, Path)) else data
        params = {"model": model, "epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
                  **options}
        handle = self.submit("train", params, {"x": np.asarray(x), "y": np.asarray(y)}, priority)
        return TrainJob(self, handle.id)

    def filemean(self, input: Any, fanin: int = 8, intermediate: str | None = None, upload: Any = "auto",
                 priority: int = 0) -> "JobHandle":
        """Element-wise mean of files (a directory, glob, list, or s3://... URLs) as a tree of partial sums
        with fan-in ``fanin``; ``result()`` is float64."""
        from user_client.filemean import submit_filemean

        return submit_filemean(self, input, fanin=fanin, intermediate=intermediate, upload=upload,
                               priority=priority)

    def job(self, job_id: str) -> "JobHandle":
        return JobHandle(self, job_id)

    def jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        """Summaries of your jobs (every job for an admin or viewer), oldest first; ``state`` filters."""
        return self._pages(lambda offset: protocol.ListJobs(state=state, offset=offset), "jobs")

    def providers(self) -> list[dict[str, Any]]:
        """Summaries of the providers that are joining, ready or draining."""
        return self._pages(lambda offset: protocol.ListProviders(offset=offset), "providers")

    def _pages(self, request: Callable[[int], protocol.Message], field: str) -> list[dict[str, Any]]:
        """Every item of a listing the head answers a page at a time (``next_offset``)."""
        out, offset = [], 0
        while True:
            reply = self.request(request(offset))
            out += getattr(reply, field)
            if reply.next_offset is None or reply.next_offset <= offset:
                return out
            offset = reply.next_offset

    def stats(self) -> dict[str, Any]:
        """The head's counters since it started (rejections, reassignments, speculative launches...)."""
        reply = self.request(protocol.Stats())
        return {"epoch": reply.epoch, **reply.counters}

    def _upload_pool(self) -> ThreadPoolExecutor:
        with self._writers_lock:
            if self._closed:
                raise ZComputeError("the client is closed")
            if self._writers is None:
                self._writers = ThreadPoolExecutor(4, thread_name_prefix="zcompute-upload")
            return self._writers

    def close(self) -> None:
        with self._writers_lock:
            self._closed, writers = True, self._writers
        if writers is not None:
            writers.shutdown()
        for channel in [self._channel, *self._waiter_channels]:
            channel.close()
        self._ctx.term()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _write_uploads(pool: ThreadPoolExecutor, local: localdata.LocalFiles,
                   arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Each array into the head's uploads directory, several at once (a copy into the page cache each, and
    numpy writes without the GIL); if one fails, or the wait is interrupted (Ctrl-C), none is left behind."""
    futures = {name: pool.submit(localdata.write_upload, local.root, arr) for name, arr in arrays.items()}
    try:
        wait_all(futures.values())
    except BaseException:
        for f in futures.values():
            f.cancel()
        wait_all(futures.values())  # a writer cannot be stopped mid-file: let it finish, then remove the file
        localdata.discard_uploads(local.root, [f.result() for f in futures.values()
                                               if not f.cancelled() and f.exception() is None])
        raise
    written = {name: f.result() for name, f in futures.items() if f.exception() is None}
    if len(written) < len(futures):
        localdata.discard_uploads(local.root, written.values())
        raise next(f.exception() for f in futures.values() if f.exception() is not None)
    return written


def _nbytes(value: Any) -> int:
    return value.nbytes if isinstance(value, np.ndarray) else 0


class JobHandle:
    """A submitted job. ``result()`` waits for it and returns its output."""

    def __init__(self, client: Client, job_id: str):
        self.client, self.id = client, job_id

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    def status(self) -> dict[str, Any]:
        """The job's summary: ``status``, ``done``/``total`` shards, ``error``, timings."""
        return self.client.status(self.id)

    def done(self) -> bool:
        return self.status()["status"] in _TERMINAL

    def cancel(self) -> dict[str, Any]:
        return self.client.request(protocol.CancelJob(job_id=self.id)).job

    def delete(self) -> None:
        """Delete the finished job from the head: its arrays, its events and its record. An unfinished job
        is refused (cancel it first); the head also deletes finished jobs by itself after its
        ``--keep-finished`` time (7 days by default)."""
        self.client.request(protocol.DeleteJob(job_id=self.id))

    def events(self, offset: int = 0, limit: int = 500) -> tuple[list[dict[str, Any]], int]:
        """The job's event log from line ``offset``: (events, next offset)."""
        reply = self.client.request(protocol.Events(job_id=self.id, offset=offset, limit=limit))
        return reply.events, reply.next_offset

    def wait(self, timeout: float | None = None,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll until the job ends; raises ``TimeoutError``, ``JobFailed`` or ``JobCancelled``.

        An unreachable head (restarting, say) does not end the wait: the job is journaled there.
        """
        hold = LONG_POLL_PROGRESS if on_progress is not None else LONG_POLL
        ask = lambda wait: protocol.Status(job_id=self.id, wait=wait)  # noqa: E731
        return self._until_done(ask, timeout, hold, on_progress).job

    def outputs(self, timeout: float | None = None) -> dict[str, np.ndarray]:
        """Every output array of the job, after waiting for it: one held ``fetch`` answers with them as soon
        as the job ends (errors as ``wait``)."""
        local = self.client.local_files()
        ask = lambda wait: protocol.Fetch(job_id=self.id, local=local is not None, wait=wait)  # noqa: E731
        reply = self._until_done(ask, timeout, LONG_POLL)
        # on the head's machine: the output files themselves, mapped copy-on-write (no bytes sent)
        mapped = {name: local.array(ref, mode="c") for name, ref in reply.local_arrays.items()}
        return {**reply.arrays, **mapped}

    def _until_done(self, ask: Callable[[float], protocol.Status | protocol.Fetch], timeout: float | None,
                    hold: float, on_progress: Callable[[dict[str, Any]], None] | None = None) -> protocol.Message:
        """Send ``ask(wait)`` (held up to ``wait`` s by the head) until the job has succeeded; its last reply."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = hold if deadline is None else min(hold, max(0.0, deadline - time.monotonic()))
            try:
                reply = self.client.held_request(ask(wait))
            except TransportError as e:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"job {self.id}: head unreachable until the timeout ({e})") from e
                log.warning("job.head_unreachable", job_id=self.id, error=str(e))
                time.sleep(0.5)
                continue
            summary = reply.job
            if on_progress is not None:
                on_progress(summary)
            if summary["status"] == "failed":
                raise JobFailed(f"job {self.id} failed: {summary['error']}")
            if summary["status"] == "cancelled":
                raise JobCancelled(f"job {self.id} was cancelled")
            if summary["status"] == "succeeded":
                return reply
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} not finished after {timeout}s "
                                   f"({summary['done']}/{summary['total']} shards)")

    def result(self, timeout: float | None = None) -> np.ndarray | dict[str, np.ndarray]:
        """The job's output: the array itself when there is one, else a dict of arrays."""
        arrays = self.outputs(timeout)
        return next(iter(arrays.values())) if len(arrays) == 1 else arrays


class TrainJob(JobHandle):
    """A training job: ``metrics()`` while it runs, ``result()`` is the trained ``state_dict``."""

    def metrics(self) -> list[dict[str, Any]]:
        """One entry per round: step, epoch, loss, train_acc, and test_acc at the end of each epoch."""
        return self.client.request(protocol.Fetch(job_id=self.id)).meta.get("history", [])

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The state_dict: torch tensors when torch is installed here, else numpy arrays."""
        arrays = self.outputs(timeout)
        try:
            import torch
        except ImportError:
            return dict(arrays)
        return {name: torch.from_numpy(np.array(arr)) for name, arr in arrays.items()}
