"""The provider side of the head: registration, heartbeats, readiness probes and results."""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

from common import protocol
from common.errors import AuthError, RequestError
from common.protocol import MsgType
from head_node.events import (
    ProviderDraining, ProviderLeft, ProviderReady, ProviderSeen, TaskAccepted, TaskFailed, TaskSucceeded,
    parse_key, parse_task_id,
)
from common.security import topic_for
from head_node.linkprobe import LinkProbes
from head_node.registry import ProviderInfo, check_register

if TYPE_CHECKING:
    from head_node.auth import Principal
    from head_node.jobs import Job
    from head_node.server import HeadNode


class ProviderChannel:
    def __init__(self, head: "HeadNode"):
        self.head = head
        self.log = head.log
        self.registry: dict[str, ProviderInfo] = {}
        self.links = LinkProbes()  # the link to each remote provider, measured once it is ready
        self._finished: deque[tuple[float, str]] = deque()
        self.registration_handlers = {
            MsgType.REGISTER: self._on_register,
            MsgType.DEREGISTER: self._on_deregister,
        }
        self.heartbeat_handlers = {MsgType.HEARTBEAT: self._on_heartbeat}
        self.result_handlers = {
            MsgType.PROBE_ACK: self._on_probe_ack,
            MsgType.ACCEPTED: self._on_accepted,
            MsgType.PROGRESS: self._on_progress,
            MsgType.RESULT: self._on_result,
            MsgType.FAILURE: self._on_failure,
        }

    # -- registration ----------------------------------------------------------

    def _owned(self, provider_id: str, principal: "Principal") -> ProviderInfo | None:
        """The provider's record, if this peer may speak for it (its registering peer, or anyone when insecure)."""
        info = self.registry.get(provider_id)
        if info is not None and info.owner != principal.name:
            raise AuthError(f"provider {provider_id} belongs to another peer")
        return info

    def _on_register(self, msg: protocol.Register, principal: "Principal") -> protocol.Message:
        reason = check_register(msg)
        if reason:
            raise RequestError(f"registration refused: {reason}", "invalid")
        self._owned(msg.provider_id, principal)
        if msg.provider_id in self.registry:
            self._forget_link(msg.provider_id)
        info = ProviderInfo.from_register(msg)
        info.owner = principal.name
        info.topic = topic_for(principal.key, msg.provider_id) if principal.key else msg.provider_id
        info.probe_id = protocol.new_id()
        self.registry[msg.provider_id] = info
        self.log.info("provider.registered", provider_id=msg.provider_id, name=info.name, platform=msg.platform,
                      slots=msg.slots, devices=[d.get("kind") for d in msg.devices], gflops=round(msg.gflops, 1))
        # ready only once a probe on its topic comes back: its subscription is live
        return protocol.Registered(provider_id=msg.provider_id, epoch=self.head.epoch,
                                   heartbeat_interval=self.head.config.timing.heartbeat_interval,
                                   **self.head.local_offer())

    def _on_deregister(self, msg: protocol.Deregister, principal: "Principal") -> protocol.Message:
        info = self._owned(msg.provider_id, principal)
        if info is not None:
            info.state = "left"
            self._forget_link(msg.provider_id)
            self.head.apply(self.head.sched.handle(ProviderLeft(time.monotonic(), msg.provider_id)))
            self.log.info("provider.left", provider_id=msg.provider_id, reason=msg.reason)
        return protocol.Ok()

    def topic(self, provider_id: str) -> str:
        info = self.registry.get(provider_id)
        return info.topic if info is not None and info.topic else provider_id

    def send_probes(self) -> None:
        """Readiness probes to joining providers, every ``probe_interval``; link probes again where some were
        not acknowledged (head_node/linkprobe.py)."""
        now = time.monotonic()
        for info in self.registry.values():
            if info.state == "joining" and now >= info.probe_next:
                info.probe_next = now + self.head.config.timing.probe_interval
                self.head.publish(info.provider_id, protocol.Probe(probe_id=info.probe_id))
        again, given_up = self.links.overdue(now)
        for provider_id in again:
            info = self.registry.get(provider_id)
            if info is None or info.state not in ("ready", "draining"):
                self.links.forget(provider_id)
                continue
            self.log.info("provider.link_probe_again", provider_id=provider_id, name=info.name)
            for probe in self.links.start(provider_id, now):
                self.head.publish(provider_id, probe)
        for provider_id in given_up:
            self.log.warning("provider.link_unmeasured", provider_id=provider_id,
                             reason="its link probes were not acknowledged; its messages are encoded by the guess")

    def _on_probe_ack(self, msg: protocol.ProbeAck, principal: "Principal") -> None:
        info = self._owned(msg.provider_id, principal)
        if info is not None and self.links.owns(info.provider_id, msg.probe_id):
            self._link_measured(info, self.links.acked(info.provider_id, msg.probe_id, time.monotonic(),
                                                       msg.received))
            return
        if info is None or info.state != "joining" or msg.probe_id != info.probe_id:
            return
        info.state, info.last_seen = "ready", time.time()
        info.local = self.head.is_local_proof(msg.local_proof)
        self.log.info("provider.ready", provider_id=info.provider_id, name=info.name, local=info.local)
        if not info.local:
            self._probe_link(info)  # before its first task: nothing queued ahead of the probes
        self.head.apply(self.head.sched.handle(
            ProviderReady(time.monotonic(), info.provider_id, info.slots, tuple(info.task_types))))

    # -- the link to a provider (head_node/linkprobe.py) -------------------------------------------------------

    def _probe_link(self, info: ProviderInfo) -> None:
        config = self.head.config
        if config.link_mbit is None and config.compression == "auto":  # only auto weighs it; the operator's wins
            for probe in self.links.start(info.provider_id):
                self.head.publish(info.provider_id, probe)

    def _link_measured(self, info: ProviderInfo, bits: float | None) -> None:
        if bits is None:
            return
        info.link_bits = bits
        if self.head.outbox is not None:
            self.head.outbox.link_bits[self.topic(info.provider_id)] = bits
        self.log.info("provider.link", provider_id=info.provider_id, name=info.name, mbit=round(bits / 1e6, 1))

    def link_mbit(self, info: ProviderInfo) -> float | None:
        """The link's speed the head encodes for, which the provider then encodes its results for: measured,
        or the operator's ``--link-mbit``; None for a provider on this machine or while unknown."""
        if info.local:
            return None
        if info.link_bits is not None:
            return round(info.link_bits / 1e6, 3)
        return self.head.config.link_mbit

    def _forget_link(self, provider_id: str) -> None:
        """Its probes and measured speed go (it left, died, or registers afresh: measured again if remote)."""
        self.links.forget(provider_id)
        if self.head.outbox is not None:
            self.head.outbox.link_bits.pop(self.topic(provider_id), None)

    def mark_dead(self, provider_id: str) -> None:
        info = self.registry.get(provider_id)
        if info is not None:
            info.state = "dead"
            self._forget_link(provider_id)
            self.head.counters["providers_dead"] += 1
            self.log.warning("provider.dead", provider_id=provider_id, name=info.name,
                             silent_for=round(time.time() - info.last_seen, 2))

    # -- heartbeats ------------------------------------------------------------

    def _on_heartbeat(self, msg: protocol.Heartbeat, principal: "Principal") -> protocol.Message:
        info = self._owned(msg.provider_id, principal)
        if info is None or msg.epoch != self.head.epoch or info.state in ("dead", "left"):
            return protocol.HeartbeatReply(epoch=self.head.epoch, known=False)
        info.last_seen, info.free_slots, info.load, info.memory_used, info.computed = (
            time.time(), msg.free_slots, msg.load, msg.memory_used, msg.computed)
        sched = self.head.sched
        held = sched.running(msg.provider_id)
        if info.state in ("ready", "draining"):
            if msg.draining and info.state != "draining":
                info.state = "draining"
                self.log.info("provider.draining", provider_id=msg.provider_id, name=info.name)
                self.head.apply(sched.handle(ProviderDraining(time.monotonic(), msg.provider_id)))
            # a leased task in the outbox was taken too (and finished): it must not be re-published while
            # its result waits in our queue, or a loaded head answers its backlog with more work
            taken = frozenset(msg.running).union(k for k in msg.outbox if k in held)
            self.head.apply(sched.handle(ProviderSeen(time.monotonic(), msg.provider_id, taken)))
            if any(k not in held for k in msg.running):
                held = sched.running(msg.provider_id)  # it may have adopted some (after a head restart)
        # a joining provider's work may still be adopted once it is ready: cancel nothing yet
        cancel = [k for k in msg.running if k not in held] if info.state != "joining" else []
        acked = [k for k in msg.outbox if self._settled(k)]  # journaled results only: the rest at the next beat
        return protocol.HeartbeatReply(epoch=self.head.epoch, known=True, acked=acked, cancel=cancel,
                                       forget=self.recently_finished(), link_mbit=self.link_mbit(info))

    def _settled(self, key: str) -> bool:
        try:
            job_id, index, attempt = parse_key(key)
        except ValueError:
            return True  # nothing we could ever use: let the provider drop it
        return self.head.sched.settled(job_id, index, attempt) and self.head.committed(job_id, index)

    # -- results ---------------------------------------------------------------

    def _task_event(self, cls, msg, principal, **extra):
        info = self._owned(msg.provider_id, principal)
        if info is None:
            raise RequestError(f"{msg.type.value} from unknown provider {msg.provider_id!r}")
        try:
            job_id, index = parse_task_id(msg.task_id)
        except ValueError:
            raise RequestError(f"{msg.type.value}: malformed task id {msg.task_id!r}") from None
        return cls(time.monotonic(), job_id, index, msg.attempt, msg.provider_id, **extra)

    def _fenced(self, event, msg) -> bool:
        """Drop (and count) a report about a shard this provider does not hold."""
        if self.head.sched.lease_holder(event.job_id, event.index, event.attempt, event.provider_id):
            return False
        self.head.counters["results_fenced"] += 1
        self.log.info("task.result_dropped", job_id=event.job_id, task_id=msg.task_id, attempt=msg.attempt,
                      provider_id=msg.provider_id, type=msg.type.value, reason="not the lease holder")
        job = self.head.jobs.get(event.job_id)
        if job is not None and not job.finished:
            self.head.events.record(event.job_id, "drop", task_id=msg.task_id, attempt=msg.attempt,
                                    provider_id=msg.provider_id, reason="not the lease holder")
        return True

    def _on_accepted(self, msg: protocol.Accepted, principal: "Principal") -> None:
        event = self._task_event(TaskAccepted, msg, principal)
        if not self.head.sched.lease_holder(event.job_id, event.index, event.attempt, event.provider_id):
            return  # late, duplicate or forged: nothing to renew
        self.head.counters["tasks_accepted"] += 1
        job = self.head.jobs.get(event.job_id)
        if job is not None and not job.finished:
            self.head.events.record(event.job_id, "accept", task_id=msg.task_id, attempt=msg.attempt,
                                    provider_id=msg.provider_id)
        self.head.decide(event)

    def _on_progress(self, msg: protocol.Progress, principal: "Principal") -> None:
        self._task_event(TaskAccepted, msg, principal)  # validates only; progress is informational

    def _on_result(self, msg: protocol.Result, principal: "Principal") -> None:
        event = self._task_event(TaskSucceeded, msg, principal, elapsed=msg.elapsed)
        if self._fenced(event, msg):
            return
        self.head.events.record(event.job_id, "result", task_id=msg.task_id, attempt=msg.attempt,
                                provider_id=msg.provider_id, elapsed=round(msg.elapsed, 6))
        self.head.decide(event, result=msg)

    def _on_failure(self, msg: protocol.Failure, principal: "Principal") -> None:
        if msg.code in ("cache_miss", "local_unavailable"):  # our belief about it was wrong: resend, no penalty
            event = self._task_event(TaskFailed, msg, principal, error=msg.code, counted=False)
            info = self.registry[msg.provider_id]
            if msg.code == "cache_miss":  # it evicted something we thought it held
                info.cached = {k for k in info.cached if not k.startswith(f"{event.job_id}/")}
            else:  # it cannot open our files after all: send it bytes from now on
                info.local = False
                self.log.warning("provider.not_local", provider_id=msg.provider_id, error=msg.error)
                self._probe_link(info)
            self.head.decide(event)
            return
        event = self._task_event(TaskFailed, msg, principal, error=msg.error)
        if self._fenced(event, msg):
            return
        self.head.counters["task_failures"] += 1
        self.log.warning("task.failed", job_id=event.job_id, task_id=msg.task_id, attempt=msg.attempt,
                         provider_id=msg.provider_id, error=msg.error)
        self.head.decide(event)

    # -- arrays providers hold -------------------------------------------------

    def payload(self, provider_id: str, job: "Job", shard) -> tuple[dict, dict]:
        """What a task for ``shard`` carries to this provider: its params and the arrays that travel.

        A provider on our machine gets references into the job's files for inputs and output blocks
        (common/localdata.py); others get the arrays, less those they hold from earlier shards.
        """
        arrays = job.task.inputs(job, shard)
        params = shard.params
        if self.is_local(provider_id):
            refs = job.files.locate({n: v for n, v in arrays.items() if not callable(v)})
            targets = job.files.locate(job.task.output_targets(job, shard))
            for name in refs:
                del arrays[name]
            if refs or targets:
                params = {**params, "_local": refs, "_local_out": targets}
                self.head.counters["local_arrays_sent"] += len(refs)
        keys = {n: k for n, k in job.task.cache_keys(job, shard).items() if n in arrays}
        params = self.use_cache(provider_id, keys, params, arrays)
        return params, {name: value() if callable(value) else value for name, value in arrays.items()}

    def use_cache(self, provider_id: str, keys: dict[str, str], params: dict, arrays: dict) -> dict:
        """Leave out arrays the provider holds; ask it to keep the ones it may reuse. Returns the task params."""
        info = self.registry.get(provider_id)
        if not keys or info is None:
            return params
        cached = {name: key for name, key in keys.items() if key in info.cached}
        fresh = {name: key for name, key in keys.items() if name not in cached}
        for name in cached:
            arrays.pop(name, None)
        info.cached.update(fresh.values())
        self.head.counters["cached_arrays_reused"] += len(cached)
        return {**params, "_cached": cached, "_cache": fresh}

    def is_local(self, provider_id: str) -> bool:
        info = self.registry.get(provider_id)
        return info is not None and info.local

    def forget_job(self, job_id: str) -> None:
        prefix = f"{job_id}/"
        for info in self.registry.values():
            info.cached = {k for k in info.cached if not k.startswith(prefix)}
        self._finished.append((time.monotonic(), job_id))

    def recently_finished(self) -> list[str]:
        """Jobs finished in the last minute: providers drop what they cached for them."""
        horizon = time.monotonic() - 60
        while self._finished and self._finished[0][0] < horizon:
            self._finished.popleft()
        return [job_id for _, job_id in self._finished]

    def count_done(self, provider_id: str, job: "Job") -> str:
        """Count a merged shard for the provider; return the provider's name."""
        info = self.registry.get(provider_id)
        name = info.name if info is not None else provider_id[:8]
        if info is not None:
            info.shards_done += 1
        job.by_provider[name] += 1
        return name

    def summaries(self) -> list[dict]:
        return [p.summary() for p in self.registry.values() if p.state not in ("dead", "left")]
