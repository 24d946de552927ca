"""Who may connect and what they may hear, at the socket level (secured heads only).

- Socket monitors count peers that fail the CURVE handshake (no CURVE, a key ZAP refuses). A peer
  that hangs up before its handshake is through (a port scan, a load balancer's TCP health check, a
  client stopped while connecting) offered no credential, so it is counted apart and not as a failure.
  libzmq reports a peer without CURVE that notices the mismatch before we do, and hangs up, the same
  way: such a peer shows as abandoned handshakes (and may not try again).
- The task XPUB applies a subscription only under the prefix derived from the subscriber's own
  CURVE key, so no provider can read shards sent to another.
"""

from __future__ import annotations

import errno
from collections import Counter
from typing import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from common.security import topic_prefix
from head_node.auth import user_id

HANDSHAKE_FAILURES_NAMES = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol_mismatch",  # e.g. a peer without CURVE
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "key_not_admitted",  # ZAP said no
}
HANDSHAKE_FAILURES = sum(HANDSHAKE_FAILURES_NAMES)
#: what libzmq reports (event value) for a connection the peer closed in the middle of the handshake
HUNG_UP = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


class SocketGuard:
    def __init__(self, sockets: dict[str, zmq.Socket], counters: Counter, log):
        self.sockets, self.counters, self.log = sockets, counters, log
        self.monitors: list[zmq.Socket] = []

    def routes(self) -> dict[zmq.Socket, Callable[[zmq.Socket], bool | None]]:
        """Extra sockets for the head's poll loop, with their handlers."""
        routes: dict[zmq.Socket, Callable] = {self.sockets["tasks"]: self.on_subscription}
        for role, sock in self.sockets.items():
            monitor = sock.get_monitor_socket(HANDSHAKE_FAILURES)
            self.monitors.append(monitor)
            routes[monitor] = lambda m, role=role: self.on_monitor_event(m, role)
        return routes

    def on_subscription(self, sock: zmq.Socket) -> bool:
        """Apply a subscription only under the subscriber's own key prefix."""
        try:
            frame = sock.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        data = frame.bytes
        if not data or data[0] not in (0, 1):
            return True
        topic, key = data[1:], user_id(frame)
        if data[0] == 0:  # unsubscribing reveals nothing (it also arrives, without a User-Id, on disconnect)
            sock.setsockopt(zmq.UNSUBSCRIBE, topic)
            return True
        if key is None or not topic.startswith(topic_prefix(key).encode()):
            self.counters["subscriptions_refused"] += 1
            self.counters["auth_failures"] += 1
            self.log.warning("subscription.refused", topic=topic[:64].decode(errors="replace"))
            return True
        sock.setsockopt(zmq.SUBSCRIBE, topic)
        return True

    def on_monitor_event(self, monitor: zmq.Socket, role: str) -> None:
        event = recv_monitor_message(monitor)
        endpoint = event["endpoint"].decode(errors="replace")
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and event["value"] in HUNG_UP:
            self.counters["handshakes_abandoned"] += 1
            self.log.debug("peer.handshake_abandoned", socket=role, endpoint=endpoint)
            return
        self.counters["auth_failures"] += 1
        self.counters["handshake_failures"] += 1
        self.log.warning("peer.handshake_failed", socket=role, kind=HANDSHAKE_FAILURES_NAMES.get(event["event"]),
                         endpoint=endpoint, code=int(event["value"]))

    def close(self) -> None:
        """Before the sockets close: stop their monitors."""
        for sock in self.sockets.values():
            if self.monitors:
                sock.disable_monitor()
        for monitor in self.monitors:
            monitor.close(linger=0)
        self.monitors.clear()
