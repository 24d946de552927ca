"""Keys, tokens and join strings.

- Every socket speaks CurveZMQ: the head has a server key pair; each peer has its own pair.
- Every message carries a JWT (HS256) with ``sub`` (the peer's name), ``role``, ``exp``, ``jti``
  and ``key`` (the peer's CURVE public key, so a stolen token is useless from another key).
- A join string carries all a peer needs: the head's address and public key, the peer's key
  pair and its token. Secrets are files with 0600 permissions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jwt
import zmq

from common.config import HeadAddress
from common.errors import AuthError, ConfigError
from common.sockets import CurveKeys

ROLES = ("provider", "client", "admin", "viewer")
JOIN_PREFIX = "zcj1:"
ALGORITHM = "HS256"
ISSUER = "zcompute"
MAX_JOIN_FILE = 64 * 1024  # a join string is under 1 KiB; @/dev/zero must not fill the memory


def write_secret(path: Path, data: bytes | str) -> None:
    """Write a file readable by its owner only (created 0600 before anything is written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def new_keypair() -> tuple[str, str]:
    """A CURVE key pair as z85 text: (public, secret)."""
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


@dataclass(frozen=True)
class Join:
    """Everything a peer needs to reach a secured head."""

    head: str
    server_key: str
    public: str
    secret: str
    token: str
    name: str = ""
    role: str = ""

    def encode(self) -> str:
        raw = json.dumps(asdict(self), separators=(",", ":")).encode()
        return JOIN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> "Join":
        """Accept a join string, or ``@PATH`` of a file holding one."""
        text = text.strip()
        if text.startswith("@"):
            text = _read_join_file(text[1:]).strip()
        if not text.startswith(JOIN_PREFIX):
            raise ConfigError(f"not a zcompute join string (it should start with {JOIN_PREFIX!r})")
        body = text[len(JOIN_PREFIX):]
        try:
            data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
                raise ValueError("its fields are not all text")
            join = cls(**data)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"the join string is damaged: {e}") from None
        HeadAddress.parse(join.head)
        return join

    @property
    def address(self) -> HeadAddress:
        return HeadAddress.parse(self.head)

    @property
    def curve(self) -> CurveKeys:
        return CurveKeys(self.public.encode(), self.secret.encode(), self.server_key.encode())


def _read_join_file(name: str) -> str:
    try:
        with open(Path(name).expanduser(), "rb") as f:
            data = f.read(MAX_JOIN_FILE + 1)
    except OSError as e:
        raise ConfigError(f"cannot read the join file {name}: {e.strerror or e}") from None
    try:
        if len(data) <= MAX_JOIN_FILE:
            return data.decode()
    except UnicodeDecodeError:
        pass
    raise ConfigError(f"the file {name} does not hold a join string (one line of text starting with "
                      f"{JOIN_PREFIX!r})")


@dataclass(frozen=True)
class Claims:
    sub: str
    role: str
    key: str
    jti: str
    exp: float


def issue_token(secret: bytes, name: str, role: str, public_key: str, ttl: float) -> tuple[str, Claims]:
    if role not in ROLES:
        raise ConfigError(f"role {role!r} is not one of {', '.join(ROLES)}")
    now = time.time()
    claims = Claims(sub=name, role=role, key=public_key, jti=uuid.uuid4().hex, exp=now + ttl)
    token = jwt.encode({**asdict(claims), "iat": int(now), "iss": ISSUER}, secret, algorithm=ALGORITHM)
    return token, claims


def verify_token(secret: bytes, token: str | None) -> Claims:
    """Check signature, expiry and shape; raise ``AuthError`` with the reason."""
    if not token:
        raise AuthError("no token: every request must carry one (see head-node invite)")
    try:
        data = jwt.decode(token, secret, algorithms=[ALGORITHM], issuer=ISSUER,
                          options={"require": ["sub", "role", "exp", "jti", "key"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired: ask the head's operator for a new invite") from None
    except jwt.InvalidTokenError as e:
        raise AuthError(f"invalid token: {e}") from None
    if data["role"] not in ROLES:
        raise AuthError(f"invalid token: unknown role {data['role']!r}")
    return Claims(data["sub"], data["role"], data["key"], data["jti"], data["exp"])


def topic_prefix(public_z85: str) -> str:
    """The start of every task-socket topic of the peer holding this CURVE key: the head applies a
    subscription only under the subscriber's own prefix, so no peer reads shards sent to another."""
    return hashlib.sha256(public_z85.encode()).hexdigest()[:16]


def topic_for(public_z85: str, provider_id: str) -> str:
    """A provider's topic: its key's prefix, then its id (providers sharing one join stay apart)."""
    return topic_prefix(public_z85) + provider_id


def new_signing_secret() -> bytes:
    return secrets.token_bytes(32)


def claims_dict(claims: Claims) -> dict[str, Any]:
    return asdict(claims)
