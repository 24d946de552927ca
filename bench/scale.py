"""Scale: many simulated providers on one real head node.

    python bench/scale.py [--providers 1000] [--procs 4] [--duration 300] [--shards 20000] [--jobs 4]
    python bench/scale.py --providers 200 --duration 30          (a quick look)

A real head (``head-node start --insecure``, heartbeat interval 1 s, dead after 10 s, its HTTP server
on, as deployed) runs as a child process. Simulator processes (bench/simprovider.py) run PROVIDERS
providers, each with its own four sockets, speaking the real protocol: they register over a ramp,
heartbeat every second and answer ``noop`` shards. CANARIES of them run in a process of their own that
is never busy, so their round trips show the head's side alone; PROCS processes share the rest.
The run, in phases:

  baseline  the head alone, idle: CPU and RSS with 0 providers
  startup   the providers register; time until the head lists every one ready
  idle      DURATION seconds, all registered, no jobs: head CPU, RSS, heartbeat round trips
  shards    JOBS noop jobs of SHARDS/JOBS shards each, submitted at once through the user client;
            the time from the first submit until the last job has finished, and shards per second
            (given up, and its jobs cancelled, past --shard-timeout or --max-head-rss-mb)
  tail      dead-after + 2 s more heartbeats, so a death caused by the shard phase shows

False deaths are the head's own count (``providers_dead`` in its stats, ``provider.dead`` lines in its
log) and the "unknown provider" heartbeat replies the simulators got; no simulated provider ever stops,
so every one is false. A heartbeat round trip runs from the simulator's send to the moment its loop saw
the reply, so a busy simulator adds to it (its beat lag, how late it sent a beat that was due, shows how
busy). The head's share of it is measured inside the head (head_node/loopwatch.py): the busy time of its
loop between two turns at the heartbeat queue, the longest a heartbeat can have waited there; its p99 per
phase is read from /api/state as the upper bound of a histogram bucket. CPU and RSS per provider: (idle
with PROVIDERS - alone) / PROVIDERS. The machine's load average
is recorded: other work on it skews every figure. ``--py-spy`` samples the head in the idle and shard
phases; ``--head-tree`` runs the head from another checkout, to measure a change before it is made.
Writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Steal, machine, print_table, save  # noqa: E402

HEARTBEAT_P99_MS = 100.0
IDLE_CPU_CORES = 0.5
HOST = "127.0.0.1"
COUNTERS = ("providers_dead", "reassignments", "publish_dropped", "results_fenced", "speculative_launches",
            "internal_errors", "rejected_bad_message", "rejected_bad_result")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--providers", type=int, default=1000)
    p.add_argument("--procs", type=int, default=4, help="simulator processes for the providers (canaries aside)")
    p.add_argument("--canaries", type=int, default=20, help="providers in a simulator process of their own")
    p.add_argument("--duration", type=float, default=300.0, help="seconds of the idle phase (all registered)")
    p.add_argument("--shards", type=int, default=20000)
    p.add_argument("--jobs", type=int, default=4, help="noop jobs the shards are split over")
    p.add_argument("--ramp", type=float, default=10.0, help="seconds over which the providers register")
    p.add_argument("--baseline", type=float, default=10.0, help="seconds of the head idle with no provider")
    p.add_argument("--dead-after", type=float, default=10.0, help="the head's --dead-after (its default)")
    p.add_argument("--shard-timeout", type=float, default=300.0,
                   help="give the shard phase up (cancel its jobs) after this many seconds")
    p.add_argument("--max-head-rss-mb", type=float, default=2048.0,
                   help="give the shard phase up if the head grows past this (a collapsing head queues a lot)")
    p.add_argument("--no-http", action="store_true", help="run the head without its HTTP server")
    p.add_argument("--head-tree", type=Path, default=None,
                   help="run the head from this checkout instead of this one (to compare a change)")
    p.add_argument("--py-spy", action="store_true",
                   help="sample the head with py-spy in the idle and shard phases (bench/results/scale-PHASE.txt)")
    p.add_argument("--keep", action="store_true", help="keep the head's data dir and log")
    return p


# -- the head ------------------------------------------------------------------------------


class Head:
    """The head node as a child process, and what the bench reads from it."""

    def __init__(self, data_dir: Path, dead_after: float, http: bool, tree: Path | None = None):
        import psutil

        from common.lifecycle import PARENT_PID_ENV, free_port_base

        self.base = free_port_base(HOST)
        self.http_port = _free_port() if http else 0
        self.log_path = data_dir / "head.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZCOMPUTE_")}
        env.update(ZCOMPUTE_CONFIG="none", **{PARENT_PID_ENV: str(os.getpid())})  # it stops when we do
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "head_node", "start", "--insecure", "--data-dir", str(data_dir / "head"),
                 "--bind", HOST, "--port-base", str(self.base), "--heartbeat-interval", "1",
                 "--dead-after", str(dead_after), "--http-port", str(self.http_port), "--http-host", HOST,
                 "--log-json"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                cwd=tree)  # -m head_node imports from the working directory first
        self.ps = psutil.Process(self.proc.pid)

    @property
    def address(self):
        from common.config import HeadAddress

        return HeadAddress(HOST, self.base)

    def client(self):
        from user_client import Client

        return Client(self.address, insecure=True, timeout=30.0)

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def api_state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/api/state", timeout=30) as r:
            return json.load(r)

    def heartbeat_wait(self) -> dict[str, Any] | None:
        """The head's loop watch (head_node/loopwatch.py) from /api/state; None without the HTTP server."""
        return self.api_state().get("heartbeat_wait") if self.http_port else None

    def watches(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(loop watch, garbage-collector watch) from one /api/state; (None, None) without the HTTP server."""
        if not self.http_port:
            return None, None
        state = self.api_state()
        return state.get("heartbeat_wait"), state.get("gc")

    def provider_states(self, client) -> dict[str, int]:
        """State -> count, from /api/state (at 1,000 providers list_providers is over the header limit)."""
        if self.http_port:
            providers = self.api_state()["providers"]
        else:
            providers = client.providers()
        counts: dict[str, int] = {}
        for p in providers:
            counts[p["state"]] = counts.get(p["state"], 0) + 1
        return counts

    def dead_lines(self) -> int:
        with open(self.log_path, errors="replace") as f:
            return sum(1 for line in f if '"provider.dead"' in line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Window:
    """CPU seconds per wall second of the head (and of the simulators) over a phase, and how long the head's
    loop left heartbeats waiting in it."""

    def __init__(self, head: Head, sims=None):
        self.head, self.sims, self.t0 = head, sims, time.monotonic()
        self.cpu0, self.sim0 = head.cpu_s(), sims.cpu_s() if sims else 0.0
        self.wait0, self.gc0 = head.watches()
        self.wait_counts: dict[str, int] | None = None
        self.steal = Steal()

    def steal_cores(self) -> float | None:
        """CPU time the hypervisor took from this machine per wall second (Linux /proc/stat; None elsewhere)."""
        return self.steal.cores()

    def wait_p99_ms(self) -> float | None:
        """p99 of the head's busy time between turns at its heartbeat queue (a bucket's upper bound)."""
        from head_node.loopwatch import quantile

        now = self.head.heartbeat_wait()
        if now is None or self.wait0 is None:
            return None
        counts = [b - a for a, b in zip(self.wait0["counts"], now["counts"])]
        self.wait_counts = dict(zip(map(str, now["bounds"]), counts))  # kept in the JSON: the whole histogram
        p99 = quantile(counts, now["bounds"], 0.99)
        return None if p99 is None else p99 * 1000

    def full_gcs(self) -> dict[str, float] | None:
        """The head's full (generation 2) garbage collections in the window: count, seconds held, and the
        longest one since the head started (the watch keeps no per-window maximum)."""
        _, now = self.head.watches()
        if now is None or self.gc0 is None:
            return None
        return {"count": now["collections"][2] - self.gc0["collections"][2],
                "seconds": now["seconds"][2] - self.gc0["seconds"][2], "longest_ever": now["max"][2]}

    def seconds(self) -> float:
        return time.monotonic() - self.t0

    def cores(self) -> float:
        return (self.head.cpu_s() - self.cpu0) / self.seconds()

    def sim_cores(self) -> float:
        return (self.sims.cpu_s() - self.sim0) / self.seconds() if self.sims else 0.0


class Profile:
    """py-spy sampling the head for one phase (collapsed stacks); a no-op unless asked for."""

    def __init__(self, head: Head, phase: str, enabled: bool):
        self.proc = None
        if not enabled:
            return
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        out = Path(__file__).parent / "results" / f"scale-{phase}.txt"
        out.parent.mkdir(exist_ok=True)
        self.proc = subprocess.Popen([spy, "record", "--pid", str(head.proc.pid), "--rate", "100", "--format", "raw",
                                      "--nonblocking", "--output", str(out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
            self.proc.wait(60)


# -- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The whole run; writes bench/results/scale.json and returns the table's rows."""
    from bench.simprovider import Simulators

    _raise_fd_limit(args.providers)
    tmp = Path(tempfile.mkdtemp(prefix="zcompute-scale-"))
    d: dict[str, Any] = {"load_before": os.getloadavg()}
    head = Head(tmp, args.dead_after, not args.no_http, args.head_tree)
    sims, client = None, None
    try:
        client = head.client()
        _wait(lambda: _answers(client), 60, "the head answering", 0.2)
        time.sleep(2.0)  # imports done, first snapshot made
        window = Window(head)
        time.sleep(args.baseline)
        d["baseline"] = {"cpu_cores": window.cores(), "rss": head.rss()}
        _say(f"baseline: head alone {d['baseline']['cpu_cores']:.3f} cores, RSS {_mib(d['baseline']['rss'])}")

        started = time.monotonic()
        sims = Simulators(head.address, args.providers, args.procs, args.ramp, min(args.canaries, args.providers))
        _wait(lambda: head.provider_states(client).get("ready", 0) >= args.providers,
              args.ramp + 120 + args.providers / 10, f"{args.providers} providers ready", 1.0)
        d["startup"] = {"all_ready_s": time.monotonic() - started}
        d["list_providers"] = _list_providers(client)
        _say(f"startup: {args.providers} providers ready after {d['startup']['all_ready_s']:.1f} s")

        sims.phase("idle")
        time.sleep(2.0)  # the last registrations' first beats
        d["idle"] = _idle(head, sims, client, args)
        sims.phase("shards")
        d["shards"] = _shards(head, sims, client, args)
        sims.phase("tail")
        time.sleep(args.dead_after + 2.0)
        stats = client.stats()
        d["head_counters"] = {k: stats.get(k) for k in COUNTERS}
        d["final_states"] = head.provider_states(client)
    finally:
        if client is not None:
            client.close()
        reports = sims.stop() if sims is not None else []
        head.stop()
        d["head_exit"] = head.proc.returncode
        d["dead_log_lines"] = head.dead_lines()
        if args.keep:
            d["data_dir"] = str(tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    d["load_after"] = os.getloadavg()
    d["sims"] = _sim_summary(reports)
    rows = _rows(args, d)
    args.details = d
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "details"}
    save("scale", {"rows": rows, "args": settings, "details": d, "loadavg_before": d["load_before"],
                   "loadavg_after": d["load_after"]})
    return rows


def _idle(head: Head, sims, client, args: argparse.Namespace) -> dict[str, Any]:
    window, profile, timeline = Window(head, sims), Profile(head, "idle", args.py_spy), []
    rss_start = head.rss()
    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        time.sleep(min(30.0, max(0.0, end - time.monotonic())))
        dead = client.stats()["providers_dead"]  # cheap; /api/state would cost the head more
        timeline.append({"t": round(window.seconds(), 1), "cpu_cores": round(window.cores(), 4), "rss": head.rss(),
                         "providers_dead": dead})
        _say(f"  idle {timeline[-1]['t']:6.1f} s: head {timeline[-1]['cpu_cores']:.3f} cores, "
             f"RSS {_mib(timeline[-1]['rss'])}, dead so far {dead}")
    profile.stop()
    return {"cpu_cores": window.cores(), "sim_cpu_cores": window.sim_cores(), "rss": head.rss(), "rss_start": rss_start,
            "seconds": window.seconds(), "timeline": timeline, "states": head.provider_states(client),
            "head_wait_p99_ms": window.wait_p99_ms(), "steal_cores": window.steal_cores(), "gc": window.full_gcs()}


def _shards(head: Head, sims, client, args: argparse.Namespace) -> dict[str, Any]:
    window, profile = Window(head, sims), Profile(head, "shards", args.py_spy)
    per_job = [args.shards // args.jobs + (i < args.shards % args.jobs) for i in range(args.jobs)]
    start = time.perf_counter()
    handles = [client.submit("noop", {"shards": n}) for n in per_job if n]
    summaries, gave_up, peak = _wait_jobs(handles, head, args)
    elapsed = time.perf_counter() - start
    profile.stop()
    wait_p99, steal = window.wait_p99_ms(), window.steal_cores()
    done = sum(s["done"] for s in summaries)
    _say(f"shards: {done} of {args.shards} in {elapsed:.1f} s = {done / elapsed:.0f}/s, head {window.cores():.3f} "
         f"cores" + (f"; GAVE UP: {gave_up}" if gave_up else ""))
    return {"seconds": elapsed, "done": done, "per_s": done / elapsed, "cpu_cores": window.cores(),
            "sim_cpu_cores": window.sim_cores(), "rss": head.rss(), "peak_rss": peak, "gave_up": gave_up,
            "head_wait_p99_ms": wait_p99, "head_wait_counts": window.wait_counts, "steal_cores": steal,
            "gc": window.full_gcs(),
            "providers_used": len({name for s in summaries for name in s["shards_by_provider"]}),
            "jobs": [{k: s[k] for k in ("job_id", "status", "total", "done", "elapsed", "reruns", "speculated")}
                     for s in summaries]}


def _wait_jobs(handles, head: Head, args: argparse.Namespace) -> tuple[list[dict[str, Any]], str, int]:
    """(summaries, why it gave up or "", peak head RSS): waits for every job, or cancels them past a limit."""
    start, peak, gave_up = time.monotonic(), 0, ""
    while True:
        summaries = [h.status() for h in handles]
        if all(s["status"] in ("succeeded", "failed", "cancelled") for s in summaries):
            return summaries, gave_up, max(peak, head.rss())
        peak = max(peak, head.rss())
        if peak > args.max_head_rss_mb * 2**20:
            gave_up = f"head RSS {_mib(peak)} over {args.max_head_rss_mb:g} MiB"
        elif time.monotonic() - start > args.shard_timeout:
            gave_up = f"not done after {args.shard_timeout:g} s"
        if gave_up:
            for h in handles:
                h.cancel()  # the summaries above say how far they got
            return summaries, gave_up, peak
        time.sleep(0.25 if time.monotonic() - start < 10 else 1.0)


def _raise_fd_limit(providers: int) -> None:
    """The head holds ~4 connections per provider; it inherits this limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = providers * 12 + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
        if hard < need:
            print(f"warning: open-file limit {hard} is below the ~{need} this run needs", file=sys.stderr)


def _wait(predicate, timeout: float, what: str, step: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:g} s")
        time.sleep(step)


def _answers(client) -> bool:
    from common.errors import ZComputeError

    try:
        client.stats()
        return True
    except ZComputeError:
        return False


def _list_providers(client) -> dict[str, Any]:
    """Does the client API's provider list still fit in one reply at this scale?"""
    from common.errors import ZComputeError

    try:
        return {"ok": True, "count": len(client.providers())}
    except ZComputeError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def _say(text: str) -> None:
    print(text, flush=True)


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


# -- the figures ----------------------------------------------------------------------------


def _percentile(values, q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _series(reports: list[dict[str, Any]], key: str, code: str) -> dict[str, array]:
    """Phase -> every sample of ``key`` (raw bytes of ``array(code)``) in ``reports``."""
    merged: dict[str, array] = {}
    for r in reports:
        for phase, raw in r[key].items():
            merged.setdefault(phase, array(code)).frombytes(raw)
    return merged


def _phases(reports: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    rtt, lag = _series(reports, "rtt_ms", "f"), _series(reports, "lag_ms", "f")
    out = {}
    for phase in sorted(set(rtt) | set(lag) | {p for r in reports for p in r["per_phase"]}):
        a, b = rtt.get(phase, array("f")), lag.get(phase, array("f"))
        out[phase] = {"beats": len(a), "rtt_p50_ms": _percentile(a, 50), "rtt_p99_ms": _percentile(a, 99),
                      "rtt_max_ms": max(a, default=math.nan), "lag_p99_ms": _percentile(b, 99),
                      **{k: sum(r["per_phase"].get(phase, {}).get(k, 0) for r in reports)
                         for k in ("heartbeat_timeouts", "unknown_replies")}}
    return out


def _sim_summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    stats: dict[str, int] = {}
    for r in reports:
        for k, v in r["stats"].items():
            stats[k] = stats.get(k, 0) + v
    register = array("d")
    for r in reports:
        register.frombytes(r["register_s"])
    return {"reports": [r["name"] for r in reports], "providers": sum(r["providers"] for r in reports),
            "cpu_s": sum(r["cpu_s"] for r in reports), "stats": stats, "phases": _phases(reports),
            "canary_phases": _phases([r for r in reports if r["name"] == "canary"]),
            "register_p99_s": _percentile(register, 99)}


def _ms(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _cores(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


def _rows(args: argparse.Namespace, d: dict[str, Any]) -> list[dict[str, Any]]:
    sims, n = d["sims"], args.providers
    phases, canary = sims["phases"], sims["canary_phases"]
    idle, shards, tail = (phases.get(p, {}) for p in ("idle", "shards", "tail"))
    unknown = sum(p["unknown_replies"] for p in phases.values())
    deaths = max(d["head_counters"]["providers_dead"], d["dead_log_lines"])
    done = d["shards"]["done"]
    nan = math.nan
    canary_shards = canary.get("shards", {}).get("rtt_p99_ms", nan)  # a very short shard phase may hold none

    def row(metric, target, measured, ok=None, unit=""):
        measured = nan if measured is None else measured
        return {"metric": metric, "target": target, "measured": measured, "unit": unit,
                "ok": "" if ok is None else ("yes" if ok else "NO")}

    def under(value, limit):
        return value == value and value < limit  # nan (no samples) is a miss

    return [
        row("false deaths (head count)", "0", deaths, deaths == 0),
        row("unknown-provider heartbeat replies", "0", unknown, unknown == 0),
        row("heartbeat timeouts (no reply in 5 s)", "", sum(p["heartbeat_timeouts"] for p in phases.values())),
        row("heartbeat p50, idle", "", idle.get("rtt_p50_ms"), unit="ms"),
        row("heartbeat p99, idle", "< 100", idle.get("rtt_p99_ms"),
            under(idle.get("rtt_p99_ms", nan), HEARTBEAT_P99_MS), "ms"),
        row("heartbeat p99, idle, canary process", "", canary.get("idle", {}).get("rtt_p99_ms"), unit="ms"),
        row(f"heartbeat p99, shard phase ({shards.get('beats', 0)} beats)", "< 100", shards.get("rtt_p99_ms"),
            under(shards.get("rtt_p99_ms", nan), HEARTBEAT_P99_MS), "ms"),
        # a few seconds of 20 canaries: a hundred or two beats, so its p99 is about their second-worst
        row(f"heartbeat p99, shard phase, canary process ({canary.get('shards', {}).get('beats', 0)} beats)", "< 100",
            canary_shards, None if canary_shards != canary_shards else canary_shards < HEARTBEAT_P99_MS, "ms"),
        row("heartbeat p99, after the shards", "", tail.get("rtt_p99_ms"), unit="ms"),
        row("heartbeat max, any phase", "", max((p["rtt_max_ms"] for p in phases.values()), default=nan), unit="ms"),
        row("head's share: heartbeat queue wait p99, idle / shards", "",
            f"≤ {_ms(d['idle'].get('head_wait_p99_ms'))} / ≤ {_ms(d['shards'].get('head_wait_p99_ms'))}", unit="ms"),
        row("head's full garbage collections, idle / shards", "", f"{_gcs(d['idle'].get('gc'))} / "
            f"{_gcs(d['shards'].get('gc'))}", unit="n (ms)"),
        row("CPU taken by the hypervisor, idle / shards", "",
            f"{_cores(d['idle'].get('steal_cores'))} / {_cores(d['shards'].get('steal_cores'))}", unit="cores"),
        row("simulators' beat lag p99, idle / shards", "",
            f"{idle.get('lag_p99_ms', nan):.0f} / {shards.get('lag_p99_ms', nan):.0f}", unit="ms"),
        row("head CPU, idle", "< 0.5", d["idle"]["cpu_cores"], d["idle"]["cpu_cores"] < IDLE_CPU_CORES, "cores"),
        row("head CPU, alone (0 providers)", "", d["baseline"]["cpu_cores"], unit="cores"),
        row("head CPU per provider, idle", "", (d["idle"]["cpu_cores"] - d["baseline"]["cpu_cores"]) / n * 1000,
            unit="ms/s"),
        row("head RSS, idle", "", d["idle"]["rss"] / 2**20, unit="MiB"),
        row("head RSS per provider", "", (d["idle"]["rss"] - d["baseline"]["rss"]) / n / 1024, unit="KiB"),
        row("head RSS per provider, start of idle", "", (d["idle"]["rss_start"] - d["baseline"]["rss"]) / n / 1024,
            unit="KiB"),
        row("shards dispatched and collected", str(args.shards), done, done >= args.shards),
        row("shard phase: time", "", d["shards"]["seconds"], unit="s"),
        row("shards per second", "", d["shards"]["per_s"], unit="/s"),
        row("shard phase: head CPU", "", d["shards"]["cpu_cores"], unit="cores"),
        row("shard phase: head RSS peak", "", d["shards"]["peak_rss"] / 2**20, unit="MiB"),
        row("shard phase: reassigned / speculative / fenced", "",
            f"{d['head_counters']['reassignments']} / {d['head_counters']['speculative_launches']} / "
            f"{d['head_counters']['results_fenced']}"),
        row("time until all ready", "", d["startup"]["all_ready_s"], unit="s"),
    ]


def _gcs(gc: dict[str, float] | None) -> str:
    """'count (ms held)' of a window's full collections."""
    return "—" if not gc else f"{gc['count']} ({gc['seconds'] * 1000:.0f})"


def main() -> None:
    args = parser().parse_args()
    rows = run(args)
    d = args.details
    print(f"\ncores {machine()['cores']}, {args.providers} providers ({args.canaries} canaries + {args.procs} "
          f"simulator processes), idle {args.duration:g} s, {args.shards} shards in {args.jobs} jobs, "
          f"load average {d['load_before'][0]:.2f} before, {d['load_after'][0]:.2f} after")
    print_table("scale: one head, many simulated providers", rows, ["metric", "target", "measured", "unit", "ok"])
    if d["shards"]["gave_up"]:
        print(f"\nthe shard phase was given up: {d['shards']['gave_up']}")
    if not d["list_providers"]["ok"]:
        print(f"\nClient.providers() failed at this scale: {d['list_providers']['error']}")
    print("\nwrote bench/results/scale.json")


if __name__ == "__main__":
    main()
