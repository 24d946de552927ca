"""The Windows provider as a Scheduled Task: starts at logon, started again if it stops.

The task runs ``pythonw.exe -m provider_windows service-run --log-file LOG start ...`` in the user's
session (no console window, no administrator rights). Task Scheduler's RestartOnFailure only covers
an action that fails to *launch*, so the logon trigger also repeats every minute: with
"do not start a new instance" that is a no-op while the provider runs, and restarts it within a
minute after it exits. Logs go to ``%LOCALAPPDATA%\\zcompute\\provider.log``.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from xml.sax.saxutils import escape

TASK_NAME = "zcompute-provider"
CHECK_EVERY = "PT1M"  # the logon trigger's repetition: the longest a dead provider stays down
LOG_ROTATE_BYTES = 10 * 1024 * 1024

Runner = Callable[..., subprocess.CompletedProcess]


def local_app_data() -> Path:
    return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")


def current_user() -> str:
    domain = os.environ.get("USERDOMAIN")
    return f"{domain}\\{getpass.getuser()}" if domain else getpass.getuser()


def windowless(python: str) -> str:
    """pythonw.exe beside python.exe: no console window at logon (else python itself)."""
    path = Path(python)
    candidate = path.with_name("pythonw" + path.suffix) if path.stem.lower() == "python" else path
    return str(candidate if candidate.exists() else path)


@dataclass(frozen=True)
class ScheduledTask:
    python: str  # the interpreter the task runs
    group_args: list[str]  # before the command: --config FILE
    start_args: list[str]  # options of `start`
    user: str = field(default_factory=current_user)
    app_dir: Path = field(default_factory=lambda: local_app_data() / "zcompute")
    name: str = TASK_NAME

    @property
    def log_path(self) -> Path:
        return self.app_dir / "provider.log"

    @property
    def xml_path(self) -> Path:
        return self.app_dir / f"{self.name}.xml"

    @property
    def arguments(self) -> list[str]:
        return ["-m", "provider_windows", *self.group_args, "service-run", "--log-file", str(self.log_path),
                *self.start_args]

    def xml(self) -> str:
        user = escape(self.user)
        return f"""<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>zcompute provider: computes shards for a head node (provider-windows install-service)</Description>
    <URI>\\{escape(self.name)}</URI>
  </RegistrationInfo>
  <Triggers>
    <LogonTrigger>
      <Enabled>true</Enabled>
      <Repetition>
        <Interval>{CHECK_EVERY}</Interval>
        <StopAtDurationEnd>false</StopAtDurationEnd>
      </Repetition>
      <UserId>{user}</UserId>
    </LogonTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">
      <UserId>{user}</UserId>
      <LogonType>InteractiveToken</LogonType>
      <RunLevel>LeastPrivilege</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <AllowHardTerminate>true</AllowHardTerminate>
    <StartWhenAvailable>true</StartWhenAvailable>
    <RunOnlyIfNetworkAvailable>false</RunOnlyIfNetworkAvailable>
    <IdleSettings>
      <StopOnIdleEnd>false</StopOnIdleEnd>
      <RestartOnIdle>false</RestartOnIdle>
    </IdleSettings>
    <AllowStartOnDemand>true</AllowStartOnDemand>
    <Enabled>true</Enabled>
    <Hidden>false</Hidden>
    <RunOnlyIfIdle>false</RunOnlyIfIdle>
    <WakeToRun>false</WakeToRun>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <Priority>7</Priority>
    <RestartOnFailure>
      <Interval>PT1M</Interval>
      <Count>255</Count>
    </RestartOnFailure>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{escape(self.python)}</Command>
      <Arguments>{escape(subprocess.list2cmdline(self.arguments))}</Arguments>
      <WorkingDirectory>{escape(str(self.app_dir))}</WorkingDirectory>
    </Exec>
  </Actions>
</Task>
"""


def install_commands(task: ScheduledTask) -> list[list[str]]:
    return [["schtasks", "/Create", "/TN", task.name, "/XML", str(task.xml_path), "/F"],
            ["schtasks", "/Run", "/TN", task.name]]


def install(task: ScheduledTask, run: Runner = subprocess.run) -> None:
    task.app_dir.mkdir(parents=True, exist_ok=True)
    task.xml_path.write_text(task.xml(), encoding="utf-16")  # schtasks /XML reads UTF-16 reliably
    for argv in install_commands(task):
        done = run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {(done.stderr or done.stdout).strip()}")


def uninstall(task: ScheduledTask, run: Runner = subprocess.run) -> bool:
    """End the running provider and delete the task; False when there was none."""
    run(["schtasks", "/End", "/TN", task.name], capture_output=True, text=True)
    done = run(["schtasks", "/Delete", "/TN", task.name, "/F"], capture_output=True, text=True)
    task.xml_path.unlink(missing_ok=True)
    return done.returncode == 0


def redirect_output(log_file: Path) -> None:
    """Send this process's output (Python's and native libraries') to ``log_file``; pythonw has none."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    if log_file.exists() and log_file.stat().st_size > LOG_ROTATE_BYTES:
        os.replace(log_file, log_file.with_name(log_file.name + ".1"))
    stream = open(log_file, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 (process-long)
    for fd in (1, 2):
        os.dup2(stream.fileno(), fd)
    sys.stdout = sys.stderr = stream
