"""/metrics as Prometheus reads it: every KPI present, counters growing across jobs, auth failures counted."""

from __future__ import annotations

import dataclasses
import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.lifecycle import free_port_base
from common.security import Join
from head_node.metrics import MAX_LABEL_VALUES, OTHER, Metrics
from tests.helpers import wait_until
from user_client import AuthError, Client, JobFailed, LocalCluster

#: family name (as the parser names it) -> type
KPIS = {
    "zcompute_tasks_completed": "counter",  # task throughput: rate()
    "zcompute_task_failures": "counter",
    "zcompute_task_success_ratio": "gauge",
    "zcompute_jobs_submitted": "counter",
    "zcompute_jobs_finished": "counter",
    "zcompute_jobs": "gauge",
    "zcompute_job_success_ratio": "gauge",
    "zcompute_job_latency_seconds": "histogram",
    "zcompute_reassignments": "counter",
    "zcompute_speculative_launches": "counter",
    "zcompute_auth_failures": "counter",
    "zcompute_providers": "gauge",
    "zcompute_provider_slots": "gauge",
    "zcompute_provider_slots_in_use": "gauge",
    "zcompute_provider_utilization_ratio": "gauge",
    "zcompute_provider_shards_done": "counter",
    "zcompute_cluster_utilization_ratio": "gauge",
    "zcompute_head_heartbeat_wait_seconds": "histogram",
}
#: shown once the head counts bytes (its counters bytes_sent, bytes_received, array_bytes_raw, array_bytes_wire)
BYTE_KPIS = {"zcompute_bytes_sent": "counter", "zcompute_bytes_received": "counter",
             "zcompute_array_bytes": "counter", "zcompute_compression_ratio": "gauge"}


@pytest.fixture(scope="module")
def cluster():
    """A secured head (tokens on its sockets) whose HTTP server is on loopback, so it needs no token."""
    port = free_port_base(count=1)
    cluster = LocalCluster(2, http_port=port, heartbeat_interval=0.2, dead_after=1.5, log_level="info").start()
    cluster.url = f"http://127.0.0.1:{port}"
    yield cluster
    cluster.stop()


def scrape(cluster) -> dict:
    with urllib.request.urlopen(cluster.url + "/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")  # what any Prometheus reads
        return {f.name: f for f in text_string_to_metric_families(response.read().decode())}


def value(families: dict, sample_name: str, **labels: str) -> float:
    """The sum of the samples of that name whose labels include ``labels``."""
    family = families[sample_name.removesuffix("_total").removesuffix("_count").removesuffix("_sum").removesuffix("_bucket")]
    return sum(s.value for s in family.samples
               if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_every_kpi_is_exposed_and_counters_grow_across_jobs(cluster):
    before = wait_until(lambda: (m := scrape(cluster)) and value(m, "zcompute_providers", state="ready") == 2 and m,
                        timeout=10)
    for name, kind in KPIS.items():
        assert before[name].type == kind, name
    with cluster.client() as c:
        straggler = c.submit("noop", {"shards": 8, "sleep": {"7": 1.0}})  # shard 7 straggles: a copy is launched
        busy = wait_until(lambda: value(scrape(cluster), "zcompute_cluster_utilization_ratio") > 0, timeout=5)
        assert 0 < busy <= 1
        assert straggler.wait(timeout=30)["status"] == "succeeded"
        with pytest.raises(JobFailed):  # shard 1 fails every attempt: two reassignments, then the job fails
            c.submit("noop", {"shards": 2, "fail": [1]}).wait(timeout=30)
        measured = "bytes_sent" in c.stats()

    def finished(m: dict) -> bool:
        return value(m, "zcompute_jobs_finished_total", status="failed") == \
            value(before, "zcompute_jobs_finished_total", status="failed") + 1
    after = wait_until(lambda: finished(m := scrape(cluster)) and m, timeout=5)  # the snapshot is 0.5 s behind

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)
    assert grew("zcompute_tasks_completed_total", task_type="noop") >= 8
    assert grew("zcompute_task_failures_total") == 3  # --max-attempts 3
    assert grew("zcompute_reassignments_total") >= 2
    assert grew("zcompute_speculative_launches_total") >= 1
    assert grew("zcompute_jobs_submitted_total") == 2
    assert grew("zcompute_jobs_finished_total", status="succeeded") == 1
    assert grew("zcompute_job_latency_seconds_count", task_type="noop") == 1
    assert grew("zcompute_job_latency_seconds_sum", task_type="noop") >= 1.0  # the straggler took a second
    assert grew("zcompute_provider_shards_done_total") >= 8
    assert grew("zcompute_head_heartbeat_wait_seconds_count") >= 2  # the loop kept turning to its heartbeats
    assert value(after, "zcompute_head_heartbeat_wait_seconds_bucket", le="+Inf") == \
        value(after, "zcompute_head_heartbeat_wait_seconds_count")
    assert 0 < value(after, "zcompute_job_success_ratio") < 1
    assert 0 < value(after, "zcompute_task_success_ratio") < 1
    providers = {s.labels["provider"] for s in after["zcompute_provider_slots"].samples}
    assert providers == {"local-0", "local-1"}
    assert value(after, "zcompute_provider_slots") == 2
    for name, kind in BYTE_KPIS.items():  # never a made-up zero: present exactly when the head measures bytes
        assert (name in after) == measured, name
        assert not measured or after[name].type == kind


def test_a_forged_token_counts_as_an_auth_failure(cluster):
    with urllib.request.urlopen(cluster.url + "/api/state", timeout=5) as response:  # loopback: no token needed
        state = json.load(response)
    assert state["counters"]["auth_failures"] >= 0 and "figures" in state
    before = value(scrape(cluster), "zcompute_auth_failures_total", kind="token")
    forged = dataclasses.replace(Join.decode(cluster.admin_join), token="x.y.z")
    with Client(join=forged, timeout=5, retries=0) as c, pytest.raises(AuthError, match="invalid token"):
        c.stats()
    wait_until(lambda: value(scrape(cluster), "zcompute_auth_failures_total", kind="token") == before + 1, timeout=5)


def test_labels_stay_bounded_with_many_providers_and_task_types():
    providers = [{"provider_id": f"{i:032x}", "name": f"p{i:03d}", "state": "ready", "slots": 2, "free_slots": 1,
                  "load": 1.0, "memory_used": 10, "shards_done": 1} for i in range(MAX_LABEL_VALUES + 30)]
    jobs = [{"job_id": f"j{i}", "task_type": f"t{i:03d}", "status": "succeeded", "done": 1, "submitted_at": 0.0,
             "finished_at": 1.0} for i in range(MAX_LABEL_VALUES + 30)]
    snapshot = {"epoch": "e", "providers": providers, "jobs": jobs, "counters": {}, "time": 2.0}
    text = Metrics(lambda: snapshot, lambda: 0).render()[1].decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    names = {s.labels["provider"] for s in families["zcompute_provider_slots"].samples}
    assert len(names) == MAX_LABEL_VALUES + 1 and OTHER in names
    assert value(families, "zcompute_provider_slots", provider=OTHER) == 2 * 30
    assert value(families, "zcompute_provider_utilization_ratio", provider=OTHER) == 0.5
    types = {s.labels["task_type"] for s in families["zcompute_tasks_completed"].samples}
    assert len(types) == MAX_LABEL_VALUES + 1
    assert value(families, "zcompute_tasks_completed_total") == MAX_LABEL_VALUES + 30
    assert value(families, "zcompute_job_latency_seconds_count") == MAX_LABEL_VALUES + 30


def test_the_events_endpoint_refuses_a_page_it_cannot_mean(cluster):
    import urllib.error

    with cluster.client() as c:
        job = c.submit("noop", {"shards": 2})
        job.wait(timeout=30)
    base = f"{cluster.url}/api/jobs/{job.id}/events"

    def listed() -> bool:  # in the dashboard's snapshot, refreshed every half second
        try:
            return urllib.request.urlopen(base, timeout=5).status == 200
        except urllib.error.HTTPError:
            return False

    wait_until(listed, timeout=10)
    for query, message in (("limit=0", "limit must be at least 1"), ("limit=-5", "limit must be at least 1"),
                           ("offset=-1", "offset must be at least 0"), ("limit=x", "limit must be an integer")):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}?{query}", timeout=5)
        assert e.value.code == 400 and message in e.value.read().decode(), query
    with urllib.request.urlopen(f"{base}?limit=20000&offset=1", timeout=5) as response:  # capped, not refused
        page = json.loads(response.read())
    assert len(page["events"]) >= 4 and page["next_offset"] == 1 + len(page["events"])
