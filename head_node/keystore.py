"""The head's secrets and its list of peers, under ``DATA_DIR``.

    keys/server.public  keys/server.secret (0600)   the head's CURVE key pair
    keys/token.secret (0600)                        the JWT signing secret
    keys/address                                    the address written into join strings
    peers.json (0600)                               every token issued: name, role, key, expiry, revoked
    admin.join (0600)                               the admin's join string
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import HeadAddress
from common.errors import AuthError, ConfigError
from common.security import Claims, Join, issue_token, new_keypair, new_signing_secret, write_secret
from common.sockets import CurveKeys

DEFAULT_TTL = 365 * 24 * 3600.0
ADMIN = "admin"


def default_advertise(config) -> HeadAddress:
    """The address peers are told to use: ``--advertise``, else this host's name (or the bind address)."""
    if config.advertise:
        return HeadAddress.parse(config.advertise)
    host = config.bind_host if config.bind_host not in ("0.0.0.0", "*", "::") else socket.gethostname()
    return HeadAddress(host, config.port_base)


@dataclass
class KeyStore:
    data_dir: Path

    @property
    def keys(self) -> Path:
        return self.data_dir / "keys"

    @property
    def peers_path(self) -> Path:
        return self.data_dir / "peers.json"

    @property
    def initialized(self) -> bool:
        return (self.keys / "server.secret").exists() and (self.keys / "token.secret").exists()

    def init(self, address: HeadAddress) -> Join | None:
        """Create keys, signing secret and admin token unless they exist; return the admin join if new."""
        if self.initialized:
            return None
        public, secret = new_keypair()
        write_secret(self.keys / "server.secret", secret)
        (self.keys / "server.public").write_text(public + "\n")
        write_secret(self.keys / "token.secret", new_signing_secret())
        (self.keys / "address").write_text(str(address) + "\n")
        write_secret(self.peers_path, "{}")
        admin = self.invite("admin", ADMIN, DEFAULT_TTL)
        write_secret(self.data_dir / "admin.join", admin.encode() + "\n")
        return admin

    def require_init(self) -> None:
        if not self.initialized:
            raise ConfigError(f"{self.data_dir} has no keys: run `head-node init --data-dir {self.data_dir}` first")

    @property
    def server_curve(self) -> CurveKeys:
        self.require_init()
        return CurveKeys((self.keys / "server.public").read_text().strip().encode(),
                         (self.keys / "server.secret").read_text().strip().encode())

    @property
    def signing_secret(self) -> bytes:
        self.require_init()
        return (self.keys / "token.secret").read_bytes()

    @property
    def address(self) -> HeadAddress:
        return HeadAddress.parse((self.keys / "address").read_text().strip())

    def set_address(self, address: HeadAddress) -> None:
        (self.keys / "address").write_text(str(address) + "\n")

    def read_peers(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self.peers_path.read_text())
        except FileNotFoundError:
            return {}

    def _write_peers(self, peers: dict[str, dict[str, Any]]) -> None:
        write_secret(self.peers_path, json.dumps(peers, indent=1, sort_keys=True))

    def invite(self, role: str, name: str, ttl: float = DEFAULT_TTL, address: HeadAddress | None = None) -> Join:
        """A new key pair and token for a peer, recorded in peers.json, as one join string."""
        self.require_init()
        if not name or len(name) > 64 or not all(ch.isalnum() or ch in "-_." for ch in name):
            raise ConfigError("a peer name is 1-64 letters, digits, '-', '_' or '.'")
        if ttl <= 0:
            raise ConfigError("--ttl must be positive")
        public, secret = new_keypair()
        token, claims = issue_token(self.signing_secret, name, role, public, ttl)
        peers = self.read_peers()
        peers[claims.jti] = {"name": name, "role": role, "key": public, "issued": time.time(), "exp": claims.exp,
                             "revoked": False}
        self._write_peers(peers)
        return Join(head=str(address or self.address), server_key=self.server_curve.public.decode(),
                    public=public, secret=secret, token=token, name=name, role=role)

    def revoke(self, name_or_jti: str) -> list[dict[str, Any]]:
        peers = self.read_peers()
        hits = [jti for jti, p in peers.items() if name_or_jti in (jti, p["name"]) and not p["revoked"]]
        for jti in hits:
            peers[jti]["revoked"] = True
        if hits:
            self._write_peers(peers)
        return [{"jti": jti, **peers[jti]} for jti in hits]


class PeerRegistry:
    """The live view of peers.json for a running head; re-read when the file changes (revocation)."""

    def __init__(self, store: KeyStore):
        self.store = store
        self._lock = threading.Lock()
        self._mtime: tuple | None = (-1,)
        self._by_jti: dict[str, dict[str, Any]] = {}
        self._keys: dict[str, str] = {}  # admitted key -> role

    def _refresh(self) -> None:
        try:
            st = self.store.peers_path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # every write replaces the file: a new inode
        except FileNotFoundError:
            stamp = None
        if stamp == self._mtime:
            return
        peers = self.store.read_peers()
        self._by_jti = peers
        # expired tokens keep their key admitted, so the peer hears "token expired" rather than silence
        self._keys = {p["key"]: p["role"] for p in peers.values() if not p["revoked"]}
        self._mtime = stamp

    def key_allowed(self, z85_key: str, roles: frozenset[str]) -> bool:
        with self._lock:
            self._refresh()
            return self._keys.get(z85_key) in roles

    def check(self, claims: Claims) -> None:
        with self._lock:
            self._refresh()
            peer = self._by_jti.get(claims.jti)
        if peer is None:
            raise AuthError("token not issued by this head")
        if peer["revoked"]:
            raise AuthError(f"token of {peer['name']!r} was revoked")
