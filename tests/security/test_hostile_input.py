"""Hostile input from an authenticated peer (valid CURVE keys and token).

Each bad message is refused before it costs memory, with a clear error reply
where the socket has one, is counted, and changes nothing. Nothing is unpickled.
"""

from __future__ import annotations

import io
import re
import subprocess
import tokenize
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
import zstandard
from zmq.utils.monitor import recv_monitor_message

from common import protocol, wire
from common.errors import HeadUnreachable, RequestError, ValidationError
from tests.security.support import (
    RawPeer, client, delta, invite, jobs_snapshot, peak_rss_mb, register_msg, secured_cluster, wait_counted,
)
from user_client import Client, LocalCluster

MIB = 1024 * 1024
CLUSTER = {"providers": 1, "head_args": ["--max-message-mb", "1"]}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def peer(cluster):
    """An ordinary client peer: admitted keys, a valid token."""
    return invite(cluster, "client")


def _meta(name: str, dtype: str, shape: list, codec: str = "raw", nbytes=None) -> dict:
    if nbytes is None:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return {"name": name, "dtype": dtype, "shape": shape, "codec": codec, "nbytes": nbytes}


def _header(token: str, *, type: str = "submit", body=None, arrays=(), **extra) -> bytes:
    if body is None:
        body = {"task_type": "matmul", "params": {"splits": [1, 1]}}
    return msgpack.packb({"v": 1, "type": type, "id": "hostile-1", "token": token, "body": body,
                          "arrays": list(arrays), **extra}, use_bin_type=True)


def _nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = {"x": value}
    return value


def _deep_raw_header(token: str, depth: int) -> bytes:
    """A header whose params nest ``depth`` arrays deep (deeper than msgpack's own packer allows)."""
    placeholder = "@" * 16
    packed = _header(token, body={"task_type": "matmul", "params": {"splits": placeholder}})
    return packed.replace(msgpack.packb(placeholder), b"\x91" * depth + b"\xc0")


def _zstd(data: bytes, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=1, write_content_size=content_size).compress(data)


def _zstd_lying_about_its_size(declared: int, actual: int) -> bytes:
    """A zstd frame whose header declares ``declared`` bytes but whose blocks expand to ``actual``."""
    frame = _zstd(bytes(actual))
    assert frame[4] == 0x60  # single segment, 2-byte content size: rewrite as a 1-byte size
    return frame[:4] + bytes([0x20, declared]) + frame[7:]


def _cases(token: str) -> dict[str, tuple[list[bytes], str]]:
    """name -> (frames, what the error reply must say)."""
    h = lambda **kw: _header(token, **kw)  # noqa: E731
    f8x4 = _meta("a", "<f8", [4, 4])
    return {
        "shape does not match the bytes": ([h(arrays=[f8x4]), bytes(120)], r"frame has 120 bytes, header says 128"),
        "nbytes does not match the shape": ([h(arrays=[_meta("a", "<f8", [4, 4], nbytes=64)]), bytes(64)],
                                            r"shape \[4, 4\] of <f8 is 128 bytes, header says 64"),
        "zstd frame declaring another size": ([h(arrays=[_meta("a", "<f8", [4, 4], "zstd")]), _zstd(bytes(64))],
                                              r"zstd frame declares 64 bytes, header says 128"),
        "zstd frame declaring no size": ([h(arrays=[_meta("a", "<f4", [4], "zstd")]), _zstd(bytes(16), False)],
                                         r"zstd frame declares -1 bytes"),
        "zstd frame decompressing past its declared size": (
            [h(arrays=[_meta("a", "<f4", [4], "zstd")]), _zstd_lying_about_its_size(16, 64 * 1024)],
            r"zstd frame does not decompress"),
        "zstd bomb over the size limit": (  # 8 MiB of zeros in a few hundred bytes
            [h(arrays=[_meta("a", "<f8", [MIB], "zstd")]), _zstd(bytes(8 * MIB))],
            r"arrays decode to 8388608 bytes, over the limit of 1048576"),
        "not a zstd frame": ([h(arrays=[_meta("a", "<f4", [4], "zstd")]), b"\x00" * 16], r"not a zstd frame"),
        "object dtype": ([h(arrays=[_meta("a", "|O", [2])]), bytes(16)], r"dtype '\|O' is not allowed"),
        "void dtype": ([h(arrays=[_meta("a", "|V8", [2])]), bytes(16)], r"dtype '\|V8' is not allowed"),
        "unicode dtype": ([h(arrays=[_meta("a", "<U2", [2])]), bytes(16)], r"dtype '<U2' is not allowed"),
        "big-endian dtype": ([h(arrays=[_meta("a", ">f8", [2])]), bytes(16)], r"dtype '>f8' is not allowed"),
        "pickle codec": ([h(arrays=[_meta("a", "<f8", [2], "pickle")]), bytes(16)], r"unknown codec 'pickle'"),
        "negative dimension": ([h(arrays=[_meta("a", "<f8", [-1], nbytes=8)]), bytes(8)], r"bad shape \[-1\]"),
        "nine dimensions": ([h(arrays=[_meta("a", "<f8", [1] * 9)]), bytes(8)], r"bad shape"),
        "too many elements": ([h(arrays=[_meta("a", "|u1", [2**31 + 1])]), b""],
                              r"2147483649 elements exceeds the limit"),
        "frames over the total size limit": ([h(arrays=[_meta("a", "|u1", [MIB // 2 + 1]),
                                                        _meta("b", "|u1", [MIB // 2 + 1])]),
                                              bytes(MIB // 2 + 1), bytes(MIB // 2 + 1)],
                                             r"message of \d+ bytes exceeds the limit of 1048576"),
        "more frames than arrays": ([h(arrays=[f8x4]), bytes(128), bytes(128)],
                                    r"header lists 1 arrays.* but 2 frames follow"),
        "missing array frame": ([h(arrays=[f8x4])], r"header lists 1 arrays.* but 0 frames follow"),
        "too many arrays": ([h(arrays=[_meta(f"a{i}", "|u1", [0]) for i in range(65)]), *[b""] * 65],
                            r"header lists 65 arrays"),
        # raw arrays over 1 MiB travel in several frames ("frames": N in their entry)
        "frame count zero": ([h(arrays=[{**_meta("a", "|u1", [4]), "frames": 0}]), bytes(4)], r"bad frame count 0"),
        "several frames for a zstd array": ([h(arrays=[{**_meta("a", "|u1", [4], "zstd"), "frames": 2}]),
                                             _zstd(bytes(4)), b""], r"bad frame count 2"),
        "frames not adding up": ([h(arrays=[{**_meta("a", "|u1", [16]), "frames": 2}]), bytes(8), bytes(4)],
                                 r"frames hold 12 bytes, header says 16"),
        "a billion frames announced": ([h(arrays=[{**_meta("a", "|u1", [4]), "frames": 10**9}]), bytes(4)],
                                       r"1000000000 frames but 1 frames follow"),
        "duplicate array name": ([h(arrays=[_meta("a", "|u1", [1])] * 2), b"\x01", b"\x02"], r"'a' appears twice"),
        "malformed msgpack": ([b"\xc1\xc1\xc1\xc1"], r"header is not valid msgpack"),
        "truncated msgpack": ([h()[:-3]], r"header is not valid msgpack"),
        "msgpack array claiming 4 billion items": ([b"\xdd\xff\xff\xff\xff\xc0"], r"header is not valid msgpack"),
        "msgpack string claiming 4 GiB": ([b"\xdb\xff\xff\xff\xff" + b"x" * 64], r"header is not valid msgpack"),
        "header not a map": ([msgpack.packb(["submit", token])], r"header is not a map"),
        "non-string map keys": ([h(body={"task_type": "matmul", "params": {1: 2}})], r"header is not valid msgpack"),
        "msgpack ext type": ([h(body={"task_type": msgpack.ExtType(1, b"os.system"), "params": {}})],
                             r"field 'task_type' has the wrong type"),
        "unknown field": ([h(body={"task_type": "matmul", "params": {}, "__reduce__": "os.system"})],
                          r"unknown fields \['__reduce__'\]"),
        "params nested 9 deep": ([h(body={"task_type": "matmul", "params": _nested(8)})],
                                 r"nested deeper than 8 levels"),
        "params nested 5000 deep": ([_deep_raw_header(token, 5000)], r"nested deeper|not valid msgpack"),
        "huge header": ([h(body={"task_type": "matmul", "params": {"x": "a" * (300 * 1024)}})],
                        r"header of \d+ bytes exceeds the limit of 262144"),
        "huge message id": ([h(id="x" * 1000)], r"message id must be a non-empty string"),
        "wrong protocol version": ([h(v=2)], r"protocol version 2 is not supported"),
    }


CASE_NAMES = sorted(_cases("t"))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_frames_get_a_clear_error_and_change_nothing(cluster, admin, raw, peer, case):
    frames, expected = _cases(peer.token)[case]
    before, jobs = admin.stats(), jobs_snapshot(admin)
    reply = raw.request("api", peer, frames)
    assert isinstance(reply, protocol.Error), reply
    assert reply.code == "bad_message" and re.search(expected, reply.message), reply.message
    after = admin.stats()
    assert delta(before, after, "rejected_bad_message") == 1
    assert delta(before, after, "internal_errors") == 0
    assert jobs_snapshot(admin) == jobs


def test_bad_frames_on_the_provider_sockets_get_a_clear_error(cluster, admin, raw):
    join = invite(cluster, "provider")
    for role in ("registration", "heartbeat"):
        for name in ("zstd bomb over the size limit", "object dtype", "malformed msgpack", "params nested 9 deep"):
            frames, expected = _cases(join.token)[name]
            reply = raw.request(role, join, frames)
            assert isinstance(reply, protocol.Error) and reply.code == "bad_message", (role, name, reply)
            assert re.search(expected, reply.message), (role, name, reply.message)
    assert len(admin.providers()) == 1


def test_bad_frames_on_the_results_socket_are_dropped_and_counted(cluster, admin, raw):
    join = invite(cluster, "provider")
    names = ("zstd bomb over the size limit", "zstd frame decompressing past its declared size", "object dtype",
             "malformed msgpack", "params nested 9 deep", "huge header", "shape does not match the bytes")
    before = admin.stats()
    raw.push(join, [_cases(join.token)[name][0] for name in names])
    after = wait_counted(admin, before, "rejected_bad_result", len(names))
    assert delta(before, after, "internal_errors") == 0
    a = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(admin.matmul(a, a.T).result(timeout=30), a @ a.T)


def _still_serving(cluster: LocalCluster, admin: Client) -> None:
    assert cluster.head.poll() is None
    a = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(admin.matmul(a, a.T, splits=(2, 1)).result(timeout=30), a @ a.T)
    assert [p["state"] for p in admin.providers()] == ["ready"]


def _oversized(token: str) -> list[bytes]:
    """A submit whose one array frame is 2 MiB: over the 1 MiB limit, whatever the header says."""
    return [_header(token, arrays=[_meta("a", "<f8", [MIB // 4])]),
            np.random.default_rng(0).bytes(2 * MIB)]


def test_oversized_messages_drop_the_connection_and_the_head_carries_on(cluster, admin, peer, raw):
    """A frame over ``--max-message-mb``: ZeroMQ drops the sender's connection (no reply is possible),
    and the head goes on serving everyone else."""
    provider = invite(cluster, "provider")
    jobs = jobs_snapshot(admin)
    assert raw.request("api", peer, _oversized(peer.token), timeout=1.0) is None
    assert raw.request("registration", provider, register_msg(name="x" * (2 * MIB)), timeout=1.0) is None
    heartbeat = protocol.Heartbeat(provider_id="0" * 32, epoch="e", running=["x" * 64] * (MIB // 32), outbox=[],
                                   free_slots=1)
    assert raw.request("heartbeat", provider, heartbeat, timeout=1.0) is None
    # a client's own 2 MiB array: dropped, or (sent in frames under the limit) refused with a clear error
    # (over the socket: a client on the head's machine would otherwise hand it over as a file)
    big = np.random.default_rng(0).standard_normal((512, 512))
    with Client(cluster.address, join=peer, timeout=1.0, retries=0, compression="raw", local_data=False) as c:
        with pytest.raises((HeadUnreachable, RequestError)) as refused:
            c.matmul(big, big[:, :2])
    if isinstance(refused.value, RequestError):
        assert re.search(r"message of \d+ bytes exceeds the limit of 1048576", str(refused.value))
    _still_serving(cluster, admin)
    assert [j for j in jobs_snapshot(admin) if j not in jobs and j[1] != "admin"] == []
    with client(cluster, peer) as c:  # the same peer, on a new connection, with a message that fits
        a = big[:64, :64]
        np.testing.assert_allclose(c.matmul(a, a).result(timeout=30), a @ a)


def test_oversized_result_does_not_freeze_the_head():
    with secured_cluster(1, head_args=["--max-message-mb", "1"]) as cluster:
        _oversized_result(cluster)


def _oversized_result(cluster: LocalCluster) -> None:
    join = invite(cluster, "provider")
    payload = np.random.default_rng(1).bytes(2 * MIB)
    with cluster.client(timeout=1.0, retries=0) as admin, RawPeer(cluster) as raw:
        before = admin.stats()
        push = raw.socket(zmq.PUSH, "results", join)
        monitor = push.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:  # a header, then one 2 MiB frame
            push.send_multipart([bytes(wire.encode(protocol.Result(
                provider_id="0" * 32, task_id="x.0", attempt=0, elapsed=0.0, token=join.token))[0]), payload])
            assert monitor.poll(10_000), "the head never dropped the connection of the oversized message"
            assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        finally:
            push.disable_monitor()
            monitor.close(linger=0)
        try:
            admin.stats()  # a frozen head: HeadUnreachable here
        except HeadUnreachable:
            cluster.kill_head()  # it would not stop on SIGTERM either: spare the teardown its timeouts
            for proc in cluster.providers:
                proc.kill()
            raise
        # and the results socket still takes (and counts) the next message
        raw.push(join, [protocol.Result(provider_id="0" * 32, task_id="x.0", attempt=0, elapsed=0.0)])
        wait_counted(admin, before, "rejected_bad_result", 1)
        _still_serving(cluster, admin)


@pytest.mark.parametrize("splits, expected", [
    ([10**6, 1], r"at most 4096 per dimension"),
    ([1, 10**6], r"at most 4096 per dimension"),
    ("1000000x1000000", r"at most 4096 per dimension"),
    ([0, 1], r"at least 1"),
    ([-5, 2], r"at least 1"),
    ([1, 1, 1], r"not 'auto', N or a pair"),
    ([True, 1], r"not 'auto', N or a pair"),
    ([64, 1], r"larger than the result 4x4"),
])
def test_absurd_split_counts_are_refused(cluster, admin, peer, splits, expected):
    a = np.eye(4)
    jobs = jobs_snapshot(admin)
    with client(cluster, peer) as c:
        with pytest.raises(ValidationError, match=expected):
            c.matmul(a, a, splits=splits)
    assert jobs_snapshot(admin) == jobs


def _code_only(source: str) -> list[str]:
    """The source's lines with every comment and string literal (docstrings too) blanked out."""
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.STRING):
            continue
        (r0, c0), (r1, c1) = tok.start, tok.end
        for row in range(r0, r1 + 1):
            line = lines[row - 1]
            a, b = (c0 if row == r0 else 0), (c1 if row == r1 else len(line))
            lines[row - 1] = line[:a] + " " * (b - a) + line[b:]
    return lines


def _code_mentions(pattern: str) -> list[tuple[str, int, str, bool]]:
    """(file, line, text, in_code) for each tracked non-test .py line matching ``pattern`` (git grep);
    ``in_code`` is False where the match is only inside a comment or a string (a docstring, say)."""
    out = subprocess.run(["git", "grep", "--untracked", "-n", "-i", "-E", pattern, "--", "*.py", ":!tests"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode in (0, 1), out.stderr
    hits, code = [], {}
    for line in out.stdout.splitlines():
        path, lineno, text = line.split(":", 2)
        if path not in code:
            code[path] = _code_only((REPO / path).read_text())
        in_code = bool(re.search(pattern, code[path][int(lineno) - 1], re.I))
        hits.append((path, int(lineno), text.strip(), in_code))
    return hits


def test_nothing_is_ever_unpickled():
    """`git grep pickle` in the product (new files included) shows only allow_pickle=False in code
    (prose such as 'never pickled' in a docstring aside)."""
    hits = _code_mentions(r"pickle")
    assert hits, "git grep found nothing: is this a git checkout?"
    code = [h for h in hits if h[3]]
    assert code, "expected the np.load(..., allow_pickle=False) calls"
    offending = [h for h in code if "allow_pickle=False" not in h[2] or "allow_pickle=True" in h[2]]
    assert offending == [], offending
    # nor any other way to run a byte stream as objects
    unsafe = [h for h in _code_mentions(r"\b(import (c?pickle|dill|cloudpickle|marshal|shelve|joblib)|"
                                        r"torch\.load|yaml\.(unsafe_)?load|ext_hook|object_hook|"
                                        r"allow_pickle\s*=\s*True)") if h[3]]
    assert unsafe == [], unsafe
    # and every np.load says allow_pickle=False
    loads = [h for h in _code_mentions(r"\bnp\.load\(") if h[3]]
    assert loads and all("allow_pickle=False" in h[2] for h in loads), loads


# -- resource limits that are checked too late (or not at all) ----------------------------------------------


@pytest.fixture(scope="module")
def lone_head():
    """A secured head with no provider: what it accepts stays queued and never runs."""
    with secured_cluster(0, head_args=["--max-message-mb", "1"]) as local:
        yield local


def test_absurd_shard_count_is_refused_before_it_costs_memory(lone_head):
    a, b = np.ones((400, 1), np.float32), np.ones((1, 1000), np.float32)
    peak = peak_rss_mb(lone_head.head.pid)
    with lone_head.client(timeout=60.0, retries=0) as c:
        with pytest.raises(ValidationError, match="400000 shards exceeds the limit of 100000"):
            c.matmul(a, b, splits=[400, 1000])
        assert c.jobs() == []
        grew = peak_rss_mb(lone_head.head.pid) - peak
    assert grew < 100, f"the head's peak memory grew by {grew:.0f} MiB to refuse the job"


def test_job_whose_output_exceeds_the_element_limit_is_refused(lone_head):
    a, b = np.ones((65536, 1), np.float32), np.ones((1, 65536), np.float32)
    with lone_head.client(timeout=30.0, retries=0, compression="raw") as c:
        try:
            with pytest.raises(ValidationError):
                c.matmul(a, b, splits=[1, 1])
        finally:
            for job in c.jobs():  # accepted by mistake: cancel it before anything computes it
                c.job(job["job_id"]).cancel()


def test_provider_with_malformed_devices_cannot_break_the_provider_list(lone_head):
    join = invite(lone_head, "provider")
    msg = register_msg(devices=[{"kind": "cpu", "name": 5}])
    with RawPeer(lone_head) as raw:
        try:
            reply = raw.request("registration", join, msg)
            if isinstance(reply, protocol.Registered):
                with lone_head.client(timeout=5.0, retries=0) as c:
                    c.providers()
            else:
                assert isinstance(reply, protocol.Error) and reply.code == "invalid", reply
        finally:
            raw.request("registration", join, protocol.Deregister(provider_id=msg.provider_id, reason="test"))
