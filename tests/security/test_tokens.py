"""Per-message tokens: missing, expired, forged, revoked, wrong-role and stolen tokens are refused.

Each refusal is an ``AuthError`` with a clear message, changes nothing (the
admin's job list is the same before and after), and raises ``auth_failures``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import numpy as np
import pytest

from common import protocol
from common.errors import AuthError, HeadUnreachable
from common.security import Join, issue_token, new_keypair
from tests.security.support import (
    RawPeer, clean_env, client, delta, invite, jobs_snapshot, register_msg, secured_cluster, unique, wait_counted,
)

A = np.arange(12.0).reshape(3, 4)
#: the operator's command (the console script next to this interpreter, else the module)
_SCRIPT = Path(sys.executable).with_name("head-node")
HEAD_NODE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "head_node"]


@pytest.fixture(scope="module")
def admin_job(admin):
    """A finished job of the admin's, for fetch/cancel/status attempts."""
    job = admin.matmul(A, A.T, splits=(3, 1))
    np.testing.assert_allclose(job.result(timeout=30), A @ A.T)
    return job.id


def _refused(admin, attempts, match: str) -> None:
    """Every attempt raises AuthError(match); nothing changes; each one is counted."""
    before, jobs = admin.stats(), jobs_snapshot(admin)
    for attempt in attempts:
        with pytest.raises(AuthError, match=match):
            attempt()
    after = admin.stats()
    assert delta(before, after, "auth_failures") >= len(attempts)
    assert delta(before, after, "rejected_auth") >= len(attempts)
    assert jobs_snapshot(admin) == jobs


def _state_changing(c, job_id: str):
    """Requests that would change or reveal state if the token were accepted."""
    return [
        lambda: c.matmul(A, A.T),
        lambda: c.job(job_id).cancel(),
        lambda: c.request(protocol.Fetch(job_id=job_id)),
        lambda: c.jobs(),
    ]


def test_missing_token(cluster, admin, admin_job):
    join = dataclasses.replace(invite(cluster, "client"), token="")  # admitted keys, no token
    with client(cluster, join) as c:
        _refused(admin, _state_changing(c, admin_job), "no token")


def test_expired_token_on_a_live_connection(cluster, admin, admin_job):
    join = invite(cluster, "client", ttl=2.0)
    with client(cluster, join) as c:
        assert c.jobs() == []  # valid now: connected, and the head has seen (and cached) the token
        time.sleep(max(0.0, jwt.decode(join.token, options={"verify_signature": False})["exp"] - time.time()) + 0.1)
        _refused(admin, _state_changing(c, admin_job), "token expired")


def test_expired_token_never_seen_before(cluster, admin, admin_job):
    """An expired token the head has not cached: refused by the signature/expiry check itself."""
    join = invite(cluster, "client")
    token, _ = issue_token(cluster.keystore.signing_secret, join.name, "admin", join.public, ttl=-10)
    with client(cluster, dataclasses.replace(join, token=token)) as c:
        _refused(admin, _state_changing(c, admin_job), "token expired")


def test_expired_token_on_a_new_connection_gets_a_clear_error(cluster, admin):
    join = invite(cluster, "client", ttl=1.0)
    time.sleep(1.1)
    invite(cluster, "client")  # any change of peers.json makes the head re-read it
    with client(cluster, join, timeout=1.0) as c:
        with pytest.raises(AuthError, match="token expired"):
            c.jobs()


@pytest.mark.parametrize("forgery", ["other-secret", "alg-none", "tampered-role", "garbage", "not-issued"])
def test_forged_token(cluster, admin, admin_job, forgery):
    join = invite(cluster, "client")  # admitted CURVE keys: only the token is forged
    secret = cluster.keystore.signing_secret
    if forgery == "other-secret":
        token, _ = issue_token(os.urandom(32), join.name, "admin", join.public, 3600)
        match = "invalid token: Signature verification failed"
    elif forgery == "alg-none":
        payload = jwt.decode(join.token, options={"verify_signature": False})
        token = jwt.encode({**payload, "role": "admin"}, None, algorithm="none")
        match = "invalid token"
    elif forgery == "tampered-role":  # the client's own token with its payload edited to say admin
        head, body, sig = join.token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        claims["role"] = "admin"
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        token = f"{head}.{body}.{sig}"
        match = "invalid token: Signature verification failed"
    elif forgery == "garbage":
        token = "not-a-jwt"
        match = "invalid token"
    else:  # signed with the right secret but never recorded in peers.json (so never revocable)
        token, _ = issue_token(secret, join.name, "admin", join.public, 3600)
        match = "token not issued by this head"
    with client(cluster, dataclasses.replace(join, token=token)) as c:
        _refused(admin, _state_changing(c, admin_job), match)
    with client(cluster, join) as c:  # the genuine token still works, and is still only a client's
        assert c.jobs() == []


def test_revoked_token_is_refused_at_its_next_message(cluster, admin, admin_job):
    name = unique("revokee")
    join = invite(cluster, "client", name)
    with client(cluster, join) as c:
        mine = c.matmul(A, A.T, splits=(1, 1))
        np.testing.assert_allclose(mine.result(timeout=30), A @ A.T)
        head_dir = str(cluster.data_dir / "head")
        out = subprocess.run([*HEAD_NODE, "revoke", name, "--data-dir", head_dir],
                             capture_output=True, text=True, timeout=60, env=clean_env())
        assert out.returncode == 0, out.stderr
        assert f"revoked client {name!r}" in out.stdout
        # the very next request on the same (already admitted) connection
        _refused(admin, [*_state_changing(c, admin_job), lambda: mine.status(), lambda: mine.result(timeout=5)],
                 f"token of {name!r} was revoked")
    # a new connection with the revoked key pair is not even admitted
    before = admin.stats()
    with client(cluster, join, timeout=0.5) as c:
        with pytest.raises(HeadUnreachable):
            c.jobs()
    wait_counted(admin, before, "zap_denied", 1)
    peers = subprocess.run([*HEAD_NODE, "peers", "--data-dir", head_dir],
                           capture_output=True, text=True, timeout=60, env=clean_env())
    assert peers.returncode == 0, peers.stderr
    (row,) = [line for line in peers.stdout.splitlines() if line.startswith(name)]
    assert row.split()[-1] == "revoked"


def test_revoke_by_token_id_with_the_keystore(cluster, admin, admin_job):
    join = invite(cluster, "client")
    jti = jwt.decode(join.token, options={"verify_signature": False})["jti"]
    with client(cluster, join) as c:
        assert c.jobs() == []
        assert [p["jti"] for p in cluster.keystore.revoke(jti)] == [jti]
        _refused(admin, _state_changing(c, admin_job), "was revoked")


def test_provider_key_cannot_reach_the_client_api(cluster, admin, admin_job):
    """Roles are enforced twice: ZAP admits a provider's key only on the provider sockets..."""
    join = invite(cluster, "provider")
    before, jobs = admin.stats(), jobs_snapshot(admin)
    with client(cluster, join, timeout=0.5) as c:
        for attempt in _state_changing(c, admin_job):
            with pytest.raises(HeadUnreachable):
                attempt()
    wait_counted(admin, before, "zap_denied", 1)
    assert jobs_snapshot(admin) == jobs


@pytest.fixture(scope="module")
def any_key():
    """...and the token's role on every message: shown on a head that admits any CURVE key
    (``--allow-any-key``), where the token is the only barrier. No providers: jobs stay queued."""
    with secured_cluster(0, head_args=["--allow-any-key"]) as local, local.client(timeout=5.0, retries=0) as admin:
        job = admin.matmul(A, A.T)
        yield local, admin, job.id


def test_provider_token_cannot_submit_list_or_fetch(any_key):
    cluster, admin, job_id = any_key
    join = invite(cluster, "provider")
    with client(cluster, join) as c:
        _refused(admin, [
            lambda: c.matmul(A, A.T),
            lambda: c.jobs(),
            lambda: c.request(protocol.Fetch(job_id=job_id)),
            lambda: c.job(job_id).status(),
            lambda: c.job(job_id).cancel(),
            lambda: c.providers(),
            lambda: c.stats(),
        ], "role 'provider' may not send")
    assert admin.job(job_id).status()["status"] == "queued"


def test_client_token_cannot_act_as_a_provider(any_key):
    cluster, admin, _ = any_key
    join = invite(cluster, "client")
    before = admin.stats()
    with RawPeer(cluster) as raw:
        for role, msg in [("registration", register_msg()),
                          ("heartbeat", protocol.Heartbeat(provider_id="0" * 32, epoch="e", running=[], outbox=[],
                                                           free_slots=1))]:
            with pytest.raises(AuthError, match=f"^role 'client' may not send {msg.type.value!r}$"):
                raw.channel(role, join).request(msg)
        raw.push(join, [protocol.ProbeAck(provider_id="0" * 32, probe_id="p")])
        wait_counted(admin, before, "rejected_auth", 3)
    assert admin.providers() == []


def test_unknown_key_with_a_stolen_or_no_token_is_refused(any_key):
    """In any-key mode the binding of a token to its CURVE key is what stops a thief."""
    cluster, admin, job_id = any_key
    victim = invite(cluster, "client")
    public, secret = new_keypair()
    with client(cluster, dataclasses.replace(victim, public=public, secret=secret)) as c:
        _refused(admin, _state_changing(c, job_id), f"token of {victim.name!r} is bound to another CURVE key")
    with client(cluster, dataclasses.replace(victim, public=public, secret=secret, token="")) as c:
        _refused(admin, _state_changing(c, job_id), "no token")


def test_viewer_can_list_but_not_submit_cancel_or_fetch(cluster, admin, admin_job):
    join = invite(cluster, "viewer")
    with client(cluster, join) as c:
        _refused(admin, [
            lambda: c.matmul(A, A.T),
            lambda: c.job(admin_job).cancel(),
            lambda: c.job(admin_job).delete(),
            lambda: c.request(protocol.Fetch(job_id=admin_job)),
        ], "role 'viewer' may not send")
        assert admin_job in {j["job_id"] for j in c.jobs()}  # a viewer sees every job
        assert c.job(admin_job).status()["status"] == "succeeded"
        assert c.providers() == admin.providers()


def test_stolen_token_does_not_work_from_another_key(cluster, admin, admin_job):
    alice, bob = invite(cluster, "client", unique("alice")), invite(cluster, "client", unique("bob"))
    thief = dataclasses.replace(bob, token=alice.token)  # bob's admitted keys, alice's token
    with client(cluster, thief) as c:
        _refused(admin, _state_changing(c, admin_job), f"token of {alice.name!r} is bound to another CURVE key")
    stolen_admin = dataclasses.replace(bob, token=Join.decode(cluster.admin_join).token)
    with client(cluster, stolen_admin) as c:
        _refused(admin, _state_changing(c, admin_job), "token of 'admin' is bound to another CURVE key")
    with client(cluster, alice) as c:  # alice's own keys and token are fine
        assert c.jobs() == []

