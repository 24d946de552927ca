"""The client API: submit, status, fetch, cancel, list jobs and providers."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import msgpack
import numpy as np

from common import localdata, protocol
from common.errors import QueueFullError, UnknownJobError, ValidationError
from common.protocol import MsgType
from head_node.events import JobAdded, JobCancelled
from head_node.jobs import Job
from head_node.store import SAFE_ARRAY_NAME, JobFiles

if TYPE_CHECKING:
    from head_node.auth import Principal
    from head_node.server import HeadNode

_REMEMBERED_REPLIES = 4096
MAX_EVENTS_PER_REPLY = 500  # keeps an event_list reply's header well under the 256 KiB header limit
PAGE_BYTES = 160 * 1024  # summaries per job_list or provider_list reply, packed (the header limit is 256 KiB)
MAX_STATUS_WAIT = 10.0  # a held status or fetch request is answered within this, its job finished or not


@dataclass(frozen=True)
class Held:
    """A handler's answer meaning "reply later": ``answer(job)`` once ``job_id`` ends or at ``deadline``."""

    job_id: str
    deadline: float
    answer: Callable[[Job], protocol.Message]


def _open_uploads(uploads: dict[str, Path]) -> dict[str, tuple[np.ndarray, int]]:
    """The uploaded arrays, memory-mapped for validation (nothing is read but the header), with where
    their data starts in the file."""
    arrays = {}
    for name, path in uploads.items():
        try:
            arrays[name] = localdata.map_npy(path)
        except (OSError, ValueError) as e:
            raise ValidationError(f"uploaded array {name!r} is not a readable .npy file: {e}") from None
    return arrays


def _job_status(job: Job) -> protocol.JobStatus:
    return protocol.JobStatus(job=job.summary())


def _page(items: list, offset: int, summary=lambda x: x) -> tuple[list[dict], int | None]:
    """The summaries of ``items`` from ``offset`` on that fit in one reply, and where the next reply starts."""
    page, size, offset = [], 0, max(0, offset)
    for item in items[offset:]:
        s = summary(item)
        size += len(msgpack.packb(s, use_bin_type=True))
        if page and size > PAGE_BYTES:
            break
        page.append(s)
    end = offset + len(page)
    return page, end if end < len(items) else None


class ClientApi:
    def __init__(self, head: "HeadNode"):
        self.head = head
        self.log = head.log
        self._replies: OrderedDict[str, protocol.Message] = OrderedDict()
        # job -> (deadline, envelope, request id, what to answer with) of held status and fetch requests
        self._held: dict[str, list[tuple[float, list, str, Callable[[Job], protocol.Message]]]] = {}
        self.handlers = {
            MsgType.SUBMIT: self._idempotent(self._on_submit),
            MsgType.STATUS: self._on_status,
            MsgType.FETCH: self._on_fetch,
            MsgType.CANCEL_JOB: self._on_cancel,
            MsgType.DELETE_JOB: self._idempotent(self._on_delete),
            MsgType.LIST_JOBS: self._on_list_jobs,
            MsgType.LIST_PROVIDERS: self._on_list_providers,
            MsgType.STATS: self._on_stats,
            MsgType.EVENTS: self._on_events,
        }

    def _idempotent(self, handler):
        """A resent request (same id, Lazy Pirate) gets the first answer, and runs once."""
        def wrapper(msg: protocol.Message, principal: "Principal") -> protocol.Message:
            key = f"{principal.name}:{msg.id}"  # one peer cannot replay another's request id
            if key in self._replies:
                return self._replies[key]
            reply = handler(msg, principal)
            self._replies[key] = reply
            while len(self._replies) > _REMEMBERED_REPLIES:
                self._replies.popitem(last=False)
            return reply
        return wrapper

    def _job(self, job_id: str, principal: "Principal") -> Job:
        job = self.head.jobs.get(job_id)
        if job is None or not (principal.sees_all or job.owner == principal.name):
            sees = lambda owner: principal.sees_all or owner == principal.name  # noqa: E731
            why = self.head.retention.deleted(job_id, sees) if job is None and isinstance(job_id, str) else None
            # someone else's job does not exist for you, deleted or not
            raise UnknownJobError(f"no job {job_id!r}" + (f": {why}" if why else ""))
        return job

    # -- handlers ----------------------------------------------------------------

    def _on_submit(self, msg: protocol.Submit, principal: "Principal") -> protocol.Message:
        request_key = f"{principal.name}:{msg.id}"
        earlier = self.head.journal.job_for_request(request_key)
        if earlier is not None:  # resent after a head restart: the job was accepted already
            return protocol.Submitted(job_id=earlier)
        uploads = self._uploads(msg)
        try:
            return self._submit(msg, principal, uploads, request_key)
        finally:  # taken as the job's inputs, or refused: either way no longer the client's
            for path in uploads.values():
                path.unlink(missing_ok=True)

    def _uploads(self, msg: protocol.Submit) -> dict[str, Path]:
        """The files a client on this machine wrote instead of sending the arrays (common/localdata.py)."""
        if not msg.local_arrays:
            return {}
        root = self.head.config.data_dir
        if not self.head.config.local_data:
            raise ValidationError("this head takes no arrays by file (started with --no-local-data)")
        both = set(msg.local_arrays) & set(msg.arrays)
        if both:
            raise ValidationError(f"arrays {sorted(both)} were both sent and named as files")
        try:
            return {name: localdata.upload_path(root, file) for name, file in msg.local_arrays.items()}
        except ValueError as e:
            localdata.discard_uploads(root, msg.local_arrays.values())  # what did arrive is not kept
            raise ValidationError(str(e)) from None

    def _submit(self, msg: protocol.Submit, principal: "Principal", uploads: dict[str, Path],
                request_key: str) -> protocol.Message:
        head = self.head
        task = head.tasks.get(msg.task_type)
        if task is None:
            raise ValidationError(f"unknown task type {msg.task_type!r}; this head knows {sorted(head.tasks)}")
        protocol.check_priority(msg.priority)
        owner = principal.name
        waiting = sum(1 for j in head.jobs.values() if j.owner == owner and not j.finished)
        if waiting >= head.config.max_queued_jobs_per_client:
            raise QueueFullError(f"queue full: {waiting} unfinished jobs (limit "
                                 f"{head.config.max_queued_jobs_per_client}); wait for some to finish")
        bad = [name for name in [*msg.arrays, *uploads] if not SAFE_ARRAY_NAME.match(name)]
        if bad:
            raise ValidationError(f"array names must be letters, digits, '_' or '-' (1-64 characters): {bad}")
        uploaded = _open_uploads(uploads)
        params = task.validate(msg.params, {**msg.arrays, **{name: arr for name, (arr, _) in uploaded.items()}})
        head.serve_heartbeats()  # a large job's steps each take tens of ms: heartbeats do not wait for all
        count = task.shard_count(params)
        if count is not None and count > head.config.max_shards_per_job:
            raise ValidationError(f"{count} shards exceeds the limit of {head.config.max_shards_per_job}")
        providers = [p for p in head.providers.registry.values() if p.state == "ready"]
        if providers and not any(msg.task_type in p.task_types for p in providers):
            raise ValidationError(f"no ready provider supports task type {msg.task_type!r}")
        job_id = protocol.new_id()[:12]
        files = JobFiles(head.config.data_dir / "jobs" / job_id)
        job = Job(job_id=job_id, owner=owner, task_type=msg.task_type, task=task, params=params,
                  files=files, priority=msg.priority)
        try:
            files.save_inputs(msg.arrays)
            files.adopt_inputs(uploads, uploaded)
            head.counters["local_uploads"] += len(uploads)
            # the inputs are on disk: free the decoded upload before the first shards go out from the
            # memory-mapped files, so the head never holds the upload and the mapped inputs at once
            msg.arrays.clear()
            job.ready_slots = head.sched.ready_slots(msg.task_type)
            shards = task.plan(job)
            if not shards:
                raise ValidationError("the request plans no shards")
            if len(shards) > head.config.max_shards_per_job:
                raise ValidationError(f"{len(shards)} shards exceeds the limit of {head.config.max_shards_per_job}")
        except Exception:
            files.delete()
            raise
        head.serve_heartbeats()
        indices = job.add_shards(shards, time.monotonic())
        try:
            head.journal.add_job(job, request_id=request_key)
        except Exception:
            files.delete()
            raise
        head.jobs[job_id] = job
        head.counters["jobs_submitted"] += 1
        self.log.info("job.submitted", job_id=job_id, task_type=msg.task_type, shards=len(shards), owner=owner)
        head.events.record(job_id, "submit", task_type=msg.task_type, owner=owner, shards=len(shards))
        head.serve_heartbeats()
        head.apply(head.sched.handle(JobAdded(time.monotonic(), job_id, msg.task_type, tuple(indices),
                                              priority=msg.priority, affinity=job.affinity(indices)), assign=False))
        head.serve_heartbeats()  # (one may already lease some of the shards)
        head.apply(head.sched.assign(time.monotonic()))
        head.flush()  # the shards go out before the answer: they are what the job waits for
        return protocol.Submitted(job_id=job_id)

    def _on_status(self, msg: protocol.Status, principal: "Principal") -> protocol.Message | Held:
        job = self._job(msg.job_id, principal)
        if msg.wait > 0 and not job.finished:  # long poll: the reply leaves when the job ends
            return Held(job.job_id, time.monotonic() + min(msg.wait, MAX_STATUS_WAIT), _job_status)
        return _job_status(job)

    # -- held status requests ------------------------------------------------------

    def hold(self, held: Held, envelope: list, request_id: str) -> None:
        self._held.setdefault(held.job_id, []).append((held.deadline, envelope, request_id, held.answer))

    def due(self, now: float, finished: str | None = None) -> list[tuple[list, protocol.Message]]:
        """Replies for held requests whose job is ``finished`` or whose wait ran out: (envelope, reply)."""
        out = []
        for job_id in [finished] if finished is not None else list(self._held):
            keep, answer = [], []
            for w in self._held.pop(job_id, []):
                (keep if job_id != finished and w[0] > now else answer).append(w)
            if keep:
                self._held[job_id] = keep
            job = self.head.jobs.get(job_id)
            for _, envelope, request_id, reply_for in answer:
                reply = (self._answer(reply_for, job) if job is not None
                         else protocol.Error(code="unknown_job", message=f"no job {job_id!r}"))
                reply.id = request_id
                out.append((envelope, reply))
        return out

    def _answer(self, reply_for: Callable[[Job], protocol.Message], job: Job) -> protocol.Message:
        """A held request's reply; an error building it (reading the outputs, say) is this request's alone,
        not the finish's that answers it nor the other waiters'."""
        try:
            return reply_for(job)
        except Exception as e:
            self.log.exception("head.handler_error", error=repr(e), job_id=job.job_id)
            self.head.counters["internal_errors"] += 1
            return protocol.Error(code="internal", message=f"internal error: {e!r}")

    def _on_fetch(self, msg: protocol.Fetch, principal: "Principal") -> protocol.Message | Held:
        job = self._job(msg.job_id, principal)
        local = msg.local and self.head.config.local_data
        if msg.wait > 0 and not job.finished:  # long poll, as for status: the outputs leave when the job ends
            return Held(job.job_id, time.monotonic() + min(msg.wait, MAX_STATUS_WAIT),
                        lambda j: self._job_result(j, local))
        return self._job_result(job, local)

    def _job_result(self, job: Job, local: bool) -> protocol.JobResult:
        """The job's summary, and its outputs if it succeeded (by file reference, with ``local``)."""
        arrays = job.task.outputs(job) if job.status == "succeeded" else {}
        refs = job.files.locate(arrays) if local else {}
        refs = {name: ref for name, ref in refs.items() if ref["shape"] == list(arrays[name].shape)}
        if refs:  # whole output files: the client on this machine maps them (the page cache is shared)
            self.head.counters["local_fetches"] += len(refs)
        arrays = {name: arr for name, arr in arrays.items() if name not in refs}
        return protocol.JobResult(job=job.summary(), meta=dict(job.state), arrays=arrays, local_arrays=refs)

    def _on_cancel(self, msg: protocol.CancelJob, principal: "Principal") -> protocol.Message:
        job = self._job(msg.job_id, principal)
        if not job.finished:
            self.head.apply(self.head.sched.handle(JobCancelled(time.monotonic(), job.job_id)))
            self.head.finish(job, "cancelled")
        return protocol.JobStatus(job=job.summary())

    def _on_delete(self, msg: protocol.DeleteJob, principal: "Principal") -> protocol.Message:
        self.head.retention.delete(self._job(msg.job_id, principal), reason=f"by {principal.name}")
        return protocol.Ok()

    def _on_list_jobs(self, msg: protocol.ListJobs, principal: "Principal") -> protocol.Message:
        jobs = [j for j in self.head.jobs.values() if msg.state in (None, j.status)
                and (principal.sees_all or j.owner == principal.name)]
        page, next_offset = _page(jobs, msg.offset, lambda j: j.summary())
        return protocol.JobList(jobs=page, next_offset=next_offset)

    def _on_list_providers(self, msg: protocol.ListProviders, principal: "Principal") -> protocol.Message:
        page, next_offset = _page(self.head.providers.summaries(), msg.offset)
        return protocol.ProviderList(providers=page, next_offset=next_offset)

    def _on_stats(self, msg: protocol.Stats, principal: "Principal") -> protocol.Message:
        counters = self.head.all_counters()  # not state(): that also summarizes every job
        counters["zap_denied"] = self.head.auth.zap_denied
        return protocol.StatsReply(epoch=self.head.epoch, counters=counters, **self.head.local_offer())

    def _on_events(self, msg: protocol.Events, principal: "Principal") -> protocol.Message:
        job = self._job(msg.job_id, principal)
        events, next_offset = self.head.events.read(job.job_id, max(0, msg.offset), max(1, min(msg.limit, MAX_EVENTS_PER_REPLY)))
        return protocol.EventList(events=events, next_offset=next_offset)
