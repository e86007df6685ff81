"""Doctor's checks of this machine: Ansible's versions, the state directory and its disk, the
systemd unit, the daemon, and the last cycle."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from agent.adapters.state import StateDir, mount_point, read_status, running_daemon
from agent.config import Config
from agent.core.versions import RANGE, untested_ansible, untested_runner
from agent.errors import AgentError
from agent.onboard.findings import FAIL, OK, WARN, Finding

UNIT = "petkeeper.service"
TIMER = "petkeeper.timer"
UNIT_DIRS = ("etc/systemd/system", "usr/local/lib/systemd/system", "lib/systemd/system",
             "usr/lib/systemd/system")
MIB = 1 << 20
DISK_FAIL, DISK_WARN = 100 * MIB, 1024 * MIB  # a cycle's mirror, trees and artifacts
SYSTEMCTL_TIMEOUT = 15.0


def check_versions(findings: list[Finding]) -> None:
    """ansible-core and ansible-runner: installed, and in the range Petkeeper is tested with."""
    for name in ("ansible-core", "ansible-runner"):
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "(not installed as a Python package)"
        findings.append(judge_version(name, version, sys.version_info[:2]))


def judge_version(name: str, version: str, python: tuple[int, int]) -> Finding:
    """NAME's VERSION against the tested range, the fix naming Petkeeper's own pip."""
    problem = untested_ansible(version, python) if name == "ansible-core" else \
        untested_runner(version)
    if problem:
        return Finding(name, FAIL, f"{problem} (Petkeeper's own pip: {sys.prefix}/bin/pip)")
    return Finding(name, OK, f"{version} (tested: {RANGE if name == 'ansible-core' else '2.4'})")


def check_state(config: Config, findings: list[Finding]) -> None:
    """The state directory (root's, 0700), its free space, the daemon and the last cycle."""
    state = StateDir(config.state_dir)
    findings.append(judge_state_dir(state.root))
    findings.append(judge_disk(state.root))
    findings.append(_last_cycle(config, state))


def judge_state_dir(root: Path) -> Finding:
    """The state directory holds approvals, the mirror and the mask key: the user running
    Petkeeper alone may read it."""
    try:
        st = root.stat()
    except FileNotFoundError:
        return Finding("state directory", OK, f"{root} does not exist yet: the first cycle "
                                              "creates it (0700), as does systemd's "
                                              "StateDirectory=")
    except OSError as e:
        return Finding("state directory", FAIL, f"{root}: {e.strerror}; run doctor as root")
    me = os.geteuid()
    if not root.is_dir():
        return Finding("state directory", FAIL, f"{root} is not a directory; move it aside, "
                                                "or set state_dir")
    if st.st_uid != me:
        return Finding("state directory", FAIL, f"{root} belongs to {_user(st.st_uid)}, not "
                                                f"{_user(me)}, who runs Petkeeper; chown -R "
                                                f"{_user(me)}: {root}")
    mode = st.st_mode & 0o7777
    if mode & 0o077:
        return Finding("state directory", FAIL, f"{root} is mode {mode:04o}: other users may "
                                                "read its approvals, mirror and mask key; "
                                                f"chmod 700 {root}")
    return Finding("state directory", OK, f"{root} is {_user(me)}'s, mode {mode:04o}")


def judge_disk(root: Path, free: int | None = None) -> Finding:
    """Free space where the state directory lives (FREE overrides the measured bytes)."""
    where = mount_point(root)
    usage = shutil.disk_usage(where)
    free = usage.free if free is None else free
    text = f"{free / (1 << 30):.1f} GiB free on {where} (the state directory's filesystem)"
    if free < DISK_FAIL:
        return Finding("disk", FAIL, f"{text}: a cycle needs more (mirror, trees, Ansible's "
                                     f"artifacts); free space on {where} (df -h {where})")
    if free < DISK_WARN:
        return Finding("disk", WARN, f"{text}: little room left; free space on {where}")
    return Finding("disk", OK, text)


def check_service(prefix: Path, config: Config | None, findings: list[Finding]) -> None:
    """The unit installed (its ExecStart there) and enabled, and a daemon running."""
    unit = next((prefix / d / UNIT for d in UNIT_DIRS if (prefix / d / UNIT).is_file()), None)
    timer = _enabled(prefix, "timers.target.wants", TIMER)
    if unit is None:
        findings.append(Finding("unit", WARN, f"{UNIT} is not installed, so nothing runs "
                                "cycles; install it (README: Installing on a server): install "
                                "-m 0644 systemd/petkeeper.service /etc/systemd/system/, then "
                                "systemctl enable --now petkeeper"))
    else:
        findings.append(_unit(prefix, unit, timer))
    if config is not None:
        findings.append(_daemon(prefix, StateDir(config.state_dir), unit is not None, timer))


def _unit(prefix: Path, unit: Path, timer: bool) -> Finding:
    command = next((line.partition("=")[2].split()[0] for line in unit.read_text().splitlines()
                    if line.startswith("ExecStart=") and line.partition("=")[2].split()), "")
    binary = prefix / command.lstrip("/") if command.startswith("/") else None
    if binary is None or not os.access(binary, os.X_OK):
        return Finding("unit", FAIL, f"{unit} starts {command or 'nothing'}, which is not "
                                     f"there; link it: ln -s {sys.prefix}/bin/petkeeper "
                                     f"{command or '/usr/local/bin/petkeeper'}")
    if not (_enabled(prefix, "multi-user.target.wants", UNIT) or timer):
        return Finding("unit", WARN, f"{unit} is installed but not enabled, so it will not "
                                     "start at boot; systemctl enable --now petkeeper")
    how = "petkeeper.timer is enabled" if timer else "enabled"
    return Finding("unit", OK, f"{unit} is installed ({command}) and {how}")


def _daemon(prefix: Path, state: StateDir, unit: bool, timer: bool) -> Finding:
    pid = running_daemon(state) if state.root.is_dir() else None
    if pid is not None:
        return Finding("daemon", OK, f"running (pid {pid})")
    if timer:
        return Finding("daemon", OK, "none runs: petkeeper.timer starts the cycles instead")
    if unit and prefix == Path("/") and Path("/run/systemd/system").is_dir():
        active = _systemctl("is-active", UNIT)
        if active == "failed":
            return Finding("daemon", FAIL, f"{UNIT} failed; see journalctl -u petkeeper -n 50, "
                                           "fix what it says, then systemctl restart petkeeper")
        if active in ("activating", "reloading"):
            return Finding("daemon", OK, f"{UNIT} is {active}")
    return Finding("daemon", WARN, f"no daemon runs on {state.root}; start it: systemctl "
                                   "enable --now petkeeper")


def _last_cycle(config: Config, state: StateDir) -> Finding:
    try:
        status = read_status(state)
    except (AgentError, OSError) as e:
        return Finding("last cycle", FAIL, str(e))
    if status is None:
        return Finding("last cycle", OK, "none yet: petkeeper check runs one now, the daemon "
                                         "its first within daemon.splay of its start")
    run = status.get("last_run") or {}
    try:
        finished = datetime.fromisoformat(str(run.get("finished")))
        age = (datetime.now(UTC) - finished).total_seconds()
    except (TypeError, ValueError):
        return Finding("last cycle", WARN, f"{state.status_file} has no finish time; run "
                                           "petkeeper check")
    text = f"{_ago(age)} ago (run {run.get('run_id')}, exit {run.get('exit_code')})"
    stale = max(2 * config.daemon.check_interval, 3600.0)
    if age > stale:
        return Finding("last cycle", WARN, f"{text}: none for more than {_ago(stale)}; is the "
                                           "daemon running? (journalctl -u petkeeper)")
    if run.get("exit_code") not in (0, 2):
        return Finding("last cycle", WARN, f"{text}: it ended in an error; see petkeeper "
                                           "status")
    return Finding("last cycle", OK, text)


def _enabled(prefix: Path, wants: str, unit: str) -> bool:
    # `systemctl --root` links with absolute targets, meant for inside PREFIX: the link counts.
    return os.path.lexists(prefix / "etc/systemd/system" / wants / unit)


def _systemctl(*args: str) -> str:
    try:
        return subprocess.run(["systemctl", *args], capture_output=True, text=True,
                              timeout=SYSTEMCTL_TIMEOUT, stdin=subprocess.DEVNULL).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"
