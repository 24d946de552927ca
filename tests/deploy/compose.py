"""docker-compose.yml read as a plan of local processes: interpolation, and container paths, host
names and ports mapped onto this machine."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
VENV_BIN = Path(sys.executable).parent  # the interpreter running the tests: its venv has the entry points
_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
                  r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def load(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m["braced"] or m["bare"]
        if m["op"] == ":-":
            return env.get(name) or m["default"]
        if m["op"] == "-":
            return env.get(name, m["default"])
        return env.get(name, "")

    return _VAR.sub(one, value)


@dataclass
class HostMap:
    """Where the containers' world lands here: volumes in a temp dir, ``head`` and 0.0.0.0 on loopback."""

    root: Path
    port_base: int
    http_port: int
    http_host: str = "127.0.0.2"  # loopback, but not "localhost": the dashboard still asks for a token

    def __post_init__(self) -> None:
        self.mounts = {f"/{name}": self.root / name for name in ("data", "join", "tmp", "home")}
        for path in self.mounts.values():
            path.mkdir(parents=True, exist_ok=True)
        alternatives = "|".join(re.escape(m) for m in self.mounts)
        self._paths = re.compile(rf"(?<![\w.~-])({alternatives})(?=/|\s|$|[\"'])")

    def text(self, s: str) -> str:
        s = s.replace("tcp://head:", "tcp://127.0.0.1:").replace("0.0.0.0", self.http_host)
        s = re.sub(r"\b5555\b", str(self.port_base), s)
        s = re.sub(r"\b8080\b", str(self.http_port), s)
        return self._paths.sub(lambda m: str(self.mounts[m.group(1)]), s)

    def path(self, container_path: str) -> Path:
        return Path(self.text(container_path))


@dataclass
class Service:
    name: str
    spec: dict[str, Any]
    host: HostMap

    @property
    def argv(self) -> list[str]:
        command = self.spec["command"]
        command = shlex.split(command) if isinstance(command, str) else command
        return [self.host.text(str(a)) for a in command]

    def env(self, **extra: str) -> dict[str, str]:
        """This machine's environment (less ZCOMPUTE_*), the venv first on PATH, then the service's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZCOMPUTE_")}
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["HOME"] = str(self.host.mounts["/home"])  # the image's user has no config file
        env["ZCOMPUTE_BIND"] = "127.0.0.1"  # the container's interfaces: loopback here
        declared = self.spec.get("environment") or {}
        if isinstance(declared, list):
            declared = dict(item.split("=", 1) for item in declared)
        env.update({k: self.host.text(str(v)) for k, v in declared.items()})
        env.update(extra)
        return env

    @property
    def healthcheck(self) -> list[str]:
        test = self.spec["healthcheck"]["test"]
        if isinstance(test, str):
            return ["sh", "-c", self.host.text(test)]
        kind, *rest = test
        if kind == "CMD-SHELL":
            return ["sh", "-c", self.host.text(rest[0])]
        assert kind == "CMD", test
        return [self.host.text(a) for a in rest]

    def run(self, timeout: float, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv, env=self.env(**env), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def popen(self, log: Path, **env: str) -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen(self.argv, env=self.env(**env), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def healthy(self, **env: str) -> bool:
        timeout = _seconds(self.spec["healthcheck"].get("timeout", "30s"))
        try:
            return subprocess.run(self.healthcheck, env=self.env(**env), capture_output=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL).returncode == 0
        except subprocess.TimeoutExpired:
            return False


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", str(text))
    assert m, text
    return float(m[1]) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m[2]]


def services(host: HostMap, env: dict[str, str] | None = None) -> dict[str, Service]:
    compose = interpolate(load(), {k: v for k, v in (env or {}).items()})
    return {name: Service(name, spec, host) for name, spec in compose["services"].items()}
