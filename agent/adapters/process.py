"""Child processes: every one Petkeeper starts runs in a session of its own, within a timeout,
and is stopped with everything it started when that timeout passes or the cycle is cancelled
(SIGTERM, the daemon stopping).

A child starts in its own session (``setsid``): a terminal's Ctrl-C or a signal to our group
does not hit it half-way; we stop it ourselves, and the whole tree: every descendant found
through /proc's parentage (Ansible's workers and ssh leave their session with ``setsid``), and
every process still in the child's session (orphans whose parent already died). ansible-runner
starts ansible-playbook itself (through pexpect, in a session too): agent.adapters.runner stops
its tree with stop_process_tree. GitPython starts git: agent.adapters.gitrepo passes SESSION to
its Popen and waits with wait_process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import AgentError

log = logging.getLogger(__name__)

SESSION: dict[str, Any] = {"start_new_session": True}  # how every child's Popen starts it
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL when a tree is stopped
POLL = 0.2  # seconds between looks at the cancel request while a child runs
TIMEOUT, CANCELED = "timeout", "canceled"
Cancel = Callable[[], bool] | None
INTERPRETERS = {"sh", "bash", "dash", "perl", "ruby", "node"}  # and python*


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


class ProcessStopped(AgentError):
    """A child was stopped, with its whole tree, at its timeout or because the cycle was
    cancelled; the message names what was stopped and why, in one line."""

    def __init__(self, what: str, reason: str, why: str, stopped: Sequence[str], fix: str = ""):
        self.what, self.reason, self.why = what, reason, why
        self.stopped = ", ".join(stopped[:6]) + (f" and {len(stopped) - 6} more"
                                                 if len(stopped) > 6 else "")
        fix = f"; {fix}" if fix and reason == TIMEOUT else ""
        super().__init__(f"{what}: {why}; stopped {self.stopped or 'it'}{fix}")


def run_process(argv: Sequence[str], *, what: str, timeout: float, cancel: Cancel = None,
                cwd: Path | str | None = None, env: Mapping[str, str] | None = None,
                fix: str = "") -> Finished:
    """Run ARGV (no input, output captured) in a session of its own; return its exit code and
    output. ProcessStopped, once its whole tree is stopped, after TIMEOUT seconds or when
    CANCEL() turns true: WHAT names the command in that error, FIX says what to do about a
    timeout."""
    proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **SESSION)
    out, err = wait_process(proc, what=what, timeout=timeout, cancel=cancel, fix=fix)
    return Finished(proc.returncode, _text(out), _text(err))


def wait_process(proc: subprocess.Popen[Any], *, what: str, timeout: float,
                 cancel: Cancel = None, fix: str = "") -> tuple[Any, Any]:
    """Wait for PROC (started with SESSION) and return its (stdout, stderr); as run_process
    when it outlasts TIMEOUT or CANCEL() turns true. Whatever interrupts the wait (Ctrl-C, an
    error) stops its tree too: nothing it started outlives the call."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                return proc.communicate(timeout=POLL)
            if cancel is not None and cancel():
                reason, why = CANCELED, "the agent is stopping"
            elif time.monotonic() >= deadline:
                reason, why = TIMEOUT, f"no answer within {timeout:g}s"
            else:
                continue
            raise ProcessStopped(what, reason, why, stop_session(proc), fix)
    except BaseException:
        if proc.returncode is None:
            stop_session(proc)
        raise


def stop_session(proc: subprocess.Popen[Any]) -> list[str]:
    """Stop PROC, its descendants and what is left in its session; reap it. Return what was
    stopped, as "name (pid)"."""
    stopped = stop_process_tree([proc.pid], sessions=[proc.pid])
    try:
        proc.communicate(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:  # something that escaped the tree holds its pipes
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.kill()
        proc.wait()
    return stopped


def stop_process_tree(roots: Iterable[int], sessions: Iterable[int] = (),
                      grace: float = STOP_GRACE) -> list[str]:
    """SIGTERM ROOTS, every process in SESSIONS and all their descendants, then SIGKILL what
    is left after GRACE; return what was signalled, as "name (pid)"."""
    victims = descendants(roots, sessions)
    names = [f"{_name(pid)} ({pid})" for pid in victims]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        end = time.monotonic() + grace
        while time.monotonic() < end and any(_alive(pid) for pid in victims):
            time.sleep(0.05)
        if not any(_alive(pid) for pid in victims):
            break
    return names


def stop_strays(folder: Path, spare: Path | None = None) -> list[int]:
    """Stop the processes left running in FOLDER by a run whose agent was killed (Ansible's
    workers outlive it); only a lock holder may call this. Return their PIDs. The daemon's
    kept SSH masters, with their sockets in SPARE, are not strays: they live in the folder
    where the run that opened them started them, and serve the next cycle."""
    root = str(folder.resolve())
    kept = f"ssh: {spare}{os.sep}".encode() if spare is not None else None
    strays = [pid for pid in parents() if pid != os.getpid() and
              _cwd(pid).startswith(root + os.sep) and
              not (kept and read_proc(pid, "cmdline").startswith(kept))]
    if strays:
        log.warning("stopping %d process(es) left by an interrupted run: %s", len(strays),
                    ", ".join(map(str, strays)))
        stop_process_tree(strays)
    return strays


def descendants(roots: Iterable[int], sessions: Iterable[int] = ()) -> list[int]:
    """ROOTS, the processes of SESSIONS, and all their descendants (never this process)."""
    table = _table()
    in_sessions = set(sessions)
    found = list(dict.fromkeys([*roots, *(pid for pid, (_, sid) in table.items()
                                          if sid in in_sessions)]))
    seen, frontier = set(found), set(found)
    while frontier:
        frontier = {pid for pid, (parent, _) in table.items()
                    if parent in frontier and pid not in seen}
        seen |= frontier
        found.extend(sorted(frontier))
    return [pid for pid in found if pid not in (os.getpid(), 1)]


def parents() -> dict[int, int]:
    """Every process's parent: PID -> parent PID."""
    return {pid: parent for pid, (parent, _) in _table().items()}


def read_proc(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _table() -> dict[int, tuple[int, int]]:
    """Every process: PID -> (parent PID, session id), from /proc/PID/stat."""
    result = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = read_proc(int(entry), "stat").rpartition(b")")[2].split()
            if len(fields) > 3:  # state, ppid, pgrp, session, ...
                result[int(entry)] = (int(fields[1]), int(fields[3]))
    return result


def _alive(pid: int) -> bool:
    fields = read_proc(pid, "stat").rpartition(b")")[2].split()
    return bool(fields) and fields[0] != b"Z"


def _name(pid: int) -> str:
    """A process's program, without folders: the script (or -m module) an interpreter runs,
    else argv[0]."""
    argv = [a.decode(errors="replace") for a in read_proc(pid, "cmdline").split(b"\0") if a]
    if not argv:
        return "?"
    program = os.path.basename(argv[0])
    if (program in INTERPRETERS or program.startswith("python")) and len(argv) > 1:
        script = argv[2:3] if argv[1] == "-m" else argv[1:2]
        if script and not script[0].startswith("-"):
            return os.path.basename(script[0])
    return program


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _text(data: bytes | None) -> str:
    return (data or b"").decode(errors="replace")
