"""The cluster's figures, computed from the head's snapshot, and their Prometheus exposition.

``figures(snapshot)`` is the one definition of every KPI: ``/api/state`` sends it to the
dashboard and ``SnapshotCollector`` turns it into metrics at scrape time. Labels are kept to
bounded cardinality: task types and provider names past ``MAX_LABEL_VALUES`` fold into ``_other``.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

MAX_LABEL_VALUES = 50
OTHER = "_other"
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, math.inf)
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
#: head counters that byte and compression figures read, once the head measures them
BYTE_COUNTERS = ("bytes_sent", "bytes_received", "array_bytes_raw", "array_bytes_wire")


def _bounded(values: list[str]) -> Callable[[str], str]:
    """A label mapper that keeps the first ``MAX_LABEL_VALUES`` distinct values (sorted) and folds the rest."""
    kept = set(sorted(set(values))[:MAX_LABEL_VALUES])
    return lambda v: v if v in kept else OTHER


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _latency(job: dict[str, Any]) -> float | None:
    """End to end: submitted to finished."""
    if job.get("status") not in FINISHED or not job.get("finished_at"):
        return None
    return max(0.0, job["finished_at"] - job["submitted_at"])


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def figures(snapshot: dict[str, Any], http_auth_failures: int = 0) -> dict[str, Any]:
    """Every KPI the dashboard and /metrics show, from one snapshot (see docs/HTTP.md)."""
    counters: dict[str, int] = snapshot.get("counters", {})
    jobs: list[dict[str, Any]] = snapshot.get("jobs", [])
    providers: list[dict[str, Any]] = snapshot.get("providers", [])
    deleted_done: dict[str, int] = snapshot.get("deleted", {}).get("done_by_type", {})  # stays counted
    task_label = _bounded([j["task_type"] for j in jobs] + list(deleted_done))
    done_by_type: Counter[str] = Counter()
    jobs_by_status: Counter[str] = Counter({s: 0 for s in JOB_STATES})
    for j in jobs:
        done_by_type[task_label(j["task_type"])] += j.get("done", 0)
        jobs_by_status[j["status"]] += 1
    for task_type, done in deleted_done.items():
        done_by_type[task_label(task_type)] += done
    latencies = sorted(x for x in map(_latency, (j for j in jobs if j["status"] == "succeeded")) if x is not None)
    slots = sum(p.get("slots", 0) for p in providers if p.get("state") != "joining")
    in_use = sum(_slots_in_use(p) for p in providers if p.get("state") != "joining")
    tasks_completed = sum(done_by_type.values())
    succeeded, failed = counters.get("jobs_succeeded", 0), counters.get("jobs_failed", 0)
    out: dict[str, Any] = {
        "tasks_completed": tasks_completed,
        "tasks_completed_by_type": dict(done_by_type),
        "task_failures": counters.get("task_failures", 0),
        "task_success_ratio": _ratio(tasks_completed, tasks_completed + counters.get("task_failures", 0)),
        "jobs_by_status": dict(jobs_by_status),
        "job_success_ratio": _ratio(succeeded, succeeded + failed),
        "job_latency_seconds": {"count": len(latencies), "mean": _ratio(sum(latencies), len(latencies)),
                                "p50": _quantile(latencies, 0.5), "p95": _quantile(latencies, 0.95)},
        "reassignments": counters.get("reassignments", 0),
        "speculative_launches": counters.get("speculative_launches", 0),
        "auth_failures": counters.get("auth_failures", 0) + http_auth_failures,
        "http_auth_failures": http_auth_failures,
        "providers_ready": sum(1 for p in providers if p.get("state") == "ready"),
        "slots": slots,
        "slots_in_use": in_use,
        "utilization": _ratio(in_use, slots),
    }
    for name in BYTE_COUNTERS:  # absent until the head counts them: null, never a made-up 0
        out[name] = counters.get(name)
    raw, wire = counters.get("array_bytes_raw"), counters.get("array_bytes_wire")
    out["compression_ratio"] = _ratio(raw, wire) if raw is not None and wire is not None else None
    return out


def _slots_in_use(p: dict[str, Any]) -> int:
    return max(0, p.get("slots", 0) - p.get("free_slots", 0))


class SnapshotCollector(Collector):
    """Metrics derived at scrape time from ``snapshot()`` (the head's published state)."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], http_auth_failures: Callable[[], int]):
        self.snapshot = snapshot
        self.http_auth_failures = http_auth_failures

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot() or {}
        http_failures = self.http_auth_failures()
        fig = figures(snap, http_failures)
        counters: dict[str, int] = snap.get("counters", {})
        yield from self._tasks(fig)
        yield from self._jobs(fig, snap.get("jobs", []), counters, snap.get("deleted", {}).get("latency", {}))
        yield from self._faults(counters, http_failures)
        yield from self._bytes(fig)
        yield from self._providers(snap.get("providers", []), fig)
        if "heartbeat_wait" in snap:
            yield _wait_histogram(snap["heartbeat_wait"])
        if "gc" in snap:
            yield from _gc(snap["gc"])
        events = CounterMetricFamily("zcompute_head_events", "Every head counter, by name (a fixed set).",
                                     labels=["event"])
        for name, value in sorted(counters.items()):
            events.add_metric([name], value)
        yield events

    def _tasks(self, fig: dict[str, Any]) -> Iterator[Metric]:
        done = CounterMetricFamily("zcompute_tasks_completed", "Shards computed and merged; rate() is throughput.",
                                   labels=["task_type"])
        for task_type, n in sorted(fig["tasks_completed_by_type"].items()):
            done.add_metric([task_type], n)
        yield done
        yield CounterMetricFamily("zcompute_task_failures", "Shard attempts that failed on a provider.",
                                  value=fig["task_failures"])
        yield _gauge("zcompute_task_success_ratio", "Merged shards / (merged + failed attempts).",
                     fig["task_success_ratio"])

    def _jobs(self, fig: dict[str, Any], jobs: list[dict[str, Any]], counters: dict[str, int],
              deleted_latency: dict[str, dict[str, Any]]) -> Iterator[Metric]:
        yield CounterMetricFamily("zcompute_jobs_submitted", "Jobs accepted by the head.",
                                  value=counters.get("jobs_submitted", 0))
        finished = CounterMetricFamily("zcompute_jobs_finished", "Jobs finished, by outcome.", labels=["status"])
        for status in FINISHED:
            finished.add_metric([status], counters.get(f"jobs_{status}", 0))
        yield finished
        current = GaugeMetricFamily("zcompute_jobs", "Jobs the head holds, by state.", labels=["status"])
        for status, n in fig["jobs_by_status"].items():
            current.add_metric([status], n)
        yield current
        yield _gauge("zcompute_job_success_ratio", "Succeeded / (succeeded + failed) jobs.", fig["job_success_ratio"])
        yield _latency_histogram(jobs, deleted_latency)

    def _faults(self, counters: dict[str, int], http_failures: int) -> Iterator[Metric]:
        yield CounterMetricFamily("zcompute_reassignments", "Shards requeued (provider lost, lease or ack timeout).",
                                  value=counters.get("reassignments", 0))
        yield CounterMetricFamily("zcompute_speculative_launches", "Straggling shards copied to another provider.",
                                  value=counters.get("speculative_launches", 0))
        auth = CounterMetricFamily("zcompute_auth_failures", "Refused credentials: bad or revoked tokens, failed "
                                   "CURVE handshakes, refused HTTP requests.", labels=["kind"])
        auth.add_metric(["token"], counters.get("rejected_auth", 0))
        auth.add_metric(["handshake"], counters.get("handshake_failures", 0))
        auth.add_metric(["http"], http_failures)
        yield auth

    def _bytes(self, fig: dict[str, Any]) -> Iterator[Metric]:
        if fig["bytes_sent"] is not None:
            yield CounterMetricFamily("zcompute_bytes_sent", "Bytes the head sent on its sockets.",
                                      value=fig["bytes_sent"])
        if fig["bytes_received"] is not None:
            yield CounterMetricFamily("zcompute_bytes_received", "Bytes the head received on its sockets.",
                                      value=fig["bytes_received"])
        if fig.get("array_bytes_raw") is not None and fig.get("array_bytes_wire") is not None:
            arrays = CounterMetricFamily("zcompute_array_bytes", "Array bytes the head encoded or decoded, before "
                                         "(raw) and after (wire) compression.", labels=["stage"])
            arrays.add_metric(["raw"], fig["array_bytes_raw"])
            arrays.add_metric(["wire"], fig["array_bytes_wire"])
            yield arrays
            # no arrays moved yet: 1.0 (nothing saved), not a missing series
            ratio = fig["compression_ratio"] if fig["compression_ratio"] is not None else 1.0
            yield _gauge("zcompute_compression_ratio", "Raw / wire array bytes (above 1: compression saves).", ratio)

    def _providers(self, providers: list[dict[str, Any]], fig: dict[str, Any]) -> Iterator[Metric]:
        label = _bounded([p["name"] for p in providers])
        by_state = GaugeMetricFamily("zcompute_providers", "Providers the head knows, by state.", labels=["state"])
        for state, n in sorted(Counter(p["state"] for p in providers).items()):
            by_state.add_metric([state], n)
        yield by_state
        sums: dict[str, Counter[str]] = {}
        for p in providers:  # names may repeat, and folded names share "_other": sum them
            c = sums.setdefault(label(p["name"]), Counter())
            c["slots"] += p.get("slots", 0)
            c["in_use"] += _slots_in_use(p)
            c["done"] += p.get("shards_done", 0)
            c["memory"] += p.get("memory_used", 0)
            c["load"] += p.get("load", 0.0)
            c["count"] += 1
        families = {
            "slots": GaugeMetricFamily("zcompute_provider_slots", "Shards a provider computes at once.",
                                       labels=["provider"]),
            "in_use": GaugeMetricFamily("zcompute_provider_slots_in_use", "Slots computing now.", labels=["provider"]),
            "util": GaugeMetricFamily("zcompute_provider_utilization_ratio", "Slots in use / slots.",
                                      labels=["provider"]),
            "load": GaugeMetricFamily("zcompute_provider_load", "Load reported in heartbeats (mean when folded).",
                                      labels=["provider"]),
            "memory": GaugeMetricFamily("zcompute_provider_memory_used_bytes", "Memory in use, from heartbeats.",
                                        labels=["provider"]),
            "done": CounterMetricFamily("zcompute_provider_shards_done", "Shards merged from this provider.",
                                        labels=["provider"]),
        }
        for name, c in sorted(sums.items()):
            families["slots"].add_metric([name], c["slots"])
            families["in_use"].add_metric([name], c["in_use"])
            families["util"].add_metric([name], c["in_use"] / c["slots"] if c["slots"] else 0.0)
            families["load"].add_metric([name], c["load"] / c["count"])
            families["memory"].add_metric([name], c["memory"])
            families["done"].add_metric([name], c["done"])
        yield from families.values()
        yield _gauge("zcompute_cluster_utilization_ratio", "Slots in use / slots of every joined provider.",
                     fig["utilization"])


def _gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
    """A gauge that reads NaN while its figure is undefined (no jobs finished, no providers)."""
    return GaugeMetricFamily(name, documentation, value=math.nan if value is None else value)


def _no_latencies() -> dict[str, Any]:
    return {"counts": [0] * len(LATENCY_BUCKETS), "sum": 0.0}


def count_latency(hist: dict[str, Any] | None, latency: float) -> dict[str, Any]:
    """``hist`` ({"counts": per bucket, not cumulative; "sum"}, None: a new one) with ``latency`` added."""
    hist = hist if hist is not None else _no_latencies()
    hist["counts"][bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
    hist["sum"] += latency
    return hist


def _latency_histogram(jobs: list[dict[str, Any]], deleted: dict[str, dict[str, Any]]) -> HistogramMetricFamily:
    """Over the jobs the head holds plus ``deleted`` (per task type, as ``count_latency`` keeps it), so deleting
    a job takes nothing away from the histogram."""
    hist = HistogramMetricFamily("zcompute_job_latency_seconds", "Submit to finish of succeeded jobs.",
                                 labels=["task_type"])
    label = _bounded([j["task_type"] for j in jobs] + list(deleted))
    by_type: dict[str, dict[str, Any]] = {}
    for task_type, h in deleted.items():
        merged = by_type.setdefault(label(task_type), _no_latencies())
        merged["counts"] = [a + b for a, b in zip(merged["counts"], h["counts"])]
        merged["sum"] += h["sum"]
    for j in jobs:
        latency = _latency(j) if j["status"] == "succeeded" else None
        if latency is not None:
            by_type[label(j["task_type"])] = count_latency(by_type.get(label(j["task_type"])), latency)
    for task_type, h in sorted(by_type.items()):
        cumulative = itertools.accumulate(h["counts"])
        hist.add_metric([task_type], [(_bucket_name(b), n) for b, n in zip(LATENCY_BUCKETS, cumulative)],
                        sum_value=h["sum"])
    return hist


def _wait_histogram(wait: dict[str, Any]) -> HistogramMetricFamily:
    hist = HistogramMetricFamily("zcompute_head_heartbeat_wait_seconds",
                                 "Busy time of the head's loop between two turns at its heartbeat queue: "
                                 "the longest a heartbeat waited there.")
    cumulative, buckets = 0, []
    for bound, count in zip(wait["bounds"], wait["counts"]):
        cumulative += count
        buckets.append((_bucket_name(math.inf if bound is None else bound), cumulative))
    hist.add_metric([], buckets, sum_value=wait["sum"])
    return hist


def _gc(gc: dict[str, Any]) -> Iterator[Metric]:
    runs = CounterMetricFamily("zcompute_head_gc_collections", "Garbage collections in the head, by generation "
                               "(2: a full one, which walks every object the head holds).", labels=["generation"])
    held = CounterMetricFamily("zcompute_head_gc_seconds", "Time the garbage collector held the head, by "
                               "generation (no heartbeat is answered meanwhile).", labels=["generation"])
    for gen, (count, seconds) in enumerate(zip(gc["collections"], gc["seconds"])):
        runs.add_metric([str(gen)], count)
        held.add_metric([str(gen)], seconds)
    yield runs
    yield held


def _bucket_name(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(float(bound))


class Metrics:
    """The /metrics registry for one head."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], http_auth_failures: Callable[[], int]):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(snapshot, http_auth_failures))

    def render(self, accept: str = "") -> tuple[str, bytes]:
        """(content type, body): the Prometheus text format, or OpenMetrics when ``accept`` asks for it."""
        encoder, content_type = choose_encoder(accept)
        return content_type, encoder(self.registry)
