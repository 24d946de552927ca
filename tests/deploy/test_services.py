"""The macOS launchd agent, the Windows scheduled task, keep-awake and console handling, on Linux."""

from __future__ import annotations

import os
import plistlib
import stat
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path, PureWindowsPath
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from common.provider.runtime import DRAIN_SECONDS
from common.security import Join
from provider_macos import cli as mac_cli
from provider_macos import service as launchd
from provider_macos.keepawake import CAFFEINATE, KeepAwake, keep_awake
from provider_windows import cli as win_cli
from provider_windows import console
from provider_windows import service as tasks

NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
JOIN = Join(head="tcp://head.lab:5555", server_key="S" * 40, public="P" * 40, secret="X" * 40, token="t.o.k",
            name="mac-mini", role="provider").encode()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in [n for n in os.environ if n.startswith("ZCOMPUTE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "home" / "AppData" / "Local"))


class Recorder:
    """A stand-in for subprocess.run: records argv, answers with ``returncode``."""

    def __init__(self, fail: set[str] = frozenset()):
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv, **kwargs):
        self.calls.append(list(argv))
        code = 1 if argv[1] in self.fail else 0
        return subprocess.CompletedProcess(argv, code, stdout="", stderr=f"{argv[1]} said no" if code else "")


# -- macOS: launchd ----------------------------------------------------------------------------


def test_launchd_plist_content(tmp_path):
    program = [sys.executable, "-m", "provider_macos", "start", "--data-dir", "/Users/a/.zcompute/provider"]
    agent = launchd.LaunchAgent(program, home=Path("/Users/a"))
    plist = plistlib.loads(agent.plist())
    assert agent.plist_path == Path("/Users/a/Library/LaunchAgents/org.zcompute.provider.plist")
    assert plist["Label"] == "org.zcompute.provider" and plist["ProgramArguments"] == program
    assert plist["RunAtLoad"] is True  # at login
    assert plist["KeepAlive"] == {"SuccessfulExit": False}  # restarted when it dies, not after a clean stop
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == "/Users/a/Library/Logs/zcompute/provider.log"
    assert plist["ExitTimeOut"] > DRAIN_SECONDS  # launchd's SIGKILL comes after the drain
    assert plist["ThrottleInterval"] >= 5
    assert "/usr/bin" in plist["EnvironmentVariables"]["PATH"].split(":")  # caffeinate


def test_launchd_install_and_uninstall(tmp_path):
    agent = launchd.LaunchAgent(["python", "-m", "provider_macos", "start"], home=tmp_path)
    run = Recorder()
    launchd.install(agent, run=run, uid=501)
    assert plistlib.loads(agent.plist_path.read_bytes())["Label"] == launchd.LABEL
    assert agent.log_dir.is_dir()
    assert run.calls == [["launchctl", "bootout", "gui/501/org.zcompute.provider"],
                         ["launchctl", "enable", "gui/501/org.zcompute.provider"],
                         ["launchctl", "bootstrap", "gui/501", str(agent.plist_path)]]
    with pytest.raises(RuntimeError, match="bootstrap said no"):
        launchd.install(agent, run=Recorder(fail={"bootstrap"}), uid=501)
    launchd.install(agent, run=Recorder(fail={"bootout"}), uid=501)  # nothing loaded yet: fine
    run = Recorder()
    assert launchd.uninstall(agent, run=run, uid=501) is True
    assert not agent.plist_path.exists() and run.calls == [["launchctl", "bootout", "gui/501/org.zcompute.provider"]]
    assert launchd.uninstall(agent, run=Recorder(), uid=501) is False


def test_macos_install_service_command(tmp_path, monkeypatch):
    run = Recorder()
    monkeypatch.setattr(launchd, "install", partial(launchd.install, run=run, uid=501))
    data_dir = tmp_path / "prov"
    result = CliRunner().invoke(mac_cli.cli, ["install-service", "--join", JOIN, "--data-dir", str(data_dir),
                                              "--slots", "2", "--log-json"],
                                env={"ZCOMPUTE_DEVICE": "cpu"})
    assert result.exit_code == 0, result.output
    plist = plistlib.loads((tmp_path / "home/Library/LaunchAgents/org.zcompute.provider.plist").read_bytes())
    assert plist["ProgramArguments"] == [sys.executable, "-m", "provider_macos", "start", "--data-dir", str(data_dir),
                                         "--slots", "2", "--device", "cpu", "--log-json"]
    assert JOIN not in str(plist)  # the join is a password: kept 0600 in the data dir, not in the plist
    assert (data_dir / "join").read_text().strip() == JOIN
    assert stat.S_IMODE((data_dir / "join").stat().st_mode) == 0o600
    assert run.calls[-1][:2] == ["launchctl", "bootstrap"]
    assert "Library/Logs/zcompute/provider.log" in result.output

    bad = CliRunner().invoke(mac_cli.cli, ["install-service", "--slots", "0", "--data-dir", str(data_dir)])
    assert bad.exit_code == 2 and "--slots" in bad.output  # start's options are checked at install time
    nojoin = CliRunner().invoke(mac_cli.cli, ["install-service", "--data-dir", str(tmp_path / "empty")])
    assert nojoin.exit_code == 2 and "no credentials" in nojoin.output


def test_macos_install_service_dry_run_and_config_file(tmp_path):
    config = tmp_path / "z.toml"
    config.write_text("[provider]\nslots = 3\n")
    result = CliRunner().invoke(mac_cli.cli, ["--config", str(config), "install-service", "--dry-run", "--insecure"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "home/Library/LaunchAgents").exists()  # nothing written
    assert "<key>KeepAlive</key>" in result.output and "launchctl bootstrap gui/" in result.output
    # the file is named so the agent re-reads it; its values are not copied in
    assert f"<string>--config</string>\n\t\t<string>{config}</string>" in result.output
    assert "<string>--slots</string>" not in result.output and "<string>--insecure</string>" in result.output


def test_macos_uninstall_service_command(tmp_path, monkeypatch):
    run = Recorder()
    monkeypatch.setattr(launchd, "uninstall", partial(launchd.uninstall, run=run, uid=501))
    result = CliRunner().invoke(mac_cli.cli, ["uninstall-service"])
    assert result.exit_code == 0 and "no agent installed" in result.output
    assert run.calls == [["launchctl", "bootout", "gui/501/org.zcompute.provider"]]


# -- macOS: keep-awake ----------------------------------------------------------------------------


class FakeProc:
    def __init__(self, argv):
        self.argv, self.returncode, self.terminated = argv, None, False

    def poll(self):
        return self.returncode

    def terminate(self):
        self.terminated, self.returncode = True, -15

    def wait(self, timeout=None):
        return self.returncode

    def kill(self):
        self.returncode = -9


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_keep_awake_holds_caffeinate_while_busy_only():
    busy, spawned, clock = [False], [], Clock()
    awake = KeepAwake(lambda: busy[0], lambda argv: spawned.append(FakeProc(argv)) or spawned[-1], pid=4242,
                      idle_grace=5.0, clock=clock)
    awake.update()
    assert spawned == [] and not awake.holding  # idle: the Mac may sleep
    busy[0] = True
    awake.update()
    assert [p.argv for p in spawned] == [[CAFFEINATE, "-i", "-w", "4242"]] and awake.holding
    awake.update()
    assert len(spawned) == 1  # one assertion while busy
    busy[0], clock.now = False, 10.0
    awake.update()
    assert awake.holding  # idle for less than the grace: shards of one job come back to back
    clock.now = 14.9
    awake.update()
    assert awake.holding and not spawned[0].terminated
    clock.now = 15.0
    awake.update()
    assert spawned[0].terminated and not awake.holding
    busy[0] = True
    awake.update()
    assert len(spawned) == 2 and awake.holding
    spawned[1].returncode = 0  # caffeinate went away while still busy: held again
    awake.update()
    assert len(spawned) == 3 and awake.holding
    busy[0], clock.now = False, 20.0
    awake.update()  # idle again; work returns before the grace ends: the idle clock restarts
    busy[0] = True
    awake.update()
    busy[0], clock.now = False, 24.0
    awake.update()
    clock.now = 28.0
    awake.update()
    assert awake.holding and len(spawned) == 3


def test_keep_awake_without_caffeinate_runs_on():
    calls = []

    def missing(argv):
        calls.append(argv)
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    awake = KeepAwake(lambda: True, missing)
    awake.update()
    awake.update()
    assert awake.disabled and not awake.holding and len(calls) == 1  # warned once, not retried


def test_keep_awake_with_a_real_process(tmp_path):
    """The real spawn, with a stand-in for caffeinate that honours -i -w PID."""
    script = tmp_path / "caffeinate"
    script.write_text('#!/bin/sh\n[ "$1" = -i ] && [ "$2" = -w ] || exit 2\n'
                      'while kill -0 "$3" 2>/dev/null; do sleep 0.05; done\n')
    script.chmod(0o755)
    busy = [True]
    awake = KeepAwake(lambda: busy[0], command=str(script), idle_grace=0.0)
    awake.update()
    proc = awake.proc
    assert awake.holding and proc.args == [str(script), "-i", "-w", str(os.getpid())]
    busy[0] = False
    awake.update()
    assert proc.poll() is not None and not awake.holding  # stopped when idle
    # -w: caffeinate ends by itself with the process it watches (a provider killed outright)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    watcher = KeepAwake(lambda: True, command=str(script), pid=child.pid)
    watcher.update()
    child.wait()
    assert watcher.proc.wait(timeout=10) == 0


def test_keep_awake_hook_follows_the_provider(monkeypatch):
    spawned = []
    monkeypatch.setattr("provider_macos.keepawake._popen", lambda argv: spawned.append(FakeProc(argv)) or spawned[-1])
    provider = SimpleNamespace(book=SimpleNamespace(idle=False), stop_event=threading.Event())
    thread = keep_awake(provider, interval=0.01)
    deadline = time.monotonic() + 10
    while not spawned and time.monotonic() < deadline:
        time.sleep(0.01)
    assert spawned and spawned[0].argv[-1] == str(os.getpid())
    provider.stop_event.set()  # the provider stopped: the assertion goes with it
    thread.join(timeout=10)
    assert not thread.is_alive() and spawned[0].terminated


# -- Windows: scheduled task ------------------------------------------------------------------------


def _task(**kw) -> tasks.ScheduledTask:
    options = {"python": r"C:\zc\Scripts\pythonw.exe", "group_args": [],
               "start_args": ["--data-dir", r"C:\Users\A B\.zcompute\provider", "--slots", "2"],
               "user": r"LAB\a&b", "app_dir": PureWindowsPath(r"C:\Users\A B\AppData\Local\zcompute"), **kw}
    return tasks.ScheduledTask(**options)


def test_scheduled_task_xml_content():
    task = _task()
    root = ET.fromstring(task.xml().replace('encoding="UTF-16"', ""))
    trigger = root.find("t:Triggers/t:LogonTrigger", NS)
    assert trigger.find("t:UserId", NS).text == r"LAB\a&b"  # at this user's logon (escaped in the XML)
    order = [child.tag.split("}")[1] for child in trigger]
    assert order == ["Enabled", "Repetition", "UserId"]  # the schema's sequence
    assert trigger.find("t:Repetition/t:Interval", NS).text == "PT1M"
    assert trigger.find("t:Repetition/t:StopAtDurationEnd", NS).text == "false"
    principal = root.find("t:Principals/t:Principal", NS)
    assert principal.find("t:LogonType", NS).text == "InteractiveToken"
    assert principal.find("t:RunLevel", NS).text == "LeastPrivilege"  # no administrator rights
    settings = root.find("t:Settings", NS)
    value = {child.tag.split("}")[1]: child for child in settings}
    assert value["MultipleInstancesPolicy"].text == "IgnoreNew"  # the repetition restarts, never duplicates
    assert value["ExecutionTimeLimit"].text == "PT0S"  # no 72-hour limit
    assert value["DisallowStartIfOnBatteries"].text == value["StopIfGoingOnBatteries"].text == "false"
    restart = value["RestartOnFailure"]
    assert restart.find("t:Interval", NS).text == "PT1M" and 1 <= int(restart.find("t:Count", NS).text) <= 255
    exec_ = root.find("t:Actions/t:Exec", NS)
    assert exec_.find("t:Command", NS).text == r"C:\zc\Scripts\pythonw.exe"
    assert exec_.find("t:Arguments", NS).text == (
        r'-m provider_windows service-run --log-file "C:\Users\A B\AppData\Local\zcompute\provider.log" '
        r'--data-dir "C:\Users\A B\.zcompute\provider" --slots 2')
    assert exec_.find("t:WorkingDirectory", NS).text == r"C:\Users\A B\AppData\Local\zcompute"
    assert str(task.log_path) == r"C:\Users\A B\AppData\Local\zcompute\provider.log"


def test_scheduled_task_config_file_goes_before_the_command():
    task = _task(group_args=["--config", r"C:\zc\zcompute.toml"], start_args=[])
    assert task.arguments[:5] == ["-m", "provider_windows", "--config", r"C:\zc\zcompute.toml", "service-run"]


def test_scheduled_task_install_and_uninstall(tmp_path):
    task = _task(app_dir=tmp_path / "zcompute")
    run = Recorder()
    tasks.install(task, run=run)
    raw = task.xml_path.read_bytes()
    assert raw[:2] in (b"\xff\xfe", b"\xfe\xff") and raw.decode("utf-16") == task.xml()  # UTF-16 with a BOM
    assert run.calls == [["schtasks", "/Create", "/TN", "zcompute-provider", "/XML", str(task.xml_path), "/F"],
                         ["schtasks", "/Run", "/TN", "zcompute-provider"]]
    with pytest.raises(RuntimeError, match="/Create said no"):
        tasks.install(task, run=Recorder(fail={"/Create"}))
    run = Recorder()
    assert tasks.uninstall(task, run=run) is True
    assert run.calls == [["schtasks", "/End", "/TN", "zcompute-provider"],
                         ["schtasks", "/Delete", "/TN", "zcompute-provider", "/F"]]
    assert not task.xml_path.exists()
    assert tasks.uninstall(task, run=Recorder(fail={"/Delete"})) is False


def test_windowless_interpreter(tmp_path):
    (tmp_path / "python.exe").touch()
    assert tasks.windowless(str(tmp_path / "python.exe")) == str(tmp_path / "python.exe")  # no pythonw: python
    (tmp_path / "pythonw.exe").touch()
    assert tasks.windowless(str(tmp_path / "python.exe")) == str(tmp_path / "pythonw.exe")


def test_windows_install_service_command(tmp_path, monkeypatch):
    run = Recorder()
    monkeypatch.setattr(tasks, "install", partial(tasks.install, run=run))
    data_dir = tmp_path / "prov"
    result = CliRunner().invoke(win_cli.cli, ["install-service", "--data-dir", str(data_dir), "--name", "gpu box"],
                                env={"ZCOMPUTE_JOIN": JOIN})
    assert result.exit_code == 0, result.output
    xml_path = tmp_path / "home/AppData/Local/zcompute/zcompute-provider.xml"
    text = xml_path.read_text(encoding="utf-16")
    assert f'--data-dir {data_dir} --name "gpu box"' in text and JOIN not in text
    assert (data_dir / "join").read_text().strip() == JOIN
    assert [c[1] for c in run.calls] == ["/Create", "/Run"]
    dry = CliRunner().invoke(win_cli.cli, ["install-service", "--dry-run", "--insecure"])
    assert dry.exit_code == 0 and "<LogonTrigger>" in dry.output and "schtasks /Create" in dry.output


def test_windows_service_run_logs_to_the_file(tmp_path):
    """The task's command (pythonw: no console) writes everything, even a usage error, to its log."""
    log = tmp_path / "logs" / "provider.log"
    done = subprocess.run([sys.executable, "-m", "provider_windows", "--config", "none", "service-run",
                           "--log-file", str(log), "--data-dir", str(tmp_path / "p"), "--slots", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == done.stderr == ""
    assert "Invalid value for '--slots'" in log.read_text()


def test_redirect_output_rotates_and_captures_native_writes(tmp_path):
    log = tmp_path / "provider.log"
    log.write_text("x" * 100)
    code = ("import os, sys; from pathlib import Path; from provider_windows import service; "
            "service.LOG_ROTATE_BYTES = 10; service.redirect_output(Path(sys.argv[1])); "
            "print('from python'); os.write(2, b'from C\\n')")
    subprocess.run([sys.executable, "-c", code, str(log)], check=True, timeout=60)
    assert log.with_name("provider.log.1").read_text() == "x" * 100
    assert log.read_text().splitlines() == ["from python", "from C"]


# -- Windows: console events ---------------------------------------------------------------------


class FakeProvider:
    def __init__(self, stops_after: int | None = 1):
        self.stop_event = threading.Event()
        self.stops, self.stops_after = 0, stops_after

    def stop(self):
        self.stops += 1
        if self.stops_after is not None and self.stops >= self.stops_after:
            self.stop_event.set()


def test_console_ctrl_c_and_break_drain_then_stop():
    provider = FakeProvider(stops_after=None)
    handler = console.make_handler(provider.stop, provider.stop_event)
    assert handler(console.CTRL_C) is True and provider.stops == 1  # handled: drain
    assert handler(console.CTRL_BREAK) is True and provider.stops == 2  # again: stop now
    assert handler(99) is False and provider.stops == 2  # not ours


def test_console_close_drains_within_the_budget():
    provider, slept = FakeProvider(stops_after=1), []
    handler = console.make_handler(provider.stop, provider.stop_event, budget=2.0, deregister_time=0.5,
                                   sleep=slept.append)
    assert handler(console.CTRL_CLOSE) is True
    assert provider.stops == 1 and slept == []  # drained in time: no second stop

    provider, slept = FakeProvider(stops_after=None), []
    handler = console.make_handler(provider.stop, provider.stop_event, budget=0.3, deregister_time=0.1,
                                   sleep=slept.append)
    start = time.monotonic()
    assert handler(console.CTRL_SHUTDOWN) is True
    assert provider.stops == 2 and slept == [0.1]  # shards still running: stop now, let it deregister
    assert time.monotonic() - start < 1.0


def test_console_install_registers_a_live_callback():
    class Kernel32:
        def __init__(self):
            self.registered = []

        def SetConsoleCtrlHandler(self, callback, add):  # noqa: N802 (the Win32 name)
            self.registered.append((callback, add))
            return 1

    assert console.install(FakeProvider()) is None  # not Windows: nothing to do
    kernel32, provider = Kernel32(), FakeProvider(stops_after=None)
    callback = console.install(provider, kernel32=kernel32)  # a real ctypes callback (CFUNCTYPE here)
    assert kernel32.registered == [(callback, True)] and callback in console._keep
    assert callback(console.CTRL_BREAK) == 1 and provider.stops == 1
    assert callback(42) == 0
