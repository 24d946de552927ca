"""Who is asking: CURVE admission (ZAP), per-message JWT checks, and what each role may do."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from common import protocol
from common.errors import AuthError
from common.protocol import MsgType
from common.security import Claims, verify_token
from head_node.keystore import KeyStore, PeerRegistry

_PROVIDER = frozenset({"provider"})
_SUBMITTER = frozenset({"client", "admin"})
_READER = frozenset({"client", "admin", "viewer"})

#: which roles may send each message type
PERMISSIONS: dict[MsgType, frozenset[str]] = {
    MsgType.REGISTER: _PROVIDER, MsgType.DEREGISTER: _PROVIDER, MsgType.HEARTBEAT: _PROVIDER,
    MsgType.ACCEPTED: _PROVIDER, MsgType.PROGRESS: _PROVIDER, MsgType.RESULT: _PROVIDER,
    MsgType.FAILURE: _PROVIDER, MsgType.PROBE_ACK: _PROVIDER,
    MsgType.SUBMIT: _SUBMITTER, MsgType.FETCH: _SUBMITTER, MsgType.CANCEL_JOB: _SUBMITTER,
    MsgType.DELETE_JOB: _SUBMITTER,
    MsgType.STATUS: _READER, MsgType.LIST_JOBS: _READER, MsgType.LIST_PROVIDERS: _READER, MsgType.STATS: _READER,
    MsgType.EVENTS: _READER,
}
_TOKEN_CACHE = 4096
#: which roles' keys each socket (ZAP domain) admits
SOCKET_ROLES = {"registration": _PROVIDER, "heartbeat": _PROVIDER, "tasks": _PROVIDER, "results": _PROVIDER,
                "api": _READER}


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    key: str | None = None  # the CURVE public key (z85) the message came from; None when insecure

    @property
    def sees_all(self) -> bool:
        return self.role in ("admin", "viewer")


INSECURE = Principal("anonymous", "admin")


class HeadAuth:
    """``insecure``: everyone is the anonymous admin. Otherwise CURVE + a bound, unrevoked token per message."""

    def __init__(self, store: KeyStore, insecure: bool, allow_any_key: bool = False):
        self.insecure, self.allow_any_key = insecure, allow_any_key
        self.store = store
        self.registry = PeerRegistry(store) if not insecure else None
        self.secret = store.signing_secret if not insecure else b""
        self.curve = store.server_curve if not insecure else None
        self._cache: OrderedDict[str, Claims] = OrderedDict()
        self._zap: ThreadAuthenticator | None = None
        self._lock = threading.Lock()
        self.zap_denied = 0

    # -- CURVE admission -----------------------------------------------------

    def start(self, ctx: zmq.Context) -> None:
        if self.insecure:
            return
        self._zap = ThreadAuthenticator(ctx)
        self._zap.start()
        for domain in SOCKET_ROLES:
            self._zap.configure_curve_callback(domain, credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: admit known, unrevoked keys whose role uses this socket (any key in any-key mode; tokens
        still apply). Only providers reach the task socket, so no client can subscribe to shard data."""
        if self.allow_any_key or self.registry.key_allowed(key.decode(), SOCKET_ROLES.get(domain, frozenset())):
            return True
        with self._lock:
            self.zap_denied += 1
        return False

    def stop(self) -> None:
        if self._zap is not None:
            self._zap.stop()

    # -- per-message checks --------------------------------------------------

    def principal(self, msg: protocol.Message, user_id: str | None) -> Principal:
        """Check the message's token, its binding to the CURVE key and the role's permission."""
        if self.insecure:
            return INSECURE
        claims = self._claims(msg.token)
        self.registry.check(claims)
        if user_id is not None and user_id != claims.key:
            raise AuthError(f"token of {claims.sub!r} is bound to another CURVE key")
        allowed = PERMISSIONS.get(msg.type, frozenset())
        if claims.role not in allowed:
            raise AuthError(f"role {claims.role!r} may not send {msg.type.value!r}")
        return Principal(claims.sub, claims.role, user_id or claims.key)

    def _claims(self, token: str | None) -> Claims:
        cached = self._cache.get(token) if token else None
        if cached is not None:
            if cached.exp < time.time():
                raise AuthError("token expired: ask the head's operator for a new invite")
            return cached
        claims = verify_token(self.secret, token)
        self._cache[token] = claims
        while len(self._cache) > _TOKEN_CACHE:
            self._cache.popitem(last=False)
        return claims


def user_id(frame: Any) -> str | None:
    """The CURVE User-Id (the peer's z85 public key) ZAP attached to a received frame."""
    try:
        return frame.get("User-Id")
    except (AttributeError, zmq.ZMQError):
        return None
