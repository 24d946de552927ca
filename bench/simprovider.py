"""Simulated providers for bench/scale.py: hundreds of light provider loops in one process.

Each simulated provider speaks the real protocol (``common.protocol`` messages, ``common.sockets``
factory and send/receive) over its own four sockets, as ``common/provider/runtime.py`` does:
a SUB subscribed to its id before it registers, a registration REQ (Lazy Pirate: reopen and resend
after 5 s), a heartbeat REQ (one try per beat, 5 s timeout, the next beat one interval after the
last one ended) and a results PUSH. It takes single messages and batches on its SUB, acknowledges
probes, answers ``noop`` shards with a ``result`` (the arrays ``NoopTask.compute`` returns; an
``accepted`` first only for a shard that sleeps, as the runtime folds a quick shard's acceptance into
its result), keeps each result until a heartbeat reply acknowledges it and pushes it again after
three silent intervals. What it pushes goes through ``common.sockets.Outbox``, flushed once per loop
pass, so several small messages travel as one batch as the runtime's do.

No threads: one loop serves every provider of the process, waiting on the sockets' ZMQ_FD in epoll
(a ``zmq.Poller`` over a thousand sockets costs more per wake than the work it finds). A pass takes the
heartbeat replies first and, every ``SLICE_SECONDS`` of its shard work, the replies that came meanwhile and
the beats now due: a real provider's heartbeats have a thread of their own. The bench steers
each process over a pipe (``Simulators``: phase names, stop) and gets its figures back at the end:
heartbeat round trips per phase (from the send to the moment the loop saw the reply), timeouts,
"unknown" replies (the head had forgotten or buried the provider), shards answered, and the loop's own
lag (how late it sent a beat that was due).
"""

from __future__ import annotations

import heapq
import os
import random
import resource
import selectors
import sys
import time
import uuid
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import protocol, wire  # noqa: E402
from common.config import HeadAddress  # noqa: E402
from common.errors import DecodeError, TransportError  # noqa: E402
from common.protocol import MsgType  # noqa: E402
from common.sockets import Outbox, make_socket, recv_frames, send  # noqa: E402
from common.tasks.noop import NoopTask  # noqa: E402

REQUEST_TIMEOUT = 5.0  # as Timing.request_timeout: registration resend, heartbeat give-up
RESEND_AFTER_BEATS = 3  # as the runtime: an unacknowledged result is pushed again after this many intervals
ACCEPT_DELAY = 0.02  # as the runtime: a shard finished within this sends its result without an acceptance
SOCKETS_PER_PROVIDER = 4
NOOP = NoopTask()
#: a pass over the sockets serves the heartbeats at least this often: one process stands in for hundreds of
#: providers, each with a heartbeat thread of its own that shards being computed do not hold up
SLICE_SECONDS = 0.005


class SimProvider:
    """One provider's sockets and book; the fleet's loop drives it."""

    def __init__(self, fleet: "Fleet", name: str):
        self.fleet, self.name = fleet, name
        self.id = uuid.uuid4().hex
        self.topic = self.id.encode()  # insecure head: the topic is the provider id
        self.sub = fleet.socket(zmq.SUB, self, "sub", subscribe=self.topic, url=fleet.head.url("tasks"))
        self.push = make_socket(fleet.ctx, zmq.PUSH)
        self.push.connect(fleet.head.url("results"))
        self.out = Outbox(self.push, on_error=fleet.push_failed)  # the results it re-pushes cover a failure
        self.reg: zmq.Socket | None = None
        self.hb: zmq.Socket | None = None
        self.epoch = ""
        self.registered = False
        self.register_msg: protocol.Register | None = None
        self.reg_sent = 0.0
        self.reg_started = 0.0
        self.hb_sent: float | None = None  # a beat is in flight since then
        self.running: set[str] = set()  # shards accepted whose (simulated) compute has not ended
        self.outbox: dict[str, list] = {}  # task key -> [result message, last sent]
        self.computed = 0

    # -- registration ----------------------------------------------------------------

    def start_register(self, now: float) -> None:
        self.registered = False
        self.reg_started = now
        self.register_msg = protocol.Register(
            provider_id=self.id, name=self.name, platform=sys.platform, memory_bytes=8 << 30, cores=1, slots=1,
            devices=[{"kind": "cpu", "name": "simulated", "memory_bytes": 8 << 30, "index": 0}],
            gflops=1.0, torch=False, task_types=["noop"], version="sim")
        self._send_register(now)

    def _send_register(self, now: float) -> None:
        self.fleet.close(self.reg)  # Lazy Pirate: a REQ that missed its reply is stuck; a fresh one resends
        self.reg = self.fleet.socket(zmq.REQ, self, "reg", url=self.fleet.head.url("registration"))
        send(self.reg, self.register_msg)  # the same message id on every resend
        self.fleet.check.add(self.reg)
        self.reg_sent = now

    def on_registration_reply(self, msg: protocol.Message, now: float) -> None:
        if isinstance(msg, protocol.Ok):  # our deregistration was answered
            self.fleet.stats["deregistered"] += 1
            return
        if not isinstance(msg, protocol.Registered):
            self.fleet.stats["register_errors"] += 1
            self._send_register(now)
            return
        self.fleet.register_s.append(now - self.reg_started)
        self.epoch, self.registered = msg.epoch, True
        self.fleet.interval = msg.heartbeat_interval
        for key in list(self.outbox):  # a new epoch: re-send every unacknowledged result
            self._push(self.outbox[key][0], now)
            self.outbox[key][1] = now
        self.fleet.schedule_beat(self, now + msg.heartbeat_interval)

    def check_register(self, now: float) -> None:
        if not self.registered and self.reg is not None and now - self.reg_sent > REQUEST_TIMEOUT:
            self.fleet.stats["register_resends"] += 1
            self._send_register(now)

    # -- heartbeats ------------------------------------------------------------------

    def beat(self, now: float) -> None:
        if not self.registered or self.hb_sent is not None:
            return
        if self.hb is None:
            self.hb = self.fleet.socket(zmq.REQ, self, "hb", url=self.fleet.head.url("heartbeat"))
        msg = protocol.Heartbeat(provider_id=self.id, epoch=self.epoch, running=sorted(self.running),
                                 outbox=sorted(self.outbox), free_slots=0 if self.running else 1,
                                 load=self.fleet.load, computed=self.computed)
        send(self.hb, msg)
        self.hb_sent = time.monotonic()
        self.fleet.in_flight.add(self)
        self.fleet.check.add(self.hb)

    def on_heartbeat_reply(self, msg: protocol.Message, seen: float) -> None:
        if self.hb_sent is None:
            return
        self.fleet.record_rtt(seen - self.hb_sent)
        self.hb_sent = None
        self.fleet.in_flight.discard(self)
        now = time.monotonic()
        self.fleet.schedule_beat(self, now + self.fleet.interval)
        if not isinstance(msg, protocol.HeartbeatReply):
            self.fleet.stats["heartbeat_errors"] += 1
            return
        for key in msg.acked:
            self.outbox.pop(key, None)
        for key in msg.cancel:
            self.outbox.pop(key, None)
            self.running.discard(key)
        if not msg.known or msg.epoch != self.epoch:
            self.fleet.tally("unknown_replies")  # the head forgot us, or declared us dead
            self.start_register(now)
            return
        for entry in self.outbox.values():  # pushed long ago and never acknowledged: push again
            if now - entry[1] >= RESEND_AFTER_BEATS * self.fleet.interval:
                self.fleet.stats["results_resent"] += 1
                self._push(entry[0], now)
                entry[1] = now

    def check_heartbeat(self, now: float) -> None:
        if self.hb_sent is not None and now - self.hb_sent > REQUEST_TIMEOUT:
            self.fleet.tally("heartbeat_timeouts")
            self.fleet.close(self.hb)  # the next beat opens a fresh socket
            self.hb, self.hb_sent = None, None
            self.fleet.in_flight.discard(self)
            self.fleet.schedule_beat(self, now + self.fleet.interval)

    # -- tasks -----------------------------------------------------------------------

    def on_task_message(self, msg: protocol.Message, now: float) -> None:
        if isinstance(msg, protocol.Probe):
            received = time.monotonic() if msg.probe_id.startswith(protocol.LINK_PROBE_PREFIX) else 0.0
            self._push(protocol.ProbeAck(provider_id=self.id, probe_id=msg.probe_id, received=received), now)
        elif isinstance(msg, protocol.Task):
            self._on_task(msg, now)
        elif isinstance(msg, protocol.CancelTask):
            key = f"{msg.task_id}#{msg.attempt}"
            self.running.discard(key)
            self.outbox.pop(key, None)
            self.fleet.stats["cancels"] += 1

    def _on_task(self, msg: protocol.Task, now: float) -> None:
        key = f"{msg.task_id}#{msg.attempt}"
        ids = {"provider_id": self.id, "task_id": msg.task_id, "attempt": msg.attempt}
        if msg.task_type != "noop":
            self._push(protocol.Failure(**ids, error=f"task type {msg.task_type!r} is not simulated",
                                        retryable=False), now)
            return
        if key in self.running or key in self.outbox:
            self.fleet.stats["tasks_republished"] += 1  # our first acceptance was lost or late
            self._push(protocol.Accepted(**ids), now)
            return
        self.fleet.stats["tasks"] += 1
        params = msg.params
        try:
            out = NOOP.compute({**params, "sleep": 0}, msg.arrays, "cpu")  # the sleep is a timer, not a block
            result: protocol.Message = protocol.Result(**ids, elapsed=float(params.get("sleep") or 0.0), arrays=out)
        except Exception as e:  # noop's "fail" shards
            result = protocol.Failure(**ids, error=f"{type(e).__name__}: {e}")
        sleep = float(params.get("sleep") or 0.0)
        if sleep > 0:
            if sleep >= ACCEPT_DELAY:  # the result will not come soon enough to stand for the acceptance
                self._push(protocol.Accepted(**ids), now)
            self.running.add(key)
            self.fleet.later(now + sleep, self, key, result)
        else:
            self.finish(key, result, now)

    def finish(self, key: str, result: protocol.Message, now: float) -> None:
        self.running.discard(key)
        self.computed += 1
        self.outbox[key] = [result, now]
        self._push(result, now)
        self.fleet.stats["results"] += 1

    def _push(self, msg: protocol.Message, now: float) -> None:
        self.out.put(msg)
        self.fleet.dirty.add(self)

    def deregister(self) -> None:
        """On the registration socket, which has had its reply (a closed socket is reaped later, and
        until then it counts against the context's socket limit)."""
        send(self.reg, protocol.Deregister(provider_id=self.id, reason="shutdown"))
        self.fleet.check.add(self.reg)


class Fleet:
    """Every simulated provider of this process, and the one loop that serves them."""

    def __init__(self, head: HeadAddress, count: int, name: str, ramp: float, control):
        self.head, self.count, self.name, self.ramp, self.control = head, count, name, ramp, control
        self.ctx = zmq.Context(io_threads=2)
        # with room for sockets closed by Lazy Pirate retries that the reaper has not freed yet
        self.ctx.set(zmq.MAX_SOCKETS, 2 * SOCKETS_PER_PROVIDER * count + 64)
        self.selector = selectors.DefaultSelector()
        self.check: set[zmq.Socket] = set()  # sockets to look at without their fd firing (it is edge-triggered)
        self.owner: dict[zmq.Socket, tuple[SimProvider, str]] = {}
        self.interval = 1.0
        self.beats: list[tuple[float, int, SimProvider]] = []  # heap of (due, seq, provider)
        self.timers: list[tuple[float, int, SimProvider, str, protocol.Message]] = []
        self._seq = 0
        self.phase = "startup"
        self.rtt: dict[str, array] = {}
        self.lag: dict[str, array] = {}  # how late this loop sent a due beat: its own share of a round trip
        self.per_phase: dict[str, Counter] = {}
        self.stats: Counter[str] = Counter()
        self.register_s = array("d")
        self.load = 0.0
        self.providers: list[SimProvider] = []
        self.dirty: set[SimProvider] = set()  # providers holding messages to push at the end of this pass
        self.in_flight: set[SimProvider] = set()  # providers whose beat awaits its reply

    # -- sockets ---------------------------------------------------------------------

    def socket(self, kind: int, provider: SimProvider, role: str, url: str, subscribe: bytes | None = None):
        sock = make_socket(self.ctx, kind)
        if subscribe is not None:
            sock.setsockopt(zmq.SUBSCRIBE, subscribe)
        sock.connect(url)
        self.owner[sock] = (provider, role)
        self.selector.register(sock.getsockopt(zmq.FD), selectors.EVENT_READ, sock)
        self.check.add(sock)
        return sock

    def close(self, sock: zmq.Socket | None) -> None:
        if sock is None:
            return
        self.selector.unregister(sock.getsockopt(zmq.FD))
        self.check.discard(sock)
        del self.owner[sock]
        sock.close(linger=0)

    # -- bookkeeping -----------------------------------------------------------------

    def schedule_beat(self, provider: SimProvider, due: float) -> None:
        self._seq += 1
        heapq.heappush(self.beats, (due, self._seq, provider))

    def later(self, due: float, provider: SimProvider, key: str, result: protocol.Message) -> None:
        self._seq += 1
        heapq.heappush(self.timers, (due, self._seq, provider, key, result))

    def record_rtt(self, seconds: float) -> None:
        self.rtt.setdefault(self.phase, array("f")).append(seconds * 1000)

    def push_failed(self, _topic, count: int, _error) -> None:
        self.stats["push_failed"] += count

    def tally(self, name: str) -> None:
        self.per_phase.setdefault(self.phase, Counter())[name] += 1

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.selector.register(self.control.fileno(), selectors.EVENT_READ, None)
        start = time.monotonic()
        # registrations spread over the ramp, as machines coming up would; heartbeats follow each one's own
        starts = sorted(start + random.uniform(0, self.ramp) for _ in range(self.count))
        pending = list(reversed(starts))
        next_check = start
        while True:
            now = time.monotonic()
            due = min(t for t in (pending[-1] if pending else None, self.beats[0][0] if self.beats else None,
                                  self.timers[0][0] if self.timers else None, next_check) if t is not None)
            ready, control = self._wait(max(0.0, due - now) + 0.0005)
            seen = time.monotonic()
            if control and self._command(self.control.recv_bytes()) == "stop":
                return self._stop()
            # replies first; then the shards, in slices with the heartbeats' work between them
            ready.sort(key=lambda sock: self.owner.get(sock, (None, ""))[1] == "sub")
            slice_end = seen + SLICE_SECONDS
            for sock in ready:
                self._receive(sock, seen)
                if time.monotonic() >= slice_end:
                    self._heartbeats()
                    slice_end = time.monotonic() + SLICE_SECONDS
            now = time.monotonic()
            while pending and pending[-1] <= now:
                pending.pop()
                p = SimProvider(self, f"{self.name}-{len(self.providers)}")
                self.providers.append(p)
                p.start_register(now)
            self._send_due_beats(now)
            while self.timers and self.timers[0][0] <= now:
                _, _, p, key, result = heapq.heappop(self.timers)
                if key in p.running:  # not cancelled meanwhile
                    p.finish(key, result, now)
            if now >= next_check:
                next_check = now + 0.1
                self.load = os.getloadavg()[0]
                for p in self.providers:
                    p.check_heartbeat(now)
                    p.check_register(now)
            for p in self.dirty:
                p.out.flush()
            self.dirty.clear()

    def _send_due_beats(self, now: float) -> None:
        while self.beats and self.beats[0][0] <= now:
            when, _, p = heapq.heappop(self.beats)
            self.lag.setdefault(self.phase, array("f")).append((now - when) * 1000)
            p.beat(now)

    def _heartbeats(self) -> None:
        """In the middle of a pass: take the heartbeat replies that have come and send the beats now due, as
        each provider's own heartbeat thread would while its shards are computed."""
        now = time.monotonic()
        for p in list(self.in_flight):
            if p.hb is not None and p.hb.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                self._receive(p.hb, now)
        self._send_due_beats(now)

    def _wait(self, timeout: float) -> tuple[list[zmq.Socket], bool]:
        """Sockets with a message waiting, and whether the parent wrote; waits up to ``timeout`` for either.

        A socket's ZMQ_FD only says "look at ZMQ_EVENTS", and a send may swallow that signal, so a socket
        we sent on is looked at on the next pass whether or not its fd fired."""
        keys = self.selector.select(0 if self.check else timeout)
        look, self.check, control = self.check, set(), False
        for key, _ in keys:
            if key.data is None:
                control = True
            else:
                look.add(key.data)
        return [s for s in look if not s.closed and s.getsockopt(zmq.EVENTS) & zmq.POLLIN], control

    def _command(self, raw: bytes) -> str:
        command, _, arg = raw.decode().partition(" ")
        if command == "phase":
            self.phase = arg
        return command

    def _receive(self, sock: zmq.Socket, seen: float) -> None:
        entry = self.owner.get(sock)
        if entry is None:
            return
        p, role = entry
        while True:
            try:
                frames = recv_frames(sock, zmq.NOBLOCK)
            except TransportError:
                return
            if role == "sub" and frames[0].bytes != p.topic:
                continue  # SUB matches by prefix: not ours
            try:
                msg = wire.decode(frames, topic=role == "sub")
                msgs = wire.unbatch(msg) if msg.type is MsgType.BATCH else [msg]
            except DecodeError:
                self.stats["decode_errors"] += 1
                continue
            if role == "sub":
                for m in msgs:
                    p.on_task_message(m, seen)
            elif role == "hb":
                p.on_heartbeat_reply(msg, seen)
                return  # a REQ socket holds one reply
            else:
                p.on_registration_reply(msg, seen)
                return

    def _stop(self) -> dict[str, Any]:
        """Deregister everyone (answers awaited for up to 3 s), then report."""
        for p in self.dirty:
            p.out.flush()
        for p in self.providers:
            if p.registered:
                p.deregister()
        deadline = time.monotonic() + 3.0
        while self.stats["deregistered"] < sum(p.registered for p in self.providers) and time.monotonic() < deadline:
            for sock in self._wait(0.1)[0]:
                if self.owner.get(sock, (None, ""))[1] == "reg":
                    self._receive(sock, time.monotonic())
        usage = resource.getrusage(resource.RUSAGE_SELF)
        report = {
            "name": self.name, "providers": len(self.providers), "registered": sum(p.registered for p in self.providers),
            "rtt_ms": {phase: a.tobytes() for phase, a in self.rtt.items()},
            "lag_ms": {phase: a.tobytes() for phase, a in self.lag.items()},
            "per_phase": {phase: dict(c) for phase, c in self.per_phase.items()},
            "stats": dict(self.stats), "register_s": self.register_s.tobytes(),
            "cpu_s": usage.ru_utime + usage.ru_stime, "max_rss": usage.ru_maxrss * 1024,
        }
        self.ctx.destroy(linger=0)
        return report


def fleet_main(conn, host: str, base: int, count: int, name: str, ramp: float, seed: int) -> None:
    """A simulator process: ``count`` providers until the parent says stop; the report goes back on ``conn``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count * SOCKETS_PER_PROVIDER * 4 + 256  # each socket: its connection and a mailbox fd; retries
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    random.seed(seed)
    fleet = Fleet(HeadAddress(host, base), count, name, ramp, conn)
    conn.send(("started", os.getpid()))
    conn.send(("report", fleet.run()))


class Simulators:
    """The simulator processes, seen from the bench: start, change phase, stop and collect their reports.

    ``canaries`` providers get a process of their own: with a few providers to serve, its loop is never
    busy, so their round trips are the head's (and the machine's) alone."""

    def __init__(self, head: HeadAddress, providers: int, procs: int, ramp: float, canaries: int = 0):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        rest = providers - canaries
        counts = [("canary", canaries)] if canaries else []
        counts += [(f"sim{i}", rest // procs + (i < rest % procs)) for i in range(procs)]
        self.pipes, self.procs = [], []
        for seed, (name, count) in enumerate(counts):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=fleet_main, args=(child, head.host, head.base, count, name, ramp, seed),
                               name=f"zcompute-{name}", daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        self.pids = [pipe.recv()[1] for pipe in self.pipes]

    def phase(self, name: str) -> None:
        for pipe in self.pipes:
            pipe.send_bytes(f"phase {name}".encode())

    def stop(self) -> list[dict[str, Any]]:
        for pipe in self.pipes:
            try:
                pipe.send_bytes(b"stop")
            except OSError:  # that simulator is gone already
                pass
        reports = []
        for pipe in self.pipes:
            try:
                if pipe.poll(60):
                    reports.append(pipe.recv()[1])
            except (EOFError, OSError):  # that simulator died (its traceback is on stderr)
                pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        return reports

    def cpu_s(self) -> float:
        """CPU seconds the simulator processes have used so far."""
        import psutil

        total = 0.0
        for pid in self.pids:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total
