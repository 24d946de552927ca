"""docker-compose.yml and the Dockerfile, without a Docker engine.

The compose services' commands, environments and health checks run here as local processes (the
volumes in a temp dir, ``head`` on loopback, free ports): init, the head, two providers, the client.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from common.configfile import tomllib
from common.lifecycle import free_port_base
from tests.deploy.compose import COMPOSE_FILE, ROOT, VENV_BIN, HostMap, interpolate, load, services

DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(logs.glob("*.log")))
    raise AssertionError(f"{what} not within {timeout}s\n{tails}")


@pytest.fixture
def spec():
    """The compose services, variables at their defaults."""
    pytest.importorskip("yaml", reason="PyYAML reads docker-compose.yml: pip install pyyaml")
    return interpolate(load(), {})["services"]


@pytest.fixture
def processes():
    """Started processes; SIGTERM on teardown (providers first, as `docker-compose down` stops dependents first)."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in reversed(procs):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- the file itself -----------------------------------------------------------------------


def test_docker_compose_config_validates():
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install -y docker-compose)")
    done = subprocess.run([binary, "-f", str(COMPOSE_FILE), "config", "--quiet"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_compose_layout(spec):
    assert set(spec) == {"init", "head", "provider", "client"}
    head, provider, init, client = spec["head"], spec["provider"], spec["init"], spec["client"]
    assert sorted(head["ports"]) == ["5555-5559:5555-5559", "8080:8080"]
    assert {"--http-host", "0.0.0.0"} <= set(head["command"])  # the dashboard reachable from the host
    # providers scale: no fixed name, no host ports; and they never see the head's secrets
    assert "ports" not in provider and "container_name" not in provider
    assert provider["volumes"] == ["provider-join:/join:ro"]
    assert all("head-data" not in v for v in provider["volumes"])
    assert init["restart"] == "no" and "head-data:/data" in init["volumes"]
    for name in ("head", "provider"):
        assert spec[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert spec[name]["healthcheck"]["test"] and spec[name]["restart"] == "unless-stopped"
    assert client["profiles"] == ["tools"]
    assert {dep["condition"] for dep in client["depends_on"].values()} == {"service_healthy"}
    assert {s["image"] for s in spec.values()} == {"zcompute:local"}
    assert {s["build"]["args"]["TORCH"] for s in spec.values()} == {"cpu"}
    assert int(re.sub(r"\D", "", provider["stop_grace_period"])) > 30  # room for the 30 s drain


# -- the services as local processes ---------------------------------------------------------


def test_compose_services_run_as_local_processes(spec, tmp_path, processes):
    host = HostMap(tmp_path / "volumes", port_base=free_port_base("127.0.0.1"), http_port=_free_port("127.0.0.2"))
    svc = services(host)
    logs = tmp_path / "logs"
    logs.mkdir()

    init = svc["init"].run(timeout=60)
    assert init.returncode == 0, init.stdout + init.stderr
    for name in ("data/admin.join", "join/provider.join", "join/viewer.join"):
        path = host.root / name
        assert path.read_text().startswith("zcj1:"), name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert not (host.root / "join" / "admin.join").exists()  # providers' volume holds no admin token
    joins = {p: p.read_text() for p in (host.root / "join").iterdir()}
    again = svc["init"].run(timeout=60)  # `docker-compose up` runs init every time: it must be idempotent
    assert again.returncode == 0 and "already initialized" in again.stdout
    assert joins == {p: p.read_text() for p in (host.root / "join").iterdir()}

    processes.append(svc["head"].popen(logs / "head.log"))
    _wait(svc["head"].healthy, 60, "head healthy", logs)
    for replica in ("c0ffee000001", "c0ffee000002"):  # docker sets HOSTNAME to the container id
        processes.append(svc["provider"].popen(logs / f"provider-{replica}.log", HOSTNAME=replica))
    for replica in ("c0ffee000001", "c0ffee000002"):
        _wait(lambda: svc["provider"].healthy(HOSTNAME=replica), 60, f"provider {replica} healthy", logs)
    assert (host.root / "tmp" / "provider-c0ffee000001" / "provider_id").exists()  # one data dir per replica

    demo = svc["client"].run(timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "succeeded" in demo.stdout and "(OK)" in demo.stdout
    assert "provider-c0ffee000001" in demo.stdout or "provider-c0ffee000002" in demo.stdout

    listing = subprocess.run(["user-client", "providers"], env=svc["client"].env(), capture_output=True, text=True,
                             timeout=60)
    assert listing.stdout.count(" ready ") == 2, listing.stdout

    # the dashboard is published on all interfaces, so it asks for a token (admin or viewer)
    url = f"http://{host.http_host}:{host.http_port}/api/state"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401
    refused.value.close()
    from common.security import Join

    token = Join.decode("@" + str(host.root / "join" / "viewer.join")).token
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200 and json.loads(reply.read())


# -- the Dockerfile ----------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    rows = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(row.split(None, 1)[0].upper(), row.split(None, 1)[1] if " " in row else "") for row in rows]


def test_dockerfile_layers_and_user():
    steps = _instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert ("ARG", "TORCH=cpu") in steps
    torch_step = next(i for i, (op, arg) in enumerate(steps) if op == "RUN" and "$TORCH" in arg)
    assert all(f"{kind})" in steps[torch_step][1] for kind in ("none", "cpu", "cuda"))
    copies = [(i, arg) for i, (op, arg) in enumerate(steps) if op == "COPY"]
    pyproject = next(i for i, arg in copies if arg.startswith("pyproject.toml"))
    deps = next(i for i, (op, arg) in enumerate(steps) if op == "RUN" and "pip install -r" in arg)
    first_source = min(i for i, arg in copies if not arg.startswith("pyproject.toml"))
    assert torch_step < pyproject < deps < first_source  # dependency layers are cached before the source
    copied = {arg.split()[0] for _, arg in copies}
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {PYPROJECT["project"]["readme"]} <= copied
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert next(i for i, (op, _) in enumerate(steps) if op == "USER") < next(
        i for i, (op, _) in enumerate(steps) if op == "CMD")
    assert ("EXPOSE", "5555-5559 8080") in steps


def test_dockerfile_dependency_list_matches_pyproject():
    """The layer that installs dependencies from pyproject.toml alone prints exactly its dependencies."""
    script = re.search(r"python -c '([^']+)'", DOCKERFILE.read_text())[1]
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:-1] == PYPROJECT["project"]["dependencies"]


def test_entry_points_named_by_the_images_start(spec):
    """The programs the Dockerfile and the compose services start (and every console script) start here."""
    cmd = json.loads(next(arg for op, arg in _instructions() if op == "CMD"))
    scripts = set(PYPROJECT["project"]["scripts"])
    text = json.dumps(spec)
    named = {cmd[0]} | {s for s in scripts if re.search(rf"(?<![\w-]){s}(?![\w-])", text)}
    assert named == {"head-node", "provider", "user-client"}
    for program in sorted(named | scripts):
        path = VENV_BIN / program
        assert path.exists(), program
        done = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "Usage:" in done.stdout, (program, done.stderr)
    start = subprocess.run([str(VENV_BIN / cmd[0]), *cmd[1:], "--help"], capture_output=True, text=True, timeout=60)
    assert start.returncode == 0, start.stderr


def test_dockerignore_keeps_what_the_build_copies():
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert {".git", ".venv", "tests"} <= set(ignored)
    copied = {arg.split()[0] for op, arg in _instructions() if op == "COPY"}
    assert not copied & set(ignored)
