"""A provider behind a real network link that is cut or made lossy (Linux network namespaces, root only).

Each test makes a namespace with one end of a veth pair inside (10.213.X.2/24) and the other end in the
root namespace (10.213.X.1/24). The head binds 10.213.X.1; provider local-0 runs in the root namespace
(its traffic to that local address never touches the veth), provider local-1 runs inside the namespace,
so everything it exchanges with the head crosses the veth.

The link is impaired with a tiny eBPF classifier attached (TCX, kernel >= 6.6) to the *ingress* of both
veth ends: it drops every packet, or a random fraction of them. Dropping on ingress is what a real
partition looks like to both sides: the sender's stack sees its packets leave, nothing arrives, TCP keeps
retransmitting, and ZeroMQ's TCP keepalive (30 s) keeps the connections open across a cut of a few
seconds. ``tc qdisc ... netem`` would do the same, but many kernels (this CI's among them) are built
without sch_netem, and the eBPF classifier needs nothing beyond the bpf() syscall and ``ip``.
The programs are attached through BPF links held only by this process: closing them (or this process
dying) detaches them, and the namespace and veth pair are deleted in a finalizer even when a test fails.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import os
import platform
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from tests.helpers import hidden_dir_wrapper, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]

DEAD_AFTER = 1.5  # tests/conftest.py FAST
SLOW = 0.8  # seconds each shard's compute sleeps in test 1 (ZCOMPUTE_FAULTS delay:compute)

# -- the link impairment: an eBPF drop program on TCX ingress ------------------------------------------------

_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_PROG_LOAD, _BPF_LINK_CREATE = 5, 28
_BPF_PROG_TYPE_SCHED_CLS, _BPF_TCX_INGRESS = 3, 46
_CLONE_NEWNET = 0x40000000
_TCX_NEXT, _TCX_DROP = -1, 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _bpf(cmd: int, attr: bytes) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(f"no bpf() syscall number known for {platform.machine()}")
    buf = ctypes.create_string_buffer(attr, 128)
    fd = _libc.syscall(nr, cmd, buf, 128)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(cmd={cmd}): {os.strerror(err)}")
    return fd


def _drop_program(fraction: float) -> int:
    """Load a SCHED_CLS program that drops ``fraction`` of packets (1.0: all); return its fd."""
    if fraction >= 1.0:
        code = _insn(0xB7, imm=_TCX_DROP) + _insn(0x95)  # r0 = DROP; exit
    else:
        threshold = struct.unpack("<i", struct.pack("<I", int(fraction * 2**32)))[0]
        code = (_insn(0x85, imm=7)                        # r0 = bpf_get_prandom_u32()
                + _insn(0x36, dst=0, off=2, imm=threshold)  # if (u32)r0 >= threshold goto pass
                + _insn(0xB7, imm=_TCX_DROP) + _insn(0x95)  # r0 = DROP; exit
                + _insn(0xB7, imm=_TCX_NEXT) + _insn(0x95))  # pass: r0 = NEXT; exit
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = struct.pack("<IIQQIIQII16s", _BPF_PROG_TYPE_SCHED_CLS, len(code) // 8, ctypes.addressof(insns),
                       ctypes.addressof(license_), 0, 0, 0, 0, 0, b"zc_netns_drop")
    return _bpf(_BPF_PROG_LOAD, attr)


def _attach_ingress(prog_fd: int, ifname: str, netns: str | None = None) -> int:
    """Attach the program to ``ifname``'s ingress (inside ``netns`` if given); return the BPF link fd."""
    if netns is None:
        return _bpf(_BPF_LINK_CREATE, struct.pack("<IIII", prog_fd, socket.if_nametoindex(ifname),
                                                   _BPF_TCX_INGRESS, 0))
    # the interface index is looked up in the caller's namespace: do it from a thread that joins the
    # namespace (setns changes only the calling thread) and then ends
    out: dict[str, object] = {}

    def inside() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            out["fd"] = _attach_ingress(prog_fd, ifname)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out["error"] = e

    t = threading.Thread(target=inside, name="netns-attach")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["fd"]  # type: ignore[return-value]


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=10)


@dataclass
class Link:
    """The veth link between the root namespace and a test namespace."""

    ns: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str
    _links: list[int] = field(default_factory=list)

    def impair(self, drop: float) -> None:
        """Drop ``drop`` of the packets arriving at either end (1.0: a full partition, both ways)."""
        self.heal()
        prog = _drop_program(drop)
        try:
            self._links.append(_attach_ingress(prog, self.host_if))  # namespace -> head
            self._links.append(_attach_ingress(prog, self.ns_if, self.ns))  # head -> namespace
        finally:
            os.close(prog)  # the links keep the program alive

    def cut(self) -> None:
        self.impair(1.0)

    def heal(self) -> None:
        while self._links:
            os.close(self._links.pop())


_seq = itertools.count()


def _free_subnet() -> int:
    """A third octet X such that 10.213.X.0/24 is unused in the root namespace."""
    used = _run("ip", "-4", "-o", "addr", "show").stdout + _run("ip", "-4", "route", "show", "table", "all").stdout
    for i in range(254):
        x = (os.getpid() + i) % 254 + 1
        if f"10.213.{x}." not in used:
            return x
    raise RuntimeError("no free 10.213.X.0/24 subnet")


@pytest.fixture
def link():
    """A fresh namespace + veth pair; skipped (with the reason) where that cannot be done."""
    if os.geteuid() != 0:
        pytest.skip("network namespace tests need root (ip netns add, veth, bpf)")
    if shutil.which("ip") is None:
        pytest.skip("the `ip` tool (iproute2) is not installed")
    try:
        os.close(_drop_program(1.0))
    except OSError as e:
        pytest.skip(f"cannot load an eBPF packet-drop program (bpf() syscall): {e}")
    n, pid = next(_seq), os.getpid()
    x = _free_subnet()
    lk = Link(ns=f"zcompute-{pid}-{n}", host_if=f"zc{pid}h{n}", ns_if=f"zc{pid}n{n}",
              host_ip=f"10.213.{x}.1", ns_ip=f"10.213.{x}.2")
    try:
        try:
            _run("ip", "netns", "add", lk.ns)
        except subprocess.CalledProcessError as e:
            pytest.skip(f"cannot create a network namespace: {e.stderr.strip()}")
        _run("ip", "link", "add", lk.host_if, "type", "veth", "peer", "name", lk.ns_if, "netns", lk.ns)
        _run("ip", "addr", "add", f"{lk.host_ip}/24", "dev", lk.host_if)
        _run("ip", "link", "set", lk.host_if, "up")
        _run("ip", "-n", lk.ns, "addr", "add", f"{lk.ns_ip}/24", "dev", lk.ns_if)
        _run("ip", "-n", lk.ns, "link", "set", lk.ns_if, "up")
        _run("ip", "-n", lk.ns, "link", "set", "lo", "up")
        try:
            lk.cut()  # TCX attach works here? (kernel >= 6.6)
        except OSError as e:
            pytest.skip(f"cannot attach an eBPF program to veth ingress (TCX needs Linux >= 6.6): {e}")
        lk.heal()
        yield lk
    finally:
        lk.heal()
        _run("ip", "link", "del", lk.host_if, check=False)  # removes the peer in the namespace too
        _run("ip", "netns", "del", lk.ns, check=False)


@pytest.fixture
def netns_cluster(link, make_cluster):
    """Factory: a head on the link's host address, local-0 in the root namespace, local-1 behind the link.

    Requests ``link`` before ``make_cluster`` so the cluster is stopped before the namespace is deleted.
    """

    def start(**kwargs):
        cluster = make_cluster(1, host=link.host_ip, **kwargs)
        # behind the link is another machine: it cannot see the head's files either, so arrays cross the link
        cluster.add_provider(wrapper=["ip", "netns", "exec", link.ns, *hidden_dir_wrapper(cluster.data_dir / "head")])
        cluster.wait_for_providers(2, timeout=30)
        return cluster

    return start


def _by_name(c, name: str) -> dict | None:
    return next((p for p in c.providers() if p["name"] == name), None)


def _logs(cluster) -> str:
    return "".join(f"\n--- {n} ---\n{cluster.log_tail(n, 25)}" for n in ("head", "provider-0", "provider-1"))


# -- tests -----------------------------------------------------------------------------------------------------


def test_partition_longer_than_the_lease(link, netns_cluster):
    rng = np.random.default_rng(21)
    a, b = rng.standard_normal((600, 300)), rng.standard_normal((300, 200))
    # --no-speculate: the shard cut off must come back through the death path, not a speculative copy
    cluster = netns_cluster(env={"ZCOMPUTE_FAULTS": f"delay:compute={SLOW}"}, head_args=["--no-speculate"])
    with cluster.client(timeout=5, retries=2) as c:
        assert _by_name(c, "local-1")["state"] == "ready"
        job = c.matmul(a, b, splits=(6, 1))
        # local-1 reports the shard it holds in its next heartbeat (every 0.2 s), so when we see it busy
        # its shard started well under 0.4 s ago and has >= 0.4 s of its 0.8 s left: the cut comes mid-shard
        wait_until(lambda: (_by_name(c, "local-1") or {}).get("free_slots") == 0, timeout=10, interval=0.02)
        link.cut()
        cut_at = time.monotonic()
        try:
            # declared dead after dead_after of silence (summaries leave dead providers out)
            wait_until(lambda: _by_name(c, "local-1") is None, timeout=10)
            detected = time.monotonic() - cut_at
            # the job finishes on local-0 while local-1 is still cut off
            summary = job.wait(timeout=20)
            finished = time.monotonic() - cut_at
            stats_cut = c.stats()
        except BaseException:
            print(_logs(cluster))
            raise
        finally:
            cut_for = time.monotonic() - cut_at
            link.heal()
        assert cut_for > DEAD_AFTER
        np.testing.assert_allclose(job.result(timeout=10), a @ b, rtol=1e-12, atol=1e-12)
        assert summary["reruns"] >= 1, "local-1's lease was not requeued"
        assert stats_cut.get("providers_dead", 0) >= 1 and stats_cut.get("reassignments", 0) >= 1
        assert summary["shards_by_provider"].get("local-0", 0) >= 1
        assert sum(summary["shards_by_provider"].values()) == 6

        # after the link heals, local-1 learns from a heartbeat reply that it is unknown, registers again,
        # answers the readiness probe and is ready; TCP retransmission backoff (up to a few seconds after a
        # cut this long) and the 5 s heartbeat request timeout bound how long that takes
        healed_at = time.monotonic()
        try:
            wait_until(lambda: (_by_name(c, "local-1") or {}).get("state") == "ready", timeout=30, interval=0.1)
        except AssertionError:
            print(_logs(cluster))
            raise
        rejoined = time.monotonic() - healed_at

        # Fencing. local-1 was busy when cut, so it finished that shard while cut off: its result went to
        # its PUSH socket (kernel send buffer of a TCP connection that stays open) and its outbox. Once the
        # link is back, that stale result (attempt N, lease requeued as N+1) reaches the head and must be
        # dropped, never merged: the merged result above is already final and correct. What we can count:
        # local-1 computed more shards than were merged from it; every one of those extra results reaches
        # the head (TCP retransmission, then outbox re-sends until acknowledged) and each is fenced, so
        # results_fenced ends up at least that large. (A result is fenced more than once when both the
        # original push and an outbox re-send arrive, hence >=.)
        # ("computed" is the provider process's own count, reported by heartbeats: a provider just marked
        # ready after its probe may not have sent one yet, so wait for the count to show the extra shard.)
        merged_from_1 = summary["shards_by_provider"].get("local-1", 0)
        try:
            computed = wait_until(lambda: (n := (_by_name(c, "local-1") or {}).get("computed", 0)) > merged_from_1
                                  and n, timeout=10)
        except AssertionError:
            print(_logs(cluster))
            raise AssertionError(f"local-1 reports no shard beyond the {merged_from_1} merged from it: "
                                 "it was not mid-shard when cut") from None
        stale = computed - merged_from_1
        try:
            fenced = wait_until(lambda: (f := c.stats().get("results_fenced", 0)) >= stale and f, timeout=15)
        except AssertionError:
            print(_logs(cluster))
            raise
        assert job.status()["done"] == 6 and job.status()["status"] == "succeeded"

        # local-1 takes new work again
        job2 = c.submit("noop", {"shards": 4})
        summary2 = job2.wait(timeout=20)
        assert summary2["shards_by_provider"].get("local-1", 0) >= 1, summary2["shards_by_provider"]
        stats = c.stats()
    assert stats.get("results_fenced", 0) >= stale
    print(f"\nFIGURE partition: dead after {detected:.2f}s (dead_after {DEAD_AFTER}s), job done {finished:.2f}s "
          f"after the cut ({summary['reruns']} rerun(s)), link cut {cut_for:.2f}s, local-1 ready again "
          f"{rejoined:.2f}s after healing, {stale} stale result(s), results_fenced={fenced}, "
          f"job 2 by provider {summary2['shards_by_provider']}")


def _tcp_retransmits(ns: str) -> int:
    """TCP segments retransmitted so far by the sockets of namespace ``ns`` (only local-1's)."""
    lines = [line.split() for line in _run("ip", "netns", "exec", ns, "cat", "/proc/net/snmp").stdout.splitlines()
             if line.startswith("Tcp:")]
    return int(lines[1][lines[0].index("RetransSegs")])


def test_lossy_link_matmul_is_exact(link, netns_cluster):
    rng = np.random.default_rng(22)
    a, b = rng.standard_normal((600, 400)), rng.standard_normal((400, 300))
    # a compute delay spreads the 12 shards over both providers, so local-1's inputs and results
    # (100x400 and 400x150 float64 blocks in, 100x150 out) cross the lossy link
    cluster = netns_cluster(env={"ZCOMPUTE_FAULTS": "delay:compute=0.5"})
    with cluster.client(timeout=5, retries=2) as c:
        retrans_before = _tcp_retransmits(link.ns)
        link.impair(0.15)  # 15 % of packets lost each way
        try:
            start = time.monotonic()
            job = c.matmul(a, b, splits=(6, 2))
            got = job.result(timeout=45)
            elapsed = time.monotonic() - start
            summary = job.status()
            stats = c.stats()
            retransmits = _tcp_retransmits(link.ns) - retrans_before
        except BaseException:
            print(_logs(cluster))
            raise
        finally:
            link.heal()
        # local-1 really worked across the lossy link: it received whole tasks and computed them (whether
        # its result or a speculative copy on local-0 won is timing; either way the merge is exact).
        # Read after healing: if the loss made it miss heartbeats for dead_after, it is listed again
        # only once it has registered again.
        merged_from_1 = summary["shards_by_provider"].get("local-1", 0)
        computed = wait_until(lambda: (n := (_by_name(c, "local-1") or {}).get("computed", 0)) >= max(1, merged_from_1)
                              and n, timeout=15)
    np.testing.assert_allclose(got, a @ b, rtol=1e-12, atol=1e-12)
    assert summary["status"] == "succeeded" and summary["done"] == 12
    assert retransmits > 0, "no TCP retransmission in the namespace: the link was not lossy"
    print(f"\nFIGURE lossy link (15% each way): matmul (6,2) in {elapsed:.2f}s, by provider "
          f"{summary['shards_by_provider']}, local-1 computed {computed}, {retransmits} TCP retransmits, "
          f"reruns {summary['reruns']}, speculated {summary['speculated']}, "
          f"providers_dead {stats.get('providers_dead', 0)}, results_fenced {stats.get('results_fenced', 0)}")


def test_the_head_measures_a_slow_link_and_compresses_for_it(link, netns_cluster):
    """A token bucket limits the head's side of the veth to 20 Mbit/s: the head's link probe reads about
    that for local-1, and floats that shrink only to ~0.9 (which the codec's guess alone sends raw) go
    compressed to it, and only to it."""
    _run("tc", "qdisc", "add", "dev", link.host_if, "root", "tbf", "rate", "20mbit", "burst", "32kb",
         "latency", "400ms")
    cluster = netns_cluster(env={"ZCOMPUTE_FAULTS": "delay:compute=0.3"})
    with cluster.client(timeout=10, retries=2) as c:
        remote = wait_until(lambda: (p := _by_name(c, "local-1")) and p.get("link_mbit") and p, timeout=20)
        assert 10 <= remote["link_mbit"] <= 25, remote["link_mbit"]
        assert _by_name(c, "local-0")["link_mbit"] is None  # on the head's machine: nothing to measure
        # the figure reaches local-1 in its next heartbeat reply: its results are encoded for the link too
        wait_until(lambda: _by_name(c, "local-1")["last_seen"] > remote["last_seen"], timeout=10)
        noise = np.random.default_rng(3).standard_normal((300, 400)).astype(np.float32)
        before = c.stats()
        job = c.matmul(noise, noise.T, splits=(4, 1))
        np.testing.assert_allclose(job.result(timeout=60), noise @ noise.T, rtol=1e-4, atol=1e-3)
        after = c.stats()
        by_provider = job.status()["shards_by_provider"]
        raw, wire, back_raw, back_wire = (after[k] - before[k] for k in (
            "array_bytes_raw_sent", "array_bytes_wire_sent", "array_bytes_raw_received", "array_bytes_wire_received"))
        assert by_provider.get("local-1", 0) >= 1, by_provider  # some inputs crossed the slow link
        assert wire < raw, f"nothing was compressed for the 20 Mbit/s link ({wire} of {raw} bytes on the wire)"
        # local-1's blocks come back over the link compressed (the head also received the client's inputs, raw:
        # the client knows no link speed, and the guess sends these floats raw; local-0 writes in place)
        blocks = by_provider["local-1"] * 75 * 300 * 4
        assert back_raw - back_wire >= 0.05 * blocks, f"local-1 sent its results raw ({back_wire} of {back_raw} bytes)"
        # a provider joining while shards wait for it: the probes go ahead of its first task, and its own
        # clock times them, so the busy start does not skew the reading
        busy = c.matmul(noise, noise.T, splits=(12, 1))
        cluster.add_provider(wrapper=["ip", "netns", "exec", link.ns, *hidden_dir_wrapper(cluster.data_dir / "head")])
        joined = wait_until(lambda: (p := _by_name(c, "local-2")) and p.get("link_mbit") and p, timeout=30)
        assert 10 <= joined["link_mbit"] <= 25, joined["link_mbit"]
        busy.result(timeout=120)
    print(f"\nFIGURE link probe: local-1 measured {remote['link_mbit']} Mbit/s behind a 20mbit tbf, local-2 "
          f"(joining during a job) {joined['link_mbit']}; inputs to local-1 {wire / raw:.2f} of their raw size "
          f"on the wire; {back_raw - back_wire} bytes saved on its {blocks} bytes of results")
