"""The provider: registers, takes shards from its SUB topic, computes them, pushes results.

Threads: the main loop owns the SUB and PUSH sockets; ``slots`` worker
threads compute; the heartbeat thread has its own REQ socket. Workers hand
results to the main loop through a queue and wake it over inproc.
"""

from __future__ import annotations

import os
import platform
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import zmq

from common import __version__, codec, localdata, protocol, wire
from common.config import ProviderConfig
from common.errors import DecodeError, ZComputeError
from common.faults import FAULTS
from common.logs import get_logger
from common.protocol import MsgType
from common.provider.book import TaskBook
from common.provider.cache import ArrayCache
from common.provider.devices import (
    Device, accelerator_possible, choose_device, import_torch, measure_gflops, probe_devices, torch_installed,
)
from common.provider import inplace
from common.provider.heartbeat import HeartbeatThread
from common.provider.identity import provider_id as load_provider_id
from common.reqclient import ReqChannel
from common.security import topic_for
from common.sockets import Outbox, make_socket, recv_frames
from common.tasks import TaskType, load_task_types
from common.tasks.base import writes_into

log = get_logger("provider")
RESEND_AFTER_BEATS = 3  # an unacknowledged result is pushed again after this many heartbeat intervals
DRAIN_SECONDS = 30.0  # longest a graceful stop waits for running shards to finish and be acknowledged
#: an acceptance waits this long for its shard's result, which says the same and more (tiny shards: one
#: message a shard instead of two); far below the head's ack timeout (seconds)
ACCEPT_DELAY = 0.02


def task_key(msg: protocol.Task | protocol.CancelTask | protocol.Result | protocol.Failure) -> str:
    return f"{msg.task_id}#{msg.attempt}"


class Provider:
    def __init__(self, config: ProviderConfig, task_types: dict[str, TaskType] | None = None,
                 devices: list[Device] | None = None, torch=...):
        self.config = config
        if config.link_mbit:
            codec.set_link_speed(config.link_mbit * 1e6)
        self.id = load_provider_id(config.data_dir)
        self.name = config.name or f"{platform.node()}-{self.id[:6]}"
        # torch sizes its intra-op pool from this when first imported, in any thread
        os.environ.setdefault("OMP_NUM_THREADS", str(config.blas_threads))
        if torch is ...:  # import torch (seconds) only where it may find a GPU; tasks import it when they run
            self.has_torch = torch_installed()
            self.torch = import_torch() if self.has_torch and accelerator_possible(config.device) else None
        else:
            self.torch, self.has_torch = torch, torch is not None
        self.devices = devices if devices is not None else probe_devices(self.torch)
        self.device, why = choose_device(config.device, self.devices, self.has_torch)
        log.info("device.chosen", provider_id=self.id, device=self.device.torch_name, name=self.device.name, why=why)
        tasks = task_types if task_types is not None else load_task_types()
        self.tasks = {n: t for n, t in tasks.items() if self.has_torch or not t.needs_torch}
        self.book = TaskBook(config.slots)
        self.cache = ArrayCache(config.cache_bytes)
        self.ctx = zmq.Context()
        self.stop_event = threading.Event()
        self.registered = threading.Event()
        self._results: queue.SimpleQueue[protocol.Message] = queue.SimpleQueue()
        self._accepts: dict[str, tuple[protocol.Accepted, float]] = {}  # key -> (message, send by)
        self._wake_url = f"inproc://wake-{self.id}"
        self._local = threading.local()
        self._new_epoch = threading.Event()
        self.draining = threading.Event()
        self._executor = ThreadPoolExecutor(config.slots, thread_name_prefix="slot")
        self.gflops = 0.0
        self.heartbeat: HeartbeatThread | None = None
        self.local: localdata.LocalFiles | None = None  # the head's files, when they are on this machine
        join = config.join
        self.curve = join.curve if join is not None else None
        self.token = join.token if join is not None else None
        # the head accepts a subscription only to the topic of our own CURVE key (or our id, insecure)
        self.topic = (topic_for(join.public, self.id) if join is not None else self.id).encode()

    # -- lifecycle -----------------------------------------------------------------

    def run(self) -> None:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=self.config.blas_threads):
            if self.torch is not None:  # torch keeps its own thread pool
                self.torch.set_num_threads(self.config.blas_threads)
            self.gflops = measure_gflops()
            self._open_sockets()
            try:
                self._register()
                self._start_heartbeat()
                self._loop()
            finally:
                self._shutdown()

    def stop(self) -> None:
        """First call: drain (finish held shards, report them, take nothing new). Second call: stop now."""
        if self.draining.is_set() or not self.registered.is_set():
            self.stop_event.set()  # second signal, or nothing to drain: stop now
        self.draining.set()
        log.info("provider.draining", provider_id=self.id)

    def _open_sockets(self) -> None:
        head, limits = self.config.head, self.config.limits
        self.sub = make_socket(self.ctx, zmq.SUB, limits=limits, curve=self.curve)
        self.sub.setsockopt(zmq.SUBSCRIBE, self.topic)
        self.sub.connect(head.url("tasks"))
        self.push = make_socket(self.ctx, zmq.PUSH, limits=limits, curve=self.curve)
        self.push.connect(head.url("results"))
        # the outbox pushes results again until the head acknowledges them, so a failed send is only logged
        self.out = Outbox(self.push, compression=self.config.compression, limits=limits,
                          on_error=lambda _topic, count, e: log.warning("result.send_failed", provider_id=self.id,
                                                                       messages=count, error=str(e)))
        self.wake = make_socket(self.ctx, zmq.PULL)
        self.wake.bind(self._wake_url)
        self.reg = ReqChannel(self.ctx, head.url("registration"), timeout=self.config.timing.request_timeout,
                              retries=None, limits=limits, stop=self.stop_event, curve=self.curve,
                              token=self.token)

    def _register(self) -> None:
        msg = protocol.Register(
            provider_id=self.id, name=self.name, platform=platform.system().lower(),
            devices=[d.as_dict() for d in self.devices], memory_bytes=self.devices[-1].memory_bytes,
            cores=_cores(), slots=self.config.slots, gflops=self.gflops, torch=self.has_torch,
            task_types=sorted(self.tasks), version=__version__,
        )
        reply = self.reg.request(msg)
        assert isinstance(reply, protocol.Registered)
        if self.heartbeat is not None:
            self.heartbeat.epoch = reply.epoch
        self.epoch, self.interval = reply.epoch, reply.heartbeat_interval
        token = localdata.read_probe(reply.local_dir, reply.local_check)
        self.local = localdata.LocalFiles(reply.local_dir, token) if token else None
        log.info("provider.registered", provider_id=self.id, name=self.name, epoch=reply.epoch,
                 head=str(self.config.head), gflops=round(self.gflops, 1), local=self.local is not None)
        self.registered.set()

    def _on_link(self, mbit: float | None) -> None:
        """The head's figure for our link (its probe's reading, or its operator's ``--link-mbit``): our results
        are encoded for it, unless we were given our own ``--link-mbit`` (a link slower one way)."""
        if self.config.link_mbit is not None:
            return
        if mbit is not None and mbit > 0:
            self.out.link_bits[None] = mbit * 1e6
        else:
            self.out.link_bits.pop(None, None)

    def _start_heartbeat(self) -> None:
        t = self.config.timing
        self.heartbeat = HeartbeatThread(
            self.ctx, self.config.head.url("heartbeat"), self.id, self.book,
            interval=self.interval, timeout=max(t.request_timeout, self.interval), on_unknown=self._on_unknown,
            on_cancel=self.book.cancel, on_forget=self.cache.forget_jobs, on_link=self._on_link,
            stop=self.stop_event, limits=self.config.limits,
            draining_fn=self.draining.is_set, curve=self.curve, token=self.token)
        self.heartbeat.epoch = self.epoch
        self.heartbeat.start()

    def _on_unknown(self, epoch: str) -> None:
        self._new_epoch.set()

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.wake, zmq.POLLIN)
        handlers = {MsgType.TASK: self._on_task, MsgType.CANCEL_TASK: self._on_cancel, MsgType.PROBE: self._on_probe}
        resend_after = RESEND_AFTER_BEATS * self.interval
        next_resend = time.monotonic() + resend_after
        drain_deadline = None
        while not self.stop_event.is_set():
            if self.draining.is_set():
                drain_deadline = drain_deadline or time.monotonic() + DRAIN_SECONDS
                if self.book.idle or time.monotonic() > drain_deadline:
                    break
            wait = min((by for _, by in self._accepts.values()), default=time.monotonic() + 0.1) - time.monotonic()
            ready = dict(poller.poll(max(0.0, min(wait, 0.1)) * 1000))
            if self.sub in ready:
                self._drain_sub(handlers)
            if self.wake in ready:
                while self.wake.poll(0):
                    self.wake.recv()
            self._flush_results()
            self._send_accepts(time.monotonic())
            if self._new_epoch.is_set():
                self._new_epoch.clear()
                self.registered.clear()
                self._register()
                self._resend(self.book.due(0.0))
            if time.monotonic() >= next_resend and self._head_answered_since(next_resend - resend_after):
                # only while the head answers: a partition must not pile up copies in the PUSH queue
                self._resend(self.book.due(resend_after))
                next_resend = time.monotonic() + resend_after
            self.out.flush()  # what this pass accepted, finished and re-sent: one message

    def _head_answered_since(self, moment: float) -> bool:
        last = self.heartbeat.last_reply if self.heartbeat is not None else None
        return last is not None and last >= moment

    def _shutdown(self) -> None:
        if hasattr(self, "out"):
            self._send_accepts(float("inf"))
            self.out.flush()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.registered.is_set():
            try:
                self.reg.request(protocol.Deregister(provider_id=self.id, reason="shutdown"), retries=0, timeout=1.0)
            except ZComputeError:
                pass
        self.stop_event.set()
        if self.heartbeat is not None:
            self.heartbeat.join(timeout=5)
        self.reg.close()
        self.ctx.destroy(linger=0)  # also closes the workers' wake sockets
        log.info("provider.stopped", provider_id=self.id)

    # -- messages ----------------------------------------------------------------

    def _drain_sub(self, handlers) -> None:
        while self.sub.poll(0):
            frames = recv_frames(self.sub)
            if frames[0].bytes != self.topic:
                continue  # SUB matches by prefix: not ours
            try:
                msg = wire.decode(frames, topic=True, limits=self.config.limits)
                msgs = wire.unbatch(msg) if msg.type is MsgType.BATCH else [msg]
            except DecodeError as e:
                log.warning("message.rejected", provider_id=self.id, error=str(e))
                continue
            for msg in msgs:
                handler = handlers.get(msg.type)
                if handler is None:
                    log.warning("message.unexpected", provider_id=self.id, type=msg.type.value)
                    continue
                handler(msg)

    def _on_probe(self, msg: protocol.Probe) -> None:
        # a link probe is timed on our clock: the head's receipt of a batch of acknowledgements says nothing
        received = time.monotonic() if msg.probe_id.startswith(protocol.LINK_PROBE_PREFIX) else 0.0
        self._send(protocol.ProbeAck(provider_id=self.id, probe_id=msg.probe_id, received=received,
                                     local_proof=self.local.proof if self.local is not None else ""))

    def _on_cancel(self, msg: protocol.CancelTask) -> None:
        self.book.cancel(task_key(msg))
        log.info("task.cancelled", provider_id=self.id, task_id=msg.task_id, attempt=msg.attempt)

    def _on_task(self, msg: protocol.Task) -> None:
        key = task_key(msg)
        if self.draining.is_set():
            return  # not accepted: the head re-publishes it elsewhere once we deregister
        accepted = protocol.Accepted(provider_id=self.id, task_id=msg.task_id, attempt=msg.attempt)
        if msg.task_type not in self.tasks:
            self._send(protocol.Failure(provider_id=self.id, task_id=msg.task_id, attempt=msg.attempt,
                                        error=f"task type {msg.task_type!r} is not supported here", retryable=False))
            return
        arrays = self._with_cached_inputs(msg)
        if arrays is None:
            self._send(protocol.Failure(provider_id=self.id, task_id=msg.task_id, attempt=msg.attempt,
                                        error="cached input evicted", code="cache_miss"))
            return
        try:
            arrays.update(inplace.local_inputs(self.local, msg.params.get("_local", {})))
        except (OSError, ValueError) as e:
            log.warning("task.local_unavailable", provider_id=self.id, task_id=msg.task_id, error=str(e))
            self._send(protocol.Failure(provider_id=self.id, task_id=msg.task_id, attempt=msg.attempt,
                                        error=f"cannot open the head's files: {e}", code="local_unavailable"))
            return
        msg.arrays = arrays
        if not self.book.start(key):
            self._send(accepted)  # a re-published copy: our first acceptance was lost
            return
        self._accepts[key] = (accepted, time.monotonic() + ACCEPT_DELAY)
        log.debug("task.accepted", provider_id=self.id, job_id=msg.job_id, task_id=msg.task_id, attempt=msg.attempt)
        self._executor.submit(self._compute, msg, key)

    def _with_cached_inputs(self, msg: protocol.Task) -> dict[str, np.ndarray] | None:
        """The task's arrays, completed from the cache; None if a cached one is gone."""
        arrays = dict(msg.arrays)
        for name, key in msg.params.get("_cached", {}).items():
            arr = self.cache.get(key)
            if arr is None:
                return None
            arrays[name] = arr
        for name, key in msg.params.get("_cache", {}).items():
            if name in arrays:
                self.cache.put(key, arrays[name])
        return arrays

    def _compute(self, msg: protocol.Task, key: str) -> None:
        """Runs on a worker thread."""
        if self.book.is_cancelled(key):
            self.book.finish(key, protocol.Ok())  # dropped: cancelled while it waited
            return
        start = time.perf_counter()
        if FAULTS.delay.get("compute"):
            time.sleep(FAULTS.delay["compute"])  # a slow provider, for fault tests
        try:
            task = self.tasks[msg.task_type]
            refs = msg.params.get("_local_out", {})
            targets = inplace.output_targets(self.local, refs, self.id)
            into = {"out": targets} if targets and writes_into(task) else {}
            out = dict(task.compute(msg.params, msg.arrays, self.device.torch_name, **into))
            written = inplace.write_in_place(self.local, refs, targets, out, self.id)
            reply: protocol.Message = protocol.Result(provider_id=self.id, task_id=msg.task_id, attempt=msg.attempt,
                                                      elapsed=time.perf_counter() - start, arrays=out,
                                                      written=written)
        except Exception as e:  # the shard's failure is reported, the provider carries on
            log.warning("task.failed", provider_id=self.id, job_id=msg.job_id, task_id=msg.task_id, error=repr(e))
            reply = protocol.Failure(provider_id=self.id, task_id=msg.task_id, attempt=msg.attempt,
                                     error=f"{type(e).__name__}: {e}")
        if self.book.finish(key, reply):
            self._results.put(reply)
            self._wake_main()

    def _wake_main(self) -> None:
        sock = getattr(self._local, "wake", None)
        if sock is None:
            sock = self._local.wake = make_socket(self.ctx, zmq.PUSH)
            sock.connect(self._wake_url)
        sock.send(b"", zmq.NOBLOCK)

    def _flush_results(self) -> None:
        while True:
            try:
                msg = self._results.get_nowait()
            except queue.Empty:
                return
            self._accepts.pop(task_key(msg), None)  # the result says it was accepted
            self._send(msg)

    def _send_accepts(self, now: float) -> None:
        """Acceptances whose shard has not finished within ``ACCEPT_DELAY``."""
        due = [key for key, (_, by) in self._accepts.items() if by <= now]
        for key in due:
            self._send(self._accepts.pop(key)[0])

    def _resend(self, msgs: list[protocol.Message]) -> None:
        for msg in msgs:
            log.info("result.resent", provider_id=self.id, task_id=getattr(msg, "task_id", None))
            self._send(msg)

    def _send(self, msg: protocol.Message) -> None:
        """Queue ``msg`` for the head; the loop flushes small ones as one batch each pass."""
        msg.token = self.token
        self.out.put(msg)


def _cores() -> int:
    return os.cpu_count() or 1
