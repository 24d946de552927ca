"""Data plane: one big float32 array from the head to a provider, zcompute against raw pyzmq, one run.

    python bench/dataplane.py [--mib 256] [--repeat 5] [--kinds random image smooth] [--curve] [--quick]
                              [--no-link | --link | --link-only] [--link-mib 16] [--rates 1gbit 100mbit]

Both ends are separate processes (the receiver is this file run with ``--receiver``) joined by tcp,
in the head's task socket pattern (PUB -> SUB, one topic per provider):

  pyzmq     raw pyzmq, the array's bytes as one frame or in 1 MiB frames, sent and received zero-copy;
            the receiver holds the frames, not one array (``1MiB+join``: it also copies them into one
            numpy array, what a raw pyzmq user must do to get an ndarray out of 1 MiB frames)
  zcompute  the head's ``common.sockets.send`` of a ``Task`` carrying the array (``wire.encode``,
            the codec) on a PUB from ``make_socket``, and the provider runtime's receive:
            ``recv_frames``, the topic check, ``wire.decode``. Codec policies: ``raw``, ``zstd``,
            ``auto`` (the sample-ratio threshold, today's default) and ``auto+link`` (``auto`` told
            the link's speed with ``codec.set_link_speed``: the tc rate, or on loopback the best raw
            pyzmq rate seen so far), ``auto+probe`` (``auto`` with the speed the head's own link probe
            reads, ``head_node/linkprobe.py``: what a head measures for each provider not on its
            machine when it becomes ready, unless given ``--link-mbit``). ``raw+cold``: ``raw`` after the receiver has dropped the codec's
            reusable buffers, as for the first array of a size (``raw`` reuses the last one's)

One sample is the time from the sender's first call to the receiver's acknowledgement, sent once it
holds the decoded ndarray (a tiny message back, about 0.1 ms). GB/s counts the array's bytes, so a
compressed transfer can beat the wire. Every round runs each scenario once, in turn, so a noisy
neighbour skews them alike; figures are medians over ``--repeat`` rounds (2 for a scenario over a
second) after one warm-up round that also checks the received bytes (crc32). ``ratio`` is GB/s over
the fastest raw pyzmq variant's, ``ratio_vs_join`` over ``1MiB+join``'s. ``send_s`` is the sender's
encode-and-queue time, ``decode_s`` the receiver's from the whole message in hand to the ndarray.
Data (``make_array``): ``random`` (uniform float32, incompressible), ``image`` (a photo-like 8-bit
picture with sensor noise scaled to [0, 1], compresses to ~0.55) and ``smooth`` (the same without
noise, ~0.12).

Then, as root (else skipped, saying so; ``--no-link`` skips it), the receiver runs in a network
namespace behind a veth pair whose sending side a token bucket (``tc qdisc ... tbf``) limits to each
``--rates`` value, on ``--link-mib`` arrays: does compression pay, and are ``auto`` and ``auto+link``
as fast as the faster codec (within 10 %)? The namespace is always deleted. A default run takes
about 45 s, and a minute more for the links. The load average before and after is recorded.
``run(args)`` writes bench/results/dataplane.json and returns the rows, then the target rows that
bench/run.py tabulates.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, clean_blas_env, machine, print_table, save  # noqa: E402

MiB = 1 << 20
KINDS = ("random", "image", "smooth")
RAW_TOPIC, ZC_TOPIC, PROBE, STOP = b"R", "9f3c0dda7a01a7e5", b"P", b"X"  # a provider topic: a hex id
IDLE_EXIT_MS = 300_000  # a receiver whose sender died quits after this long without a message
COLUMNS = ["link", "data", "path", "policy", "codec", "wire_ratio", "s", "gbps", "ratio", "ratio_vs_join", "send_s",
           "decode_s"]
RAW_VARIANTS = ("1 frame", "1MiB frames", "1MiB+join")
POLICIES = ["raw", "raw+cold", "auto", "auto+link", "auto+probe", "zstd"]
SLOW_S, SLOW_REPEAT = 1.0, 2  # a scenario slower than this runs in this many rounds only (keeps a run short)


@dataclass(frozen=True)
class Scenario:
    path: str  # "pyzmq" or "zcompute"
    policy: str  # pyzmq: one of RAW_VARIANTS; zcompute: one of POLICIES
    data: str

    @property
    def key(self) -> str:
        return f"{self.path}/{self.policy}/{self.data}"


# -- data ---------------------------------------------------------------------------------------------------


def make_array(kind: str, nbytes: int):
    """A deterministic float32 array of ``nbytes`` (a multiple of 16 KiB) of one of ``KINDS``.

    ``image`` and ``smooth`` are 4096 pixels wide, 8-bit values scaled to [0, 1] as a float
    pipeline holds a photo: ``image`` with a level of sensor noise (compresses to about 0.55),
    ``smooth`` without (about 0.12). Their statistics do not depend on the size.
    """
    import numpy as np

    n = nbytes // 4
    rng = np.random.default_rng(7)
    if kind == "random":
        return rng.random(n, dtype=np.float32)
    width = 4096
    y = (np.arange(n // width, dtype=np.float32) * np.float32(2 * np.pi / 1500))[:, None]
    x = (np.arange(width, dtype=np.float32) * np.float32(2 * np.pi / 1100))[None, :]
    img = np.empty((len(y), width), np.float32)
    np.add(np.sin(y) * 0.3, np.cos(x) * 0.3, out=img)
    img += np.sin(y * 3.7 + x * 2.1) * 0.1 + 0.5
    img *= 255
    if kind == "image":
        img += rng.integers(-1, 2, img.shape, dtype=np.int8)
    np.clip(img, 0, 255, out=img)
    np.round(img, out=img)
    img /= np.float32(255)
    return img.reshape(-1)


# -- the receiving end: ``--receiver SPEC`` in its own process ----------------------------------------------


def _receiver(spec: dict[str, Any]) -> None:
    import zmq

    from common.sockets import CurveKeys, make_socket

    ctx = zmq.Context()
    curve = CurveKeys(**{k: v.encode() for k, v in spec["curve"].items()}) if spec["curve"] else None
    raw = ctx.socket(zmq.SUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.MAXMSGSIZE, -1)
    if curve is not None:
        raw.curve_publickey, raw.curve_secretkey, raw.curve_serverkey = curve.public, curve.secret, curve.server_public
    raw.setsockopt(zmq.SUBSCRIBE, b"")
    raw.connect(spec["raw_url"])
    sub = make_socket(ctx, zmq.SUB, curve=curve)  # as the provider runtime opens it
    sub.setsockopt(zmq.SUBSCRIBE, ZC_TOPIC.encode())
    sub.setsockopt(zmq.SUBSCRIBE, PROBE)
    sub.connect(spec["zc_url"])
    ack = ctx.socket(zmq.PUSH)
    ack.setsockopt(zmq.LINGER, 1000)
    ack.connect(spec["ack_url"])
    poller = zmq.Poller()
    poller.register(raw, zmq.POLLIN)
    poller.register(sub, zmq.POLLIN)
    ready: set[bytes] = set()
    try:
        while True:
            events = dict(poller.poll(IDLE_EXIT_MS))
            if not events:
                return  # the sender is gone
            for sock in events:
                on = _on_raw if sock is raw else _on_zcompute
                name = on(sock, ack)
                if name == STOP:
                    return
                if name and name not in ready:  # the first probe on this socket: tell the sender
                    ready.add(name)
                    ack.send_multipart([b"ready", name])
    finally:
        ctx.destroy(linger=1000)


def _on_raw(sock, ack) -> bytes | None:
    frames = sock.recv_multipart(copy=False)
    got = time.perf_counter()
    head = frames[0].bytes
    if head in (PROBE, STOP):
        return b"raw" if head == PROBE else STOP
    if head.endswith(b"release"):
        from common import codec

        codec.release_buffers()
        ack.send_multipart([b"released", b""])
        return None
    body = [f.buffer for f in frames[1:]]
    if b"join" in head:
        body = [_join(body)]
    ack.send_multipart([b"ack", struct.pack("d", time.perf_counter() - got)])
    if b"check" in head:
        crc = 0
        for b in body:
            crc = zlib.crc32(b, crc)
        ack.send_multipart([b"crc", struct.pack("I", crc)])
    return None


def _on_zcompute(sock, ack) -> bytes | None:
    """The provider runtime's ``_drain_sub`` for one message, then the acknowledgement."""
    from common import protocol, wire
    from common.sockets import recv_frames

    frames = recv_frames(sock)
    got = time.perf_counter()
    if frames[0].bytes == PROBE:
        return b"zc"
    if frames[0].bytes != ZC_TOPIC.encode():
        return None
    msg = wire.decode(frames, topic=True)
    if isinstance(msg, protocol.Probe):  # the head's link probe: acknowledged as the provider runtime does
        ack.send_multipart([b"probe_ack", struct.pack("d", time.monotonic()) + msg.probe_id.encode()])
        return None
    arr = msg.arrays["a"]
    ack.send_multipart([b"ack", struct.pack("d", time.perf_counter() - got)])
    if msg.params.get("check"):
        ack.send_multipart([b"crc", struct.pack("I", zlib.crc32(arr.data))])
    return None


def _join(buffers: list[Any]):
    """One numpy array from the frames: one allocation, one copy."""
    import numpy as np

    out = np.empty(sum(len(b) for b in buffers), np.uint8)
    pos = 0
    for b in buffers:
        out[pos:pos + len(b)] = np.frombuffer(b, np.uint8)
        pos += len(b)
    return out


# -- the sending end -------------------------------------------------------------------------------------------


class Sender:
    """The head's side: a raw PUB, a zcompute PUB (``make_socket``) and a PULL for the receiver's acks."""

    def __init__(self, host: str, curve: bool, prefix: list[str] | None = None, link_bits: float | None = None):
        import zmq

        from common.sockets import CurveKeys, make_socket

        self.zmq = zmq
        self.link_bits = link_bits  # what ``auto+link`` tells the codec; None: measure it in the warm-up
        self.probed_bits: float | None = None  # what the head's link probe reads (``auto+probe``), once asked
        self.ctx = zmq.Context()
        server_keys = zmq.curve_keypair() if curve else None
        self.raw = self.ctx.socket(zmq.PUB)
        self.raw.setsockopt(zmq.LINGER, 0)
        curve_spec = None
        if server_keys is not None:
            self.raw.curve_publickey, self.raw.curve_secretkey = server_keys
            self.raw.curve_server = True
            client = zmq.curve_keypair()
            curve_spec = {"public": client[0].decode(), "secret": client[1].decode(),
                          "server_public": server_keys[0].decode()}
        keys = CurveKeys(*server_keys) if server_keys is not None else None
        # the head's task socket: a PUB (insecure; a secured head's XPUB sends alike) from the one factory
        self.zc = make_socket(self.ctx, zmq.PUB, curve=keys, server=True)
        self.acks = self.ctx.socket(zmq.PULL)
        self.acks.setsockopt(zmq.LINGER, 0)
        urls = {}
        for name, sock in (("raw_url", self.raw), ("zc_url", self.zc), ("ack_url", self.acks)):
            port = sock.bind_to_random_port(f"tcp://{host}")
            urls[name] = f"tcp://{host}:{port}"
        spec = json.dumps({**urls, "curve": curve_spec})
        self.proc = subprocess.Popen([*(prefix or []), sys.executable, str(Path(__file__).resolve()),
                                      "--receiver", spec])
        try:
            self._handshake()
        except BaseException:
            self.close()
            raise

    def _handshake(self, timeout: float = 30.0) -> None:
        """Publish probes until the receiver has seen one on each socket (PUB drops before a subscriber joins)."""
        deadline, ready = time.monotonic() + timeout, set()
        while ready != {b"raw", b"zc"}:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the receiver did not join")
            self.raw.send(PROBE)
            self.zc.send(PROBE)
            while self.acks.poll(50):
                kind, name = self.acks.recv_multipart()
                if kind == b"ready":
                    ready.add(name)

    def _wait(self, what: bytes, timeout: float = 600.0) -> bytes:
        deadline = time.monotonic() + timeout
        while not self.acks.poll(100):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the receiver exited (code {self.proc.returncode}) before its {what.decode()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what.decode()} from the receiver within {timeout} s")
        kind, payload = self.acks.recv_multipart()
        if kind != what:
            raise RuntimeError(f"expected {what!r} from the receiver, got {kind!r}")
        return payload

    def probe_link(self) -> float:
        """The link's speed as the head measures it when a provider becomes ready (head_node/linkprobe.py):
        the same probes, the receiver acknowledging each on decode, timed where the acknowledgements land."""
        from common.sockets import send
        from head_node.linkprobe import LinkProbes

        probes = LinkProbes()
        for probe in probes.start("receiver"):
            send(self.zc, probe, topic=ZC_TOPIC, compression="auto", flags=self.zmq.NOBLOCK)
        bits = None
        while bits is None:
            payload = self._wait(b"probe_ack")
            (received,), probe_id = struct.unpack("d", payload[:8]), payload[8:].decode()
            bits = probes.acked("receiver", probe_id, time.monotonic(), received)
        return bits

    def once(self, sc: Scenario, arr, check: bool) -> dict[str, float]:
        """One transfer; returns total, send and decode seconds (and the receiver's crc32 when ``check``)."""
        from common import codec, protocol
        from common.codec import CHUNK_BYTES
        from common.sockets import send

        zmq = self.zmq
        if sc.policy == "raw+cold":  # the receiver drops its reusable buffers first: a first receipt
            self.raw.send(RAW_TOPIC + b"release")
            self._wait(b"released")
        start = time.perf_counter()
        if sc.path == "pyzmq":
            view = memoryview(arr.reshape(-1).view("u1"))
            step = len(view) if sc.policy == "1 frame" else CHUNK_BYTES
            body = [view[i:i + step] for i in range(0, len(view), step)]
            flags = (b"check" if check else b"") + (b"join" if sc.policy.endswith("join") else b"")
            self.raw.send_multipart([RAW_TOPIC + flags, *body], copy=False)
        else:
            msg = protocol.Task(task_id="t", job_id="j", attempt=0, task_type="matmul", index=0,
                                params={"check": check}, arrays={"a": arr})
            told = sc.policy == "auto+link"
            if told:
                codec.set_link_speed(self.link_bits)
            if sc.policy == "auto+probe" and self.probed_bits is None:  # in the warm-up round, untimed
                self.probed_bits = self.probe_link()
                start = time.perf_counter()
            try:
                send(self.zc, msg, topic=ZC_TOPIC, compression=sc.policy.split("+")[0], flags=zmq.NOBLOCK,
                     link_bits=self.probed_bits if sc.policy == "auto+probe" else None)
            finally:
                if told:
                    codec.set_link_speed(None)
        sent = time.perf_counter()
        decode_s = struct.unpack("d", self._wait(b"ack"))[0]
        out = {"s": time.perf_counter() - start, "send_s": sent - start, "decode_s": decode_s}
        if check:
            out["crc"] = struct.unpack("I", self._wait(b"crc"))[0]
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.send(STOP)
        try:
            self.proc.wait(timeout=10)  # our own child (``ip netns exec`` execs python in place)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.ctx.destroy(linger=0)


def measure(sender: Sender, scenarios: list[Scenario], arrays: dict[str, Any], repeat: int,
            link: str) -> list[dict[str, Any]]:
    """Warm-up round (checks bytes), then ``repeat`` rounds of every scenario in turn (one over
    ``SLOW_S`` in the warm-up: ``SLOW_REPEAT`` rounds at most); one row per scenario."""
    from common.codec import STATS

    crcs = {kind: zlib.crc32(arr.data) for kind, arr in arrays.items()}
    samples: dict[str, list[dict[str, float]]] = {sc.key: [] for sc in scenarios}
    measure_link = sender.link_bits is None
    slow: set[str] = set()
    for rnd in range(repeat + 1):
        for sc in scenarios:
            if rnd > SLOW_REPEAT and sc.key in slow:
                continue
            arr = arrays[sc.data]
            before = STATS["array_bytes_wire_sent"]
            got = sender.once(sc, arr, check=rnd == 0)
            got["wire"] = STATS["array_bytes_wire_sent"] - before if sc.path == "zcompute" else arr.nbytes
            if sc.path == "pyzmq" and measure_link:  # auto+link on loopback: the best raw rate seen so far
                sender.link_bits = max(sender.link_bits or 0.0, arr.nbytes * 8 / got["s"])
            if rnd == 0 and got["crc"] != crcs[sc.data]:
                raise RuntimeError(f"{sc.key}: the receiver's bytes differ from the sender's")
            if rnd == 0 and got["s"] > SLOW_S:
                slow.add(sc.key)
            if rnd:
                samples[sc.key].append(got)
    rows = []
    for sc in scenarios:
        arr, got = arrays[sc.data], samples[sc.key]
        med = {k: statistics.median(g[k] for g in got) for k in ("s", "send_s", "decode_s", "wire")}
        codecs = sorted({"zstd" if g["wire"] < arr.nbytes else "raw" for g in got})
        rows.append({"link": link, "data": sc.data, "path": sc.path, "policy": sc.policy, "codec": "/".join(codecs),
                     "wire_ratio": med.pop("wire") / arr.nbytes, "mib": arr.nbytes / MiB, **med,
                     "gbps": arr.nbytes / med["s"] / 1e9, "samples_s": [g["s"] for g in got],
                     "link_bits_told": sender.link_bits if sc.policy == "auto+link" else None,
                     "link_bits_probed": sender.probed_bits if sc.policy == "auto+probe" else None})
    raw = {r["policy"]: r["gbps"] for r in rows if r["path"] == "pyzmq"}
    best_raw, joined = max(raw.values(), default=None), raw.get("1MiB+join")
    for r in rows:
        r["ratio"] = r["gbps"] / best_raw if best_raw else None
        r["ratio_vs_join"] = r["gbps"] / joined if joined else None
    return rows


def scenarios_for(kinds: list[str], modes: list[str], raw_variants=RAW_VARIANTS) -> list[Scenario]:
    raw = [Scenario("pyzmq", p, kinds[0]) for p in raw_variants]
    cold = [Scenario("zcompute", "raw+cold", kinds[0])] if "raw+cold" in modes else []  # bytes are bytes
    return raw + cold + [Scenario("zcompute", m, k) for k in kinds for m in modes if m != "raw+cold"]


def run(args: argparse.Namespace | None = None) -> list[dict[str, Any]]:
    """Measure, save bench/results/dataplane.json, return the scenario rows followed by the target rows
    (``target``, ``measured``, ``goal``, ``met``, ``reference``). Loopback unless ``link_only``; the
    throttled links too unless ``--no-link`` (skipped, saying why, where they cannot run). ``args``
    default to the command line's defaults."""
    args = args if args is not None else parser().parse_args([])
    if args.quick:
        args.mib, args.repeat, args.link_mib, args.link_repeat = 64, 2, 4, 1
    load_before = os.getloadavg()
    rows = [] if args.link_only else run_loopback(args)
    if args.link_only or args.link != "off":
        rows += run_link(args, required=args.link == "on" or args.link_only)
    judged = verdicts(rows)
    goals = targets(rows, judged)
    save("dataplane", {"rows": rows, "verdicts": judged, "targets": goals,
                       "args": {k: v for k, v in vars(args).items() if k != "receiver"},
                       "loadavg_before": load_before, "loadavg_after": os.getloadavg()})
    return rows + goals


def run_loopback(args: argparse.Namespace) -> list[dict[str, Any]]:
    arrays = {k: make_array(k, args.mib * MiB) for k in args.kinds}
    sender = Sender("127.0.0.1", args.curve)
    try:
        return measure(sender, scenarios_for(args.kinds, args.modes), arrays, args.repeat, "loopback")
    finally:
        sender.close()


# -- a throttled link: the receiver in a network namespace behind a tbf-limited veth ---------------------------


def link_unavailable() -> str | None:
    """Why ``--link`` cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and tc)"
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
    return f"needs {' and '.join(missing)} (iproute2)" if missing else None


def _sh(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


@contextlib.contextmanager
def throttled_link(rate: str) -> Iterator[tuple[str, list[str]]]:
    """A namespace joined to this one by a veth pair, our side's egress limited to ``rate`` by tbf.

    Yields (our address, the command prefix that runs a program inside the namespace).
    """
    tag = f"{os.getpid() % 50_000}"
    ns, here, there = f"zcbench{tag}", f"zcb{tag}a", f"zcb{tag}b"
    net = f"10.219.{os.getpid() % 250}"  # tests/faults use 10.213.x
    made: list[list[str]] = []  # what to delete: only what this call created
    try:
        _sh("ip", "netns", "add", ns)
        made.append(["ip", "netns", "del", ns])  # takes the veth pair's inside end, and so the pair, with it
        _sh("ip", "link", "add", here, "type", "veth", "peer", "name", there)
        made.append(["ip", "link", "del", here])
        _sh("ip", "link", "set", there, "netns", ns)
        _sh("ip", "addr", "add", f"{net}.1/24", "dev", here)
        _sh("ip", "link", "set", here, "up")
        _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{net}.2/24", "dev", there)
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", there, "up")
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        # burst 512 KB: a 4 ms timer tick's worth at 1 Gbit/s and several GSO packets; latency bounds the queue
        _sh("tc", "qdisc", "add", "dev", here, "root", "tbf", "rate", rate, "burst", "512kb", "latency", "100ms")
        yield f"{net}.1", ["ip", "netns", "exec", ns]
    finally:
        for cmd in made:
            subprocess.run(cmd, capture_output=True)


def run_link(args: argparse.Namespace, required: bool = True) -> list[dict[str, Any]]:
    why = link_unavailable()
    if why:
        print(f"\nthrottled links {'skipped' if required else 'not measured'}: {why}", flush=True)
        return []
    arrays = {k: make_array(k, args.link_mib * MiB) for k in args.kinds}
    # raw and zstd both, to tell which is faster; a cold receipt is the loopback's question
    modes = sorted((set(args.modes) | {"raw", "zstd"}) - {"raw+cold"}, key=POLICIES.index)
    rows = []
    for rate in args.rates:
        bits = rate_bits(rate)
        with throttled_link(rate) as (host, prefix):
            sender = Sender(host, args.curve, prefix, link_bits=bits)
            try:
                scenarios = scenarios_for(args.kinds, modes, ["1MiB frames"])  # the wire is the limit here
                rows += measure(sender, scenarios, arrays, args.link_repeat, rate)
            finally:
                sender.close()
    return rows


def rate_bits(rate: str) -> float:
    """A tc rate ("1gbit", "100mbit", "500kbit") in bits per second."""
    units = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3, "bit": 1.0}
    for unit, scale in units.items():
        if rate.lower().endswith(unit):
            return float(rate[:-len(unit)]) * scale
    raise ValueError(f"rate {rate!r}: use a number with gbit, mbit or kbit")


TIE = 1.1  # a policy within 10 % of the faster codec's time picked right (a near tie may go either way)


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per link and data: is zstd faster than raw, and is ``auto`` (``auto+link``, ``auto+probe``) as fast as the
    faster?"""
    out = []
    for link in dict.fromkeys(r["link"] for r in rows):
        for data in dict.fromkeys(r["data"] for r in rows):
            by = {r["policy"]: r for r in rows if r["link"] == link and r["data"] == data and r["path"] == "zcompute"}
            if not {"raw", "zstd"} <= set(by):
                continue
            best = min(by["raw"]["s"], by["zstd"]["s"])
            row = {"link": link, "data": data, "raw_s": by["raw"]["s"], "zstd_s": by["zstd"]["s"],
                   "zstd_speedup": by["raw"]["s"] / by["zstd"]["s"],
                   "faster": "zstd" if by["zstd"]["s"] < by["raw"]["s"] else "raw"}
            for policy in ("auto", "auto+link", "auto+probe"):
                if policy in by:
                    row[policy] = by[policy]["codec"]
                    row[f"{policy}_vs_best"] = by[policy]["s"] / best
                    row[f"{policy}_right"] = by[policy]["s"] <= TIE * best
            out.append(row)
    return out


def targets(rows: list[dict[str, Any]], judged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The performance targets: raw throughput against raw pyzmq, and compression only where it pays."""
    out = []
    loop = {r["policy"]: r for r in rows if r["link"] == "loopback" and r["data"] == "random"}
    cold = loop.get("raw+cold")
    for policy in ("raw", "auto"):
        if policy in loop and loop[policy]["ratio"] is not None:
            r = loop[policy]
            best = r["gbps"] / r["ratio"]
            note = f"; a first array of its size {cold['ratio']:.2f}" if cold and policy == "raw" else ""
            out.append({"target": f"data plane: {r['mib']:.0f} MiB float32 head -> provider, codec {policy}: "
                                  "GB/s / raw pyzmq's", "measured": round(r["ratio"], 2), "goal": ">= 0.8",
                        "met": r["ratio"] >= 0.8,
                        "reference": f"{r['gbps']:.2f} vs {best:.2f} GB/s over tcp loopback{note}"})
    links = [j for j in judged if j["link"] != "loopback"]
    for policy in ("auto+link", "auto+probe", "auto"):
        picked = [j for j in links if policy in j]
        if picked:
            right = sum(j[f"{policy}_right"] for j in picked)
            missed = ", ".join(f"{j['link']} {j['data']} ({j[f'{policy}_vs_best']:.2f}x the faster's time)"
                               for j in picked if not j[f"{policy}_right"])
            out.append({"target": f"compression only where it pays: {policy} as fast as the faster codec "
                                  f"(within {TIE - 1:.0%}; {', '.join(dict.fromkeys(j['link'] for j in picked))} "
                                  "tbf links)",
                        "measured": round(right / len(picked), 2), "goal": "1 (all cases)",
                        "met": right == len(picked), "reference": f"{right} of {len(picked)}"
                                                                 + (f"; missed {missed}" if missed else "")})
    return out


# -- command line ----------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=int, default=256, help="array size on loopback")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--modes", nargs="+", choices=POLICIES, default=POLICIES)
    p.add_argument("--curve", action="store_true", help="CURVE on every socket (the secure default deployment)")
    p.add_argument("--quick", action="store_true", help="64 MiB, 2 rounds; 4 MiB on links, 1 round")
    p.add_argument("--link", dest="link", action="store_const", const="on", default="auto",
                   help="measure on throttled links too (the default where root can make them)")
    p.add_argument("--no-link", dest="link", action="store_const", const="off", help="loopback only")
    p.add_argument("--link-only", action="store_true", help="only the throttled links")
    p.add_argument("--link-mib", type=int, default=16)
    p.add_argument("--link-repeat", type=int, default=3)
    p.add_argument("--rates", nargs="+", default=["1gbit", "100mbit"], help="tc rates, e.g. 1gbit 100mbit")
    p.add_argument("--receiver", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.receiver:
        _receiver(json.loads(args.receiver))
        return
    clean_blas_env()
    load_before = os.getloadavg()
    rows = run(args)
    load_after = os.getloadavg()
    info = machine()
    print(f"cores {info['cores']}, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          f"median of {args.repeat} (links: {args.link_repeat}){', CURVE' if args.curve else ''}")
    print_table("data plane: head -> provider, PUB -> SUB over tcp (GB/s of array bytes; ratio vs the best "
                "raw pyzmq on the same link)", [r for r in rows if "target" not in r], COLUMNS)
    judged = verdicts([r for r in rows if "target" not in r])
    if judged:
        print_table("does compression pay? (zstd_speedup > 1: zstd is faster; *_vs_best: the policy's time over "
                    "the faster codec's)", judged, ["link", "data", "raw_s", "zstd_s", "zstd_speedup", "faster", "auto",
                                                    "auto_vs_best", "auto+link", "auto+link_vs_best",
                                                    "auto+probe", "auto+probe_vs_best"])
    print_table("targets", [r for r in rows if "target" in r], ["target", "measured", "goal", "met", "reference"])
    print(f"\nwrote {RESULTS / 'dataplane.json'}")


if __name__ == "__main__":
    main()
