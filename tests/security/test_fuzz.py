"""Fuzz every inbound socket of a running head with random and mutated frames while real matmul jobs run.

At least ``EXAMPLES`` frames go to EACH of the head's four inbound sockets
(registration, heartbeat, results, client API), sent by authenticated peers
(admitted CURVE keys of the right role; tokens inside the valid messages that
get mutated) over DEALER sockets (one reply per frame, no waiting per request)
and a PUSH socket. Frames are either random bytes or valid encoded messages
(``wire.encode``) with bytes flipped, overwritten or inserted, headers
truncated, frames added, dropped or duplicated.

Afterwards: the head is up, every job that ran meanwhile equals numpy's
answer, every frame on a ROUTER socket got exactly one reply (an error reply
for at least every frame our own decoder refuses, each counted by the head
under ``rejected_<code>``), every frame on the results socket that cannot
decode is counted (``rejected_bad_result``), and the head had no internal error.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter

import msgpack
import numpy as np
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from common import protocol, wire
from common.errors import DecodeError
from tests.security.support import delta, invite, register_msg

#: examples (frames per socket); FUZZ_EXAMPLES=500 for a quick look while working on the head
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10000"))
CLUSTER = {"providers": 2, "log_level": "warning"}
ROUTERS = ("registration", "heartbeat", "api")
SOCKETS = (*ROUTERS, "results")

# -- cases -----------------------------------------------------------------------------------------------------
#
# Hypothesis supplies one 64-bit seed per example and everything else is derived from it with
# ``random.Random(seed)``: a falsifying example (the seed hypothesis prints) replays exactly, and
# generating an example costs ~0.4 ms instead of the ~2 ms a composite strategy of byte strings, lists and
# tuples costs, which is what lets 10,000 examples x 4 sockets run in seconds.

SEEDS = st.integers(min_value=0, max_value=2**64 - 1)
#: bytes that mean something to msgpack: type markers, and length prefixes that claim huge sizes
MSGPACK_BYTES = (0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
                 0xc8, 0xc9, 0xca, 0xcb, 0xcf, 0xd3, 0xd4, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff)
OPS = ("flip", "ascii", "set", "insert", "delete", "truncate", "add_frame", "drop_frame", "dup_frame")


#: values a "field" case puts into a decoded header (then packed again): wrong types, extremes, odd strings.
#: (No dict with a "name" or "kind" key: a device like that hits a known bug, see test_hostile_input.)
ODD_VALUES = (None, True, False, 0, -1, 1, 2**31, 2**63 - 1, -2**63, 2**64 - 1, 0.0, -0.0, float("nan"),
              float("inf"), -1e308, "", "x" * 5000, "../../etc/passwd", "\x00", "🙂", "abc.0#0", "1" * 5000 + ".0",
              b"", b"\x80\x81", [], [1], ["a"] * 300, [[[[]]]], [{}], [{"a": [1, {"b": None}]}], {}, {"a": 1},
              {"": {"": {"": {}}}}, msgpack.ExtType(5, b"ext"))


def case_of(seed: int) -> tuple[str, object]:
    """("random", frames), ("mutated", (base index, frame to mutate, operations)) or
    ("field", (base index, which field, value index))."""
    rnd = random.Random(seed)
    if rnd.random() < 0.25:
        return "field", (rnd.randrange(1 << 16), rnd.randrange(1 << 16), rnd.randrange(len(ODD_VALUES)))
    if rnd.random() < 0.3:
        return "random", [rnd.randbytes(rnd.choice((0, 1, 2, 8, 40, 300))) if rnd.random() < 0.2
                          else rnd.randbytes(rnd.randrange(301)) for _ in range(rnd.randint(1, 3))]
    ops = []
    for _ in range(rnd.choice((1, 1, 1, 2, 2, 3, 4))):
        op = rnd.choice(OPS)
        if op == "flip":
            ops.append((op, rnd.random(), rnd.randint(1, 255)))
        elif op == "ascii":  # stays valid UTF-8 inside a string: reaches the token and field checks
            ops.append((op, rnd.random(), rnd.randint(0x20, 0x7e)))
        elif op == "set":
            ops.append((op, rnd.random(), rnd.choice(MSGPACK_BYTES)))
        elif op == "insert":
            ops.append((op, rnd.random(), rnd.randbytes(rnd.randint(1, 8))))
        elif op == "delete":
            ops.append((op, rnd.random(), rnd.randint(1, 16)))
        elif op == "truncate":
            ops.append((op, rnd.random()))
        elif op == "add_frame":
            ops.append((op, rnd.randbytes(rnd.randrange(65))))
        else:
            ops.append((op, rnd.randrange(8)))
    return "mutated", (rnd.randrange(1 << 16), 0 if rnd.random() < 0.8 else 1, ops)


def _mutate(frames: list[bytes], target: int, ops) -> list[bytes]:
    frames = list(frames)
    for op in ops:
        kind = op[0]
        if kind == "add_frame":
            frames.append(op[1])
            continue
        if kind in ("drop_frame", "dup_frame"):
            if frames:
                i = op[1] % len(frames)
                frames[i:i + 1] = [] if kind == "drop_frame" else [frames[i], frames[i]]
            continue
        if not frames:
            continue
        i = target % len(frames)
        data = bytearray(frames[i])
        at = int(op[1] * (len(data) + 1))
        if kind in ("flip", "ascii", "set") and data:
            at = min(at, len(data) - 1)
            data[at] = data[at] ^ op[2] if kind == "flip" else op[2]
        elif kind == "insert":
            data[at:at] = op[2]
        elif kind == "delete":
            del data[at:at + op[2]]
        elif kind == "truncate":
            del data[at:]
        frames[i] = bytes(data)
    return frames or [b""]


def _with_odd_field(frames: list[bytes], which: int, value_index: int) -> list[bytes]:
    """The header decoded, one top-level or body field replaced by an odd value, packed again."""
    header = msgpack.unpackb(frames[0])
    fields = [("header", k) for k in sorted(header)] + [("body", k) for k in sorted(header["body"])]
    place, key = fields[which % len(fields)]
    (header if place == "header" else header["body"])[key] = ODD_VALUES[value_index]
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def _frames(msg: protocol.Message, compression: str = "raw") -> list[bytes]:
    return [bytes(f) for f in wire.encode(msg, compression=compression)]


def _bases(job_id: str, own_id: str, victim_id: str, epoch: str, prov, cli) -> dict[str, list[list[bytes]]]:
    """Valid encoded messages per socket, with the sending peer's token: the seeds for mutation."""
    def signed(msg: protocol.Message, join) -> protocol.Message:
        msg.token = join.token
        return msg

    block = np.arange(16 * 20, dtype=np.float64).reshape(16, 20)
    task = f"{job_id}.0"
    beat = dict(epoch=epoch, running=[f"{task}#0"], outbox=[f"{job_id}.1#0"], free_slots=1, load=0.5)
    return {
        "registration": [
            _frames(signed(register_msg(own_id, devices=[]), prov)),
            _frames(signed(register_msg(own_id, slots=0), prov)),  # invalid
            _frames(signed(register_msg(victim_id), prov)),  # someone else's id
            _frames(signed(protocol.Deregister(provider_id=uuid.uuid4().hex, reason="fuzz"), prov)),
        ],
        "heartbeat": [
            _frames(signed(protocol.Heartbeat(provider_id=own_id, **beat), prov)),
            _frames(signed(protocol.Heartbeat(provider_id=victim_id, **beat), prov)),
            _frames(signed(protocol.Heartbeat(provider_id=uuid.uuid4().hex, **beat), prov)),
        ],
        "results": [
            _frames(signed(protocol.Result(provider_id=own_id, task_id=task, attempt=0, elapsed=0.1,
                                           arrays={"c": block}), prov)),
            _frames(signed(protocol.Result(provider_id=own_id, task_id=task, attempt=0, elapsed=0.1,
                                           arrays={"c": np.zeros((16, 20))}), prov), "zstd"),
            _frames(signed(protocol.Result(provider_id=victim_id, task_id=task, attempt=0, elapsed=0.1,
                                           arrays={"c": block}), prov)),
            _frames(signed(protocol.Failure(provider_id=own_id, task_id=task, attempt=0, error="fuzz"), prov)),
            _frames(signed(protocol.Accepted(provider_id=own_id, task_id=task, attempt=0), prov)),
            _frames(signed(protocol.Progress(provider_id=own_id, task_id=task, attempt=0, fraction=0.5), prov)),
            _frames(signed(protocol.ProbeAck(provider_id=own_id, probe_id="not-the-probe"), prov)),
        ],
        "api": [
            _frames(signed(protocol.Status(job_id=job_id), cli)),  # another client's job
            _frames(signed(protocol.Fetch(job_id=job_id), cli)),
            _frames(signed(protocol.CancelJob(job_id=job_id), cli)),
            _frames(signed(protocol.ListJobs(state="running"), cli)),
            _frames(signed(protocol.ListProviders(), cli)),
            _frames(signed(protocol.Stats(), cli)),
            _frames(signed(protocol.Submit(task_type="matmul", params={"splits": [2, 1]},  # inner dims differ
                                           arrays={"a": np.ones((3, 4)), "b": np.ones((5, 2))}), cli)),
            _frames(signed(protocol.Submit(task_type="matmul", params={"splits": "auto"},
                                           arrays={"a": np.zeros((64, 64)), "b": np.zeros((32, 8))}), cli), "zstd"),
        ],
    }


class JobLoop(threading.Thread):
    """Submits matmul jobs back to back until stopped; checks each result against numpy."""

    def __init__(self, cluster):
        super().__init__(name="fuzz-jobs", daemon=True)
        self.cluster, self.stop, self.first = cluster, threading.Event(), threading.Event()
        self.done: list[str] = []
        self.errors: list[str] = []
        self.first_id = ""

    def run(self) -> None:
        rng = np.random.default_rng(7)
        try:
            with self.cluster.client(timeout=10.0, retries=3) as c:
                while not self.stop.is_set():
                    a, b = rng.standard_normal((96, 64)), rng.standard_normal((64, 80))
                    job = c.matmul(a, b, splits=(6, 2))
                    if not self.first_id:
                        self.first_id = job.id
                        self.first.set()
                    got = job.result(timeout=60)
                    if not np.allclose(got, a @ b, rtol=1e-10, atol=1e-12):
                        self.errors.append(f"job {job.id}: result differs from numpy")
                    self.done.append(job.id)
        except Exception as e:  # reported by the test
            self.errors.append(repr(e))
        finally:
            self.first.set()


def test_fuzz_every_inbound_socket_while_jobs_run(cluster, admin, raw):
    prov, cli = invite(cluster, "provider", "fuzz-provider"), invite(cluster, "client", "fuzz-client")
    own_id = uuid.uuid4().hex
    assert isinstance(raw.request("registration", prov, register_msg(own_id, devices=[])), protocol.Registered)
    victim_id = admin.providers()[0]["provider_id"]

    jobs = JobLoop(cluster)
    jobs.start()
    assert jobs.first.wait(30) and jobs.first_id, jobs.errors
    bases = _bases(jobs.first_id, own_id, victim_id, admin.stats()["epoch"], prov, cli)

    socks: dict[str, zmq.Socket] = {}
    for role in ROUTERS:
        sock = raw.socket(zmq.DEALER, role, cli if role == "api" else prov)
        sock.setsockopt(zmq.RCVHWM, 0)  # keep every reply; we count them
        socks[role] = sock
    socks["results"] = raw.socket(zmq.PUSH, "results", prov)

    sent, undecodable, kinds = Counter(), Counter(), Counter()
    replies, errors = Counter(), Counter()
    error_codes: Counter[str] = Counter()

    def drain(role: str, wait_ms: int = 0) -> None:
        sock = socks[role]
        while sock.poll(wait_ms):
            reply = wire.decode(sock.recv_multipart()[1:])  # after the empty delimiter
            replies[role] += 1
            if isinstance(reply, protocol.Error):
                errors[role] += 1
                error_codes[reply.code] += 1
            wait_ms = 0

    before = admin.stats()
    started = time.monotonic()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(SEEDS)
    def fuzz(seed: int) -> None:
        kind, payload = case_of(seed)
        kinds[kind] += 1
        for role in SOCKETS:
            if kind == "random":
                frames = list(payload)
            elif kind == "field":
                index, which, value = payload
                frames = _with_odd_field(bases[role][index % len(bases[role])], which, value)
            else:
                index, target, ops = payload
                base = bases[role][index % len(bases[role])]
                frames = _mutate(base, target, ops)
            try:
                wire.decode(frames)
            except DecodeError:
                undecodable[role] += 1
            if role == "results":
                socks[role].send_multipart(frames)
            else:
                socks[role].send_multipart([b"", *frames])
                drain(role)
            sent[role] += 1

    fuzz()
    fuzz_seconds = time.monotonic() - started
    deadline = time.monotonic() + 60
    while any(replies[r] < sent[r] for r in ROUTERS) and time.monotonic() < deadline:
        for role in ROUTERS:
            drain(role, 50)
    # the results socket has no replies: wait until the head has counted what cannot decode
    while (delta(before, admin.stats(), "rejected_bad_result") < undecodable["results"]
           and time.monotonic() < deadline):
        time.sleep(0.1)
    jobs.stop.set()
    jobs.join(60)
    after = admin.stats()

    deltas = {k: delta(before, after, k) for k in sorted(set(before) | set(after))
              if k != "epoch" and delta(before, after, k)}
    print(f"\nfuzz: {EXAMPLES} examples ({dict(kinds)}) in {fuzz_seconds:.1f}s; "
          f"{len(jobs.done)} matmul jobs ran meanwhile")
    for role in SOCKETS:
        print(f"  {role:<12} frames sent {sent[role]:>6}  undecodable (our decoder) {undecodable[role]:>6}"
              + (f"  replies {replies[role]:>6}  error replies {errors[role]:>6}" if role in ROUTERS else ""))
    print(f"  error replies by code: {dict(error_codes)}")
    print(f"  head counter deltas: {deltas}")

    assert cluster.head.poll() is None, "the head exited"
    assert not jobs.is_alive()
    assert jobs.errors == [] and len(jobs.done) >= 1
    for role in SOCKETS:
        assert sent[role] >= EXAMPLES
    for role in ROUTERS:
        assert replies[role] == sent[role], f"{role}: {sent[role]} frames, {replies[role]} replies"
        assert errors[role] >= undecodable[role]
    assert deltas.get("internal_errors", 0) == 0
    # every error reply was counted under its code (only the ROUTER sockets raise rejected_bad_message)
    assert deltas.get("rejected_bad_message", 0) == error_codes["bad_message"]
    for code, count in error_codes.items():
        assert deltas.get(f"rejected_{code}", 0) >= count, code
    # every results frame that cannot decode was counted
    assert deltas.get("rejected_bad_result", 0) >= undecodable["results"]
    assert (deltas.get("rejected_bad_result", 0) + deltas.get("results_fenced", 0)
            + deltas.get("rejected_auth", 0) - error_codes["auth"]) >= undecodable["results"]
    # the head still serves, and the cluster still computes
    assert {p["provider_id"] for p in admin.providers() if p["state"] == "ready"} >= {victim_id}
    a = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(admin.matmul(a, a.T).result(timeout=30), a @ a.T)
