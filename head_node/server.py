"""The head node: binds the five sockets, routes messages to handlers, runs the timers; what the scheduler's
actions do to jobs is in ``head_node/actions.py``.

One thread owns every socket (ZeroMQ sockets are not thread-safe); it polls,
drains what is readable, and ticks the scheduler's clock between polls.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from typing import Any, Callable

import zmq

from common import codec, localdata, protocol, wire
from common.config import HeadConfig
from common.errors import AuthError, DecodeError, RequestError, TransportError
from common.lifecycle import DataDirLock
from common.logs import get_logger
from common.protocol import MsgType
from common.codec import STATS as ARRAY_STATS
from common.sockets import Outbox, frames_bytes, make_socket, recv_frames, send, split_envelope
from common.tasks import TaskType, load_task_types, torchmodels
from head_node.actions import JobActions
from head_node.api import ClientApi, Held
from head_node.auth import HeadAuth, user_id
from head_node.keystore import KeyStore, default_advertise
from head_node.events import SchedulerConfig, Tick
from head_node.jobs import Job
from head_node.eventlog import EventLog
from head_node.guard import SocketGuard
from head_node.commit import GroupCommit
from head_node.journal import Journal
from head_node.loopwatch import GcWatch, LoopWatch
from head_node.recovery import recover
from head_node.retention import Retention
from head_node.providers import ProviderChannel
from head_node.scheduler import Scheduler

TICK_SECONDS = 0.05
SNAPSHOT_SECONDS = 0.5  # how fresh the dashboard's view is
#: merged shards are journaled (outputs flushed, then one transaction) at least this often; also before
#: a heartbeat's results are acknowledged, a round ends or a job finishes
COMMIT_SECONDS = 0.2
#: counters reported from the start, at 0, so a reader never meets a missing key
COUNTERS = (
    "jobs_submitted", "jobs_succeeded", "jobs_failed", "jobs_cancelled", "jobs_deleted", "tasks_accepted",
    "task_failures", "reassignments", "speculative_launches", "results_fenced", "providers_dead", "publish_dropped",
    "auth_failures", "handshake_failures", "handshakes_abandoned", "rejected_bad_message", "rejected_bad_result",
    "rejected_auth", "internal_errors", "cached_arrays_reused", "shards_dropped", "bytes_sent", "bytes_received",
    "subscriptions_refused", "batches_received", "local_arrays_sent", "local_arrays_written", "local_uploads",
    "local_fetches",
)
_DRAIN = 256  # messages taken from one socket before looking at the others
_DRAIN_SECONDS = 0.01  # ... or this long: a queue of result batches must not hold heartbeats back

Handler = Callable[[protocol.Message], protocol.Message | None]


class HeadNode(JobActions):
    def __init__(self, config: HeadConfig, task_types: dict[str, TaskType] | None = None):
        self.config = config
        self._data_lock = DataDirLock(config.data_dir, "head")  # before anything there is read or written
        try:
            self._start(config, task_types)
        except BaseException:
            self._data_lock.release()
            raise

    def _start(self, config: HeadConfig, task_types: dict[str, TaskType] | None) -> None:
        if config.link_mbit:
            codec.set_link_speed(config.link_mbit * 1e6)
        torchmodels.allow_factories(config.allow_models)  # what a client's train job may make this process call
        self.log = get_logger("head")
        self.epoch = protocol.new_id()[:12]
        self.tasks = task_types if task_types is not None else load_task_types()
        t = config.timing
        self.sched = Scheduler(SchedulerConfig(
            heartbeat_interval=t.heartbeat_interval, liveness=t.liveness, dead_after=t.dead_after,
            ack_timeout=t.ack_timeout, max_attempts=config.max_attempts, speculate=config.speculate,
            speculate_after=config.speculate_after, straggler_factor=config.straggler_factor,
            prefetch=config.prefetch,
        ))
        self.jobs: dict[str, Job] = {}
        self.counters: Counter[str] = Counter({name: 0 for name in COUNTERS})
        self.journal = Journal(config.data_dir / "journal.sqlite")
        self.events = EventLog(config.data_dir / "jobs")
        self.commit = GroupCommit(self.journal, self.jobs, self.log)  # merged shards -> disk -> journal
        self._in_batch = False  # handling a batch of results: assignments wait for its end
        self.loop_watch = LoopWatch(self.log)  # how long heartbeats may wait while the loop is busy
        self.gc_watch = GcWatch(self.log)  # ... and how long the garbage collector holds it
        self.gc_watch.start()
        # a long handler (a submit of thousands of shards) calls this between its steps; the loop sets it
        self.serve_heartbeats: Callable[[], None] = lambda: None
        self.ctx = zmq.Context()
        self._stop = threading.Event()
        self.ready = threading.Event()
        self.sockets: dict[str, zmq.Socket] = {}
        self.outbox: Outbox | None = None  # the tasks socket's, once bound
        self._guard: SocketGuard | None = None  # secured heads: handshake monitors, subscription checks
        self.snapshot: dict[str, Any] = {}
        self._http = None
        self._next_snapshot = 0.0
        self._next_commit = 0.0
        self._local_offer: dict[str, str] = {}  # what registered/stats_reply tell a peer on this machine
        self._local_proof = ""  # what such a peer answers
        if config.local_data:
            token = localdata.write_probe(config.data_dir)
            self._local_offer = {"local_dir": str(config.data_dir.resolve()), "local_check": localdata.check_of(token)}
            self._local_proof = localdata.proof_of(token)
        self.keystore = KeyStore(config.data_dir)
        if not config.insecure and not self.keystore.initialized:
            self.keystore.init(default_advertise(config))
            self.log.info("head.initialized", data_dir=str(config.data_dir),
                          admin_join=str(config.data_dir / "admin.join"))
        self.auth = HeadAuth(self.keystore, config.insecure, config.allow_any_key)
        self.providers = ProviderChannel(self)
        self.api = ClientApi(self)
        self.retention = Retention(self)
        self.retention.finish_interrupted()
        recover(self)
        self.retention.announce()

    # -- peers on this machine (common/localdata.py) ----------------------------

    def local_offer(self) -> dict[str, str]:
        """The fields of ``registered`` and ``stats_reply`` that let a peer on this machine prove it is."""
        return self._local_offer

    def is_local_proof(self, proof: str) -> bool:
        return bool(self._local_proof and proof) and secrets.compare_digest(proof, self._local_proof)

    # -- sockets -------------------------------------------------------------

    def bind(self) -> None:
        # secured: an XPUB that applies only subscriptions to the subscriber's own topic (see _on_subscription)
        kinds = {"registration": zmq.ROUTER, "heartbeat": zmq.ROUTER,
                 "tasks": zmq.PUB if self.config.insecure else zmq.XPUB, "results": zmq.PULL, "api": zmq.ROUTER}
        self.auth.start(self.ctx)  # the ZAP handler must exist before the first handshake
        if self.config.insecure:
            self.log.warning("head.INSECURE", detail="encryption and tokens are OFF: anyone who can reach "
                             "these ports can submit jobs and read results; use only on a trusted lab network")
        for role, kind in kinds.items():
            sock = make_socket(self.ctx, kind, limits=self.config.limits, server=True, curve=self.auth.curve,
                               zap_domain=role)
            try:
                sock.bind(self.config.bind_url(role))
            except zmq.ZMQError as e:
                sock.close()
                self.close()
                raise TransportError(f"cannot bind the {role} socket on {self.config.bind_url(role)}: {e}") from e
            self.sockets[role] = sock
        self.outbox = Outbox(self.sockets["tasks"], compression=self.config.compression, limits=self.config.limits,
                             on_error=self._publish_failed)
        if not self.config.insecure:
            self.sockets["tasks"].setsockopt(zmq.XPUB_MANUAL, 1)
            self._guard = SocketGuard(self.sockets, self.counters, self.log)
        try:
            self._http = self._start_http()
        except TransportError:
            self.close()
            raise
        self.log.info("head.listening", epoch=self.epoch, host=self.config.bind_host,
                      ports=[self.config.port_base + i for i in range(len(kinds))],
                      task_types=sorted(self.tasks), data_dir=str(self.config.data_dir))

    def publish(self, provider_id: str, msg: protocol.Message) -> None:
        """Queue ``msg`` for the provider's topic; small messages go out batched when the loop flushes."""
        self.counters["bytes_sent"] += self.outbox.put(msg, topic=self.providers.topic(provider_id))

    def flush(self) -> None:
        if self.outbox is not None:  # (a head not bound yet: nothing is held)
            self.counters["bytes_sent"] += self.outbox.flush()

    def _publish_failed(self, topic: str | None, count: int, error: TransportError) -> None:
        # PUB drops at the high-water mark; the ack timeout re-publishes
        self.counters["publish_dropped"] += count
        self.log.warning("task.publish_dropped", topic=topic, messages=count, error=str(error))

    # -- loop ----------------------------------------------------------------

    def serve_forever(self) -> None:
        if not self.sockets:
            self.bind()
        routes: dict[zmq.Socket, Callable[[zmq.Socket], None]] = {
            self.sockets["registration"]: lambda s: self._serve_request(s, self.providers.registration_handlers,
                                                                        small=True),
            self.sockets["heartbeat"]: lambda s: self._serve_request(s, self.providers.heartbeat_handlers, small=True),
            self.sockets["results"]: self._serve_results,
            self.sockets["api"]: lambda s: self._serve_request(s, self.api.handlers),
        }
        if self._guard is not None:
            routes.update(self._guard.routes())
        poller = zmq.Poller()
        for sock in routes:
            poller.register(sock, zmq.POLLIN)
        heartbeats, watch = self.sockets["heartbeat"], self.loop_watch
        self.serve_heartbeats = lambda: drain(heartbeats)

        def drain(sock: zmq.Socket) -> None:
            """Serve what ``sock`` has queued: heartbeats all (they are cheap and decide who is alive; a tick's
            worth of time at most, so a flood cannot starve the rest), any other at most a batch."""
            beats = sock is heartbeats
            until = time.monotonic() + (TICK_SECONDS if beats else _DRAIN_SECONDS)
            served = 0
            while sock.poll(0, zmq.POLLIN) and (beats or served < _DRAIN) and time.monotonic() <= until:
                served += 1
                try:
                    if routes[sock](sock) is False:
                        break  # it was not there after all
                except Exception as e:  # nothing one message does may stop the head
                    self.counters["internal_errors"] += 1
                    self.log.exception("head.loop_error", error=repr(e))
            if beats:
                watch.turn()

        http = self._http
        self.ready.set()
        next_tick = time.monotonic()
        try:
            while not self._stop.is_set():
                waiting = time.monotonic()
                timeout = max(0.0, next_tick - waiting)
                events = poller.poll(timeout * 1000)
                watch.idle(time.monotonic() - waiting)
                for sock, _ in events:
                    drain(heartbeats)  # before and after every other socket's batch, and ahead of the flush
                    if sock is not heartbeats:
                        drain(sock)
                        drain(heartbeats)
                    self.flush()  # what handling these messages assigned, one batch per provider
                if time.monotonic() >= next_tick:
                    drain(heartbeats)  # no provider is judged silent while its heartbeat waits in our queue
                    self.tick(between=lambda: drain(heartbeats))
                    self.flush()
                    next_tick = time.monotonic() + TICK_SECONDS
        finally:
            if http is not None:
                http.stop()
            self.close()

    def _start_http(self):
        """The dashboard and metrics server (its own thread; it reads ``self.snapshot`` only)."""
        if not self.config.http_port:
            return None
        from head_node.http import DashboardServer

        self.refresh_snapshot()
        server = DashboardServer(self)
        server.start()
        return server

    def refresh_snapshot(self) -> None:
        """Publish a copy of the state for other threads (replaced whole, never mutated)."""
        self.snapshot = {**self.state(), "time": time.time()}

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        try:
            self.commit.flush()
        except OSError as e:  # the disk failed: what was not synced is recomputed after a restart
            self.log.error("head.commit_failed", error=str(e))
        self.commit.close()
        self.journal.close()
        self.events.close()
        self.retention.close()
        self.gc_watch.stop()
        self.auth.stop()
        if self._guard is not None:
            self._guard.close()
        for sock in self.sockets.values():
            sock.close(linger=0)
        self.sockets.clear()
        self.ctx.term()
        self._data_lock.release()
        self.log.info("head.stopped", epoch=self.epoch)

    def tick(self, between: Callable[[], None] = lambda: None) -> None:
        """Timers: leases and liveness, rounds, the group commit, the dashboard's snapshot; ``between`` runs
        between these steps (the loop serves its heartbeats there, so a long tick does not hold them)."""
        now = time.monotonic()
        self._answer_held(self.api.due(now))
        self.apply(self.sched.handle(Tick(now)))
        self.providers.send_probes()
        self._close_late_rounds(now)
        self.retention.sweep(now)
        between()
        self.commit.collect()
        if now >= self._next_commit:
            self._next_commit = now + COMMIT_SECONDS
            self.commit.start()
            between()
        self.events.flush()
        if self.config.http_port and now >= self._next_snapshot:
            self._next_snapshot = now + SNAPSHOT_SECONDS
            self.refresh_snapshot()

    def _serve_request(self, sock: zmq.Socket, handlers: dict[MsgType, Handler], small: bool = False) -> bool:
        """Answer one request; ``small``: the socket carries no arrays, its frames are taken as bytes."""
        try:
            # never block: libzmq may report POLLIN for a message it then drops (over MAXMSGSIZE)
            frames = recv_frames(sock, zmq.NOBLOCK, copy=small)
        except TransportError:
            return False
        self.counters["bytes_received"] += frames_bytes(frames)
        envelope, body = split_envelope(frames)
        uid = user_id(body[0]) if body and not self.config.insecure else None  # no CURVE, no User-Id
        reply: protocol.Message
        msg = None
        try:
            msg = wire.decode(body, limits=self.config.limits)
            # the received frames go now: a large upload is not held twice while its handler runs
            frames = body = None  # noqa: F841
            handler = handlers.get(msg.type)
            if handler is None:
                raise RequestError(f"message type {msg.type.value!r} is not accepted on this socket", "bad_message")
            reply = handler(msg, self.auth.principal(msg, uid))
            if isinstance(reply, Held):
                self.api.hold(reply, envelope, msg.id)
                return True
        except DecodeError as e:
            self.reject("bad_message", str(e))
            reply = protocol.Error(code="bad_message", message=str(e))
        except RequestError as e:
            self.reject(e.code, str(e))
            reply = protocol.Error(code=e.code, message=str(e))
        except Exception as e:  # a bug in one handler must not take the head down
            self.log.exception("head.handler_error", error=repr(e))
            self.counters["internal_errors"] += 1
            reply = protocol.Error(code="internal", message=f"internal error: {e!r}")
        if msg is not None:
            reply.id = msg.id  # a resent request (Lazy Pirate) and its answer share the id
        self._reply(sock, envelope, reply)
        return True

    def _reply(self, sock: zmq.Socket, envelope: list, reply: protocol.Message) -> None:
        try:
            self.counters["bytes_sent"] += send(sock, reply, envelope=envelope, compression=self.config.compression)
        except TransportError as e:
            self.log.warning("head.reply_failed", error=str(e))

    def _serve_results(self, sock: zmq.Socket) -> bool:
        try:
            frames = recv_frames(sock, zmq.NOBLOCK)
        except TransportError:
            return False
        self.counters["bytes_received"] += frames_bytes(frames)
        uid = user_id(frames[0]) if not self.config.insecure else None
        try:
            msg = wire.decode(frames, limits=self.config.limits)
            frames = None  # a large result is not held twice while it is merged
            msgs = [msg]
            if msg.type is MsgType.BATCH:
                msgs = wire.unbatch(msg)
                self.counters["batches_received"] += 1
            handlers = self.providers.result_handlers
            for m in msgs:  # a batch is taken whole or not at all
                if m.type not in handlers:
                    raise RequestError(f"message type {m.type.value!r} is not accepted on the results socket")
            principals = [self.auth.principal(m, uid) for m in msgs]  # each item's type against the role
        except AuthError as e:
            self.reject("auth", str(e))
            return True
        except (DecodeError, RequestError) as e:
            self.reject("bad_result", str(e))
            return True
        self._in_batch = len(msgs) > 1
        try:
            for m, principal in zip(msgs, principals):
                try:
                    handlers[m.type](m, principal)
                except AuthError as e:
                    self.reject("auth", str(e))
                except RequestError as e:
                    self.reject("bad_result", str(e))
                except Exception as e:
                    self.log.exception("head.handler_error", error=repr(e))
                    self.counters["internal_errors"] += 1
        finally:
            if self._in_batch:
                self._in_batch = False
                self.apply(self.sched.assign(time.monotonic()))
        return True

    def reject(self, reason: str, detail: str) -> None:
        self.counters[f"rejected_{reason}"] += 1
        if reason == "auth":
            self.counters["auth_failures"] += 1
        self.log.warning("message.rejected", reason=reason, detail=detail)

    def all_counters(self) -> dict[str, int]:
        """The head's counters plus the array byte counts, both ways, before and after compression."""
        return {**self.counters, **ARRAY_STATS, "batches_sent": self.outbox.batches if self.outbox else 0,
                "array_bytes_raw": ARRAY_STATS["array_bytes_raw_sent"] + ARRAY_STATS["array_bytes_raw_received"],
                "array_bytes_wire": ARRAY_STATS["array_bytes_wire_sent"] + ARRAY_STATS["array_bytes_wire_received"]}

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "providers": self.providers.summaries(),
                "jobs": [j.summary() for j in self.jobs.values()], "counters": self.all_counters(),
                "heartbeat_wait": self.loop_watch.summary(), "gc": self.gc_watch.summary(),
                "deleted": self.retention.totals()}
