"""Secrets are files only their owner can read, and nothing secret reaches a log or a command line."""

from __future__ import annotations

import base64
import dataclasses
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from common.errors import AuthError
from common.security import Join
from tests.security.support import ISSUED, client, invite, unique

# Runs last in this package, on the shared cluster (debug logs): the logs searched below hold everything
# the other modules made the head and provider say, refusals of forged, stolen and revoked tokens included.


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def exercised(cluster, admin):
    """Run a job, and make the head log refusals that quote tokens' owners (forged, stolen, revoked)."""
    a = np.random.default_rng(2).standard_normal((40, 30))
    np.testing.assert_allclose(admin.matmul(a, a.T, splits=(4, 2)).result(timeout=30), a @ a.T)
    alice, bob, gone = (invite(cluster, "client", unique(name)) for name in ("alice", "bob", "gone"))
    joins = [alice, bob, gone]
    with client(cluster, dataclasses.replace(bob, token=alice.token)) as thief:
        with pytest.raises(AuthError):
            thief.jobs()
    with client(cluster, dataclasses.replace(alice, token=alice.token[:-4] + "AAAA")) as forger:
        with pytest.raises(AuthError):
            forger.jobs()
    with client(cluster, gone) as c:
        c.jobs()
        cluster.keystore.revoke(gone.name)
        with pytest.raises(AuthError):
            c.jobs()
    with client(cluster, alice) as c:
        np.testing.assert_allclose(c.matmul(a, a.T).result(timeout=30), a @ a.T)
    return joins


@pytest.mark.parametrize("relative", ["head/keys/server.secret", "head/keys/token.secret", "head/peers.json",
                                      "head/admin.join", "provider-*/join"])
def test_secret_files_are_owner_only(cluster, exercised, relative):
    paths = sorted(cluster.data_dir.glob(relative))
    assert paths and all(p.is_file() for p in paths), relative
    for path in paths:
        assert _mode(path) == 0o600, f"{path.relative_to(cluster.data_dir)} has mode {oct(_mode(path))}"
        assert path.stat().st_uid == os.getuid()


def test_no_secret_in_any_log(cluster, exercised):
    head = cluster.data_dir / "head"
    admin_join = Join.decode(cluster.admin_join)
    provider_joins = [Join.decode(p.read_text()) for p in sorted(cluster.data_dir.glob("provider-*/join"))]
    signing = (head / "keys" / "token.secret").read_bytes()
    secrets = {
        "server secret key": (head / "keys" / "server.secret").read_text().strip(),
        "signing secret (hex)": signing.hex(),
        "signing secret (base64)": base64.b64encode(signing).decode(),
        "signing secret (urlsafe base64)": base64.urlsafe_b64encode(signing).decode().rstrip("="),
    }
    issued = [j for j in ISSUED if j.head == str(cluster.address)]  # every join this suite gave this cluster
    assert len(issued) > len(exercised)
    for join in [admin_join, *provider_joins, *issued]:
        secrets[f"{join.name}'s token"] = join.token
        secrets[f"{join.name}'s token signature"] = join.token.rsplit(".", 1)[1]
        secrets[f"{join.name}'s secret key"] = join.secret
        secrets[f"{join.name}'s join string"] = join.encode()
    logs = sorted((cluster.data_dir / "logs").glob("*.log"))
    assert {p.name for p in logs} >= {"head.log", "provider-0.log"}
    text = {p.name: p.read_bytes() for p in logs}
    assert sum(len(t) for t in text.values()) > 10_000  # debug logs of a job, refusals included
    assert b"message.rejected" in text["head.log"]
    leaks = [(what, name) for what, value in secrets.items() for name, data in text.items()
             if value.encode() in data]
    leaks += [("signing secret (raw bytes)", name) for name, data in text.items() if signing in data]
    assert leaks == []


def test_peers_file_holds_no_token_or_secret_key(cluster, exercised):
    """peers.json records token ids and public keys; a copy of it lets nobody in."""
    text = (cluster.data_dir / "head" / "peers.json").read_text()
    for join in exercised:
        assert join.public in text
        assert join.token not in text and join.secret not in text
        assert join.token.rsplit(".", 1)[1] not in text


def test_joins_reach_providers_by_environment_not_command_line(cluster, exercised):
    """A command line is visible to every user of the machine (ps); the environment is not."""
    assert cluster.providers
    for i, proc in enumerate(cluster.providers):
        join = Join.decode((cluster.data_dir / f"provider-{i}" / "join").read_text())
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert join.token.encode() not in cmdline and join.secret.encode() not in cmdline
        assert _mode(Path(f"/proc/{proc.pid}/environ")) & 0o077 == 0
    cmdline = Path(f"/proc/{cluster.head.pid}/cmdline").read_bytes()
    assert Join.decode(cluster.admin_join).token.encode() not in cmdline
