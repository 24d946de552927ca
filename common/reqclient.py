"""Request-reply with the Lazy Pirate pattern: time out, reopen the socket, resend the same request.

The request keeps its id across resends so the head answers a duplicate
idempotently. An ``Error`` reply is raised as the matching ``RequestError``.
"""

from __future__ import annotations

import threading

import zmq

from common import protocol, wire
from common.codec import DEFAULT_LIMITS, Limits
from common.errors import DecodeError, HeadUnreachable, request_error
from common.logs import get_logger
from common.sockets import CurveKeys, make_socket, recv_frames, send

log = get_logger(__name__)
#: a request retried until it is answered (a provider registering) says so at its first timeout and then
#: every this many (a minute at the usual 5 s): a wrong head address must not look like a hang
WARN_EVERY = 12
_DEFAULT = object()


class ReqChannel:
    def __init__(self, ctx: zmq.Context, url: str, *, timeout: float = 5.0, retries: int | None = 3,
                 limits: Limits = DEFAULT_LIMITS, curve: CurveKeys | None = None, compression: str = "auto",
                 stop: threading.Event | None = None, token: str | None = None):
        self.ctx, self.url, self.timeout, self.retries = ctx, url, timeout, retries
        self.limits, self.curve, self.compression = limits, curve, compression
        self.stop = stop or threading.Event()
        self.token = token  # put on every request that carries none
        self._sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            self._sock = make_socket(self.ctx, zmq.REQ, limits=self.limits, curve=self.curve)
            self._sock.connect(self.url)
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def request(self, msg: protocol.Message, *, timeout: float | None = None,
                retries=_DEFAULT) -> protocol.Message:
        """Send ``msg`` and return the reply; ``retries=None`` retries until ``stop`` is set."""
        timeout = self.timeout if timeout is None else timeout
        retries = self.retries if retries is _DEFAULT else retries
        if msg.token is None:
            msg.token = self.token
        attempt = 0
        while not self.stop.is_set():
            sock = self._socket()
            send(sock, msg, compression=self.compression)
            if sock.poll(timeout * 1000, zmq.POLLIN):
                try:
                    reply = wire.decode(recv_frames(sock), limits=self.limits)
                except DecodeError:
                    self._reset()
                    raise
                if isinstance(reply, protocol.Error):
                    raise request_error(reply.code, reply.message)
                return reply
            self._reset()  # a REQ socket that missed its reply is stuck: reopen it
            attempt += 1
            if retries is None and attempt % WARN_EVERY == 1:
                log.warning("request.no_reply", url=self.url, type=msg.type.value, tries=attempt,
                            detail="still trying: is the head running there, and is the address right?")
            else:
                log.debug("request.retry", url=self.url, type=msg.type.value, attempt=attempt)
            if retries is not None and attempt > retries:
                break
        raise HeadUnreachable(f"no reply from {self.url} to {msg.type.value} after {attempt} tries of {timeout:g}s")

    def close(self) -> None:
        self._reset()
