"""The one place zcompute makes ZeroMQ sockets.

Every socket gets LINGER, high-water marks, MAXMSGSIZE, TCP keepalive and
reconnect backoff here; CURVE keys are applied here too once given. Send and
receive helpers translate ZeroMQ errors into ``TransportError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import zmq

from common import protocol, wire
from common.codec import DEFAULT_LIMITS, Limits
from common.errors import TransportError
from common.faults import FAULTS

ZERO_COPY_BYTES = 64 * 1024  # below this, pyzmq copies a frame anyway

@dataclass(frozen=True)
class CurveKeys:
    """Our key pair, plus the server's public key when we are the client side."""

    public: bytes
    secret: bytes
    server_public: bytes | None = None


def make_socket(
    ctx: zmq.Context,
    kind: int,
    *,
    limits: Limits = DEFAULT_LIMITS,
    curve: CurveKeys | None = None,
    server: bool = False,
    hwm: int = 10_000,
    linger_ms: int = 0,
    identity: bytes | None = None,
    zap_domain: str | None = None,
) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 10)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5_000)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if kind == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
    if curve is not None:
        sock.curve_publickey = curve.public
        sock.curve_secretkey = curve.secret
        if server:
            sock.curve_server = True
            if zap_domain:
                sock.zap_domain = zap_domain.encode()  # ZAP admits keys per socket role
        else:
            if curve.server_public is None:
                raise ValueError("a CURVE client socket needs the server's public key")
            sock.curve_serverkey = curve.server_public
    return sock


def send(sock: zmq.Socket, msg: protocol.Message, *, envelope: list[bytes] | None = None,
         topic: str | None = None, compression: str = "auto", flags: int = 0, faults: bool = True,
         link_bits: float | None = None) -> int:
    """Send ``msg``; return the bytes put on the wire (0 when a test fault dropped it)."""
    frames = wire.encode(msg, topic=topic, compression=compression, link_bits=link_bits)
    if envelope:
        frames = [*envelope, *frames]
    copies = FAULTS.copies(msg.type.value) if faults and FAULTS.active else 1
    zero_copy = any(len(f) > ZERO_COPY_BYTES for f in frames)  # small: copying is cheaper
    try:
        for _ in range(copies):
            sock.send_multipart(frames, flags=flags, copy=not zero_copy)
        return copies * frames_bytes(frames)
    except zmq.Again as e:
        raise TransportError(f"send of {msg.type.value} would block (peer gone or high-water mark)") from e
    except zmq.ZMQError as e:
        raise TransportError(f"send of {msg.type.value} failed: {e}") from e


class Outbox:
    """Small messages to a socket's peers, held until ``flush`` and then sent one ``Batch`` per peer.

    At high rates (thousands of tiny shards a second) the cost of a message is its send and receive, not
    its bytes; the loop that owns the socket puts what it has to say while it drains its inputs and
    flushes before it polls again, so batching adds no waiting. Order per peer is kept: a message too
    big to batch first flushes what is held for its peer. ``topic`` is the PUB topic (None for PUSH).
    Test faults (``ZCOMPUTE_FAULTS``) apply to each message, as if it had travelled alone.
    """

    def __init__(self, sock: zmq.Socket, *, compression: str = "auto", limits: Limits = DEFAULT_LIMITS,
                 on_error: Callable[[str | None, int, TransportError], None] | None = None):
        self.sock, self.compression, self.limits, self.on_error = sock, compression, limits, on_error
        self._held: dict[str | None, list[protocol.Message]] = {}
        self._arrays: dict[str | None, int] = {}
        self.batches = 0  # batches sent (a lone message is not one)
        self.link_bits: dict[str | None, float] = {}  # topic -> its link's measured speed (the auto codec's)

    def put(self, msg: protocol.Message, topic: str | None = None) -> int:
        """Hold ``msg`` (or send it now if it is large); return the bytes sent by this call."""
        if not wire.batchable(msg):
            return self._flush_topic(topic) + self._send(topic, msg, faults=True)
        sent = 0
        held = self._held.setdefault(topic, [])
        if len(held) >= wire.BATCH_MAX_ITEMS or \
                self._arrays.get(topic, 0) + len(msg.arrays) > self.limits.max_arrays:
            sent += self._flush_topic(topic)
            held = self._held.setdefault(topic, [])
        held.extend([msg] * (FAULTS.copies(msg.type.value) if FAULTS.active else 1))
        self._arrays[topic] = self._arrays.get(topic, 0) + len(msg.arrays)
        return sent

    def flush(self) -> int:
        """Send everything held; return the bytes sent."""
        return sum(self._flush_topic(topic) for topic in list(self._held))

    def _flush_topic(self, topic: str | None) -> int:
        msgs = self._held.pop(topic, [])
        self._arrays.pop(topic, None)
        if not msgs:
            return 0
        if len(msgs) == 1:  # held messages had their faults applied when put
            return self._send(topic, msgs[0], faults=False)
        self.batches += 1
        return self._send(topic, wire.batch(msgs), faults=False)

    def _send(self, topic: str | None, msg: protocol.Message, faults: bool) -> int:
        try:
            return send(self.sock, msg, topic=topic, compression=self.compression, flags=zmq.NOBLOCK, faults=faults,
                        link_bits=self.link_bits.get(topic))
        except TransportError as e:
            if self.on_error is None:
                raise
            self.on_error(topic, len(msg.items) if isinstance(msg, protocol.Batch) else 1, e)
            return 0


def frames_bytes(frames: list[Any]) -> int:
    """Bytes in ``frames`` (received ``zmq.Frame`` objects, bytes, or anything with a buffer)."""
    return sum(len(f) if isinstance(f, (zmq.Frame, bytes)) else memoryview(f).nbytes for f in frames)


def recv_frames(sock: zmq.Socket, flags: int = 0, copy: bool = False) -> list[Any]:
    """The next message's frames: zero-copy ``zmq.Frame`` objects, or ``bytes`` with ``copy`` (cheaper for
    a socket whose messages are all small, such as heartbeats)."""
    try:
        return sock.recv_multipart(flags=flags, copy=copy)
    except zmq.Again as e:
        raise TransportError("nothing to receive") from e
    except zmq.ZMQError as e:
        raise TransportError(f"receive failed: {e}") from e


def split_envelope(frames: list[Any]) -> tuple[list[bytes], list[Any]]:
    """Split a ROUTER message into its routing envelope (up to the empty delimiter) and body."""
    for i, f in enumerate(frames):
        if len(f.buffer if hasattr(f, "buffer") else f) == 0:
            return [bytes(getattr(x, "bytes", x)) for x in frames[: i + 1]], frames[i + 1:]
    # a DEALER peer without delimiter: the first frame is the identity
    return [bytes(getattr(frames[0], "bytes", frames[0]))], frames[1:]
