"""The macOS provider as a launchd user agent: starts at login, restarted if it dies.

``~/Library/LaunchAgents/org.zcompute.provider.plist`` runs ``python -m provider_macos start`` with
the options given to ``install-service``; its output goes to ``~/Library/Logs/zcompute/provider.log``.
Loaded with ``launchctl bootstrap gui/UID``, removed with ``launchctl bootout``.
"""

from __future__ import annotations

import os
import plistlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

LABEL = "org.zcompute.provider"
THROTTLE_SECONDS = 10  # launchd waits this long before starting a provider that died again
EXIT_TIMEOUT = 45  # SIGTERM -> SIGKILL; the provider drains for up to 30 s first

Runner = Callable[..., subprocess.CompletedProcess]


@dataclass(frozen=True)
class LaunchAgent:
    program: list[str]  # ProgramArguments: the interpreter, -m provider_macos, start, options
    home: Path = field(default_factory=Path.home)
    label: str = LABEL

    @property
    def plist_path(self) -> Path:
        return self.home / "Library" / "LaunchAgents" / f"{self.label}.plist"

    @property
    def log_dir(self) -> Path:
        return self.home / "Library" / "Logs" / "zcompute"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "provider.log"

    def plist(self) -> bytes:
        return plistlib.dumps({
            "Label": self.label,
            "ProgramArguments": self.program,
            "RunAtLoad": True,  # at login, and when installed
            # restart after a crash or a non-zero exit; a clean exit (a drained stop) stays stopped
            "KeepAlive": {"SuccessfulExit": False},
            "ThrottleInterval": THROTTLE_SECONDS,
            "ExitTimeOut": EXIT_TIMEOUT,
            "WorkingDirectory": str(self.home),
            "EnvironmentVariables": {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PYTHONUNBUFFERED": "1"},
            "StandardOutPath": str(self.log_path),
            "StandardErrorPath": str(self.log_path),
        }, sort_keys=False)


def domain(uid: int | None = None) -> str:
    return f"gui/{os.getuid() if uid is None else uid}"


def install_commands(agent: LaunchAgent, uid: int | None = None) -> list[list[str]]:
    """Reload: drop a loaded copy (it may fail: none loaded), enable, bootstrap (RunAtLoad starts it)."""
    return [["launchctl", "bootout", f"{domain(uid)}/{agent.label}"],
            ["launchctl", "enable", f"{domain(uid)}/{agent.label}"],
            ["launchctl", "bootstrap", domain(uid), str(agent.plist_path)]]


def install(agent: LaunchAgent, run: Runner = subprocess.run, uid: int | None = None) -> None:
    agent.log_dir.mkdir(parents=True, exist_ok=True)
    agent.plist_path.parent.mkdir(parents=True, exist_ok=True)
    agent.plist_path.write_bytes(agent.plist())
    bootout, *load = install_commands(agent, uid)
    run(bootout, capture_output=True, text=True)
    for argv in load:
        done = run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {(done.stderr or done.stdout).strip()}")


def uninstall(agent: LaunchAgent, run: Runner = subprocess.run, uid: int | None = None) -> bool:
    """Stop and remove the agent (the provider drains first); False when none was installed."""
    existed = agent.plist_path.exists()
    run(["launchctl", "bootout", f"{domain(uid)}/{agent.label}"], capture_output=True, text=True)
    agent.plist_path.unlink(missing_ok=True)
    return existed
