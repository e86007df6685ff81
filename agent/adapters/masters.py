"""SSH ControlPersist masters: their private folder, and closing them (agent.core.ssh_masters
says where they go and how long they live).

A master daemonizes (ssh forks and calls setsid): it leaves the process tree and the process
group of whatever started it, so nothing ends it but `ssh -O exit` on its socket, its idle
timeout, or systemd's cgroup. close_masters asks each one to exit and confirms it did.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import stat
import time
from pathlib import Path

from agent.adapters.process import read_proc, run_process
from agent.core.ssh_masters import Masters, choose_folder, departed
from agent.errors import AgentError

log = logging.getLogger(__name__)

MASTER_PID = re.compile(r"Master running \(pid=(\d+)\)")
SSH_TIMEOUT = 10.0  # seconds for one `ssh -O` request to a local socket
EXIT_WAIT = 5.0  # seconds for the masters asked to exit to be gone
POLL = 0.05


def open_folder(folder: Path) -> None:
    """Create FOLDER (0700) or check the one there: a real folder of ours that no one else may
    enter. AgentError when it is not (a link, another owner, open to others)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise AgentError(f"{folder}: not a folder of the agent's own user; remove it, or "
                         "set state_dir to a shorter path")
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)  # ours: made private again (an umask or a hand's chmod)


def close_masters(folder: Path, shared_only: bool = False) -> list[int]:
    """Ask every SSH master with a socket in FOLDER (or a host folder in it; SHARED_ONLY: in
    FOLDER itself, Mitogen's) to exit, remove sockets no master answers on, and wait until the
    masters are gone; return their PIDs."""
    if not folder.is_dir():
        return []
    pids = []
    for sock in sorted(_sockets(folder, shared_only)):
        pid = master_pid(sock)
        _ssh_control(sock, "exit")
        if pid is None:
            sock.unlink(missing_ok=True)  # stale: its master died (killed, or timed out)
        else:
            pids.append(pid)
    _wait_gone(pids)
    return pids


def remove_folder(folder: Path) -> None:
    """Remove FOLDER and its host folders once their masters are closed (empty ones only)."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            with contextlib.suppress(OSError):
                entry.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


def close_departed(masters: Masters, hosts: tuple[str, ...] | list[str]) -> list[int]:
    """Close the masters of hosts that are no longer among HOSTS, and their folders; when any
    host left, Mitogen's shared masters too (which is whose is not known: the hosts still
    targeted open new ones). Then make a folder for each of HOSTS, which tells the next cycle
    who was there, whichever strategy ran."""
    if not masters.folder.is_dir():
        return []
    names = [p.name for p in masters.folder.iterdir() if p.is_dir() and not p.is_symlink()]
    pids = []
    gone = departed(names, hosts)
    for name in gone:
        pids += close_masters(masters.folder / name)
        with contextlib.suppress(OSError):
            (masters.folder / name).rmdir()
    if gone:
        pids += close_masters(masters.folder, shared_only=True)
    for host in hosts:
        with contextlib.suppress(FileExistsError):
            os.mkdir(masters.host_folder(host), 0o700)
    return pids


def master_pid(sock: Path) -> int | None:
    """The PID of the master listening on SOCK (`ssh -O check`), or None when none answers."""
    answer = _ssh_control(sock, "check")
    m = MASTER_PID.search(answer)
    return int(m.group(1)) if m else None


def _ssh_control(sock: Path, command: str) -> str:
    try:
        done = run_process(["ssh", "-O", command, "-o", f"ControlPath={sock}", "petkeeper"],
                           what=f"ssh -O {command}", timeout=SSH_TIMEOUT)
    except (AgentError, OSError) as e:
        log.debug("ssh -O %s on %s: %s", command, sock, e)
        return ""
    return done.stderr + done.stdout


def _sockets(folder: Path, shared_only: bool = False) -> list[Path]:
    found = []
    for entry in folder.iterdir():
        if entry.is_socket():
            found.append(entry)
        elif entry.is_dir() and not entry.is_symlink() and not shared_only:
            found += [e for e in entry.iterdir() if e.is_socket()]
    return found


def _wait_gone(pids: list[int]) -> None:
    """Until PIDS are gone; a master still there after EXIT_WAIT (one that did not take its
    exit request) is sent SIGTERM, once its command line shows it is an SSH master."""
    deadline = time.monotonic() + EXIT_WAIT
    left = [p for p in pids if _is_master(p)]
    while left and time.monotonic() < deadline:
        time.sleep(POLL)
        left = [p for p in left if _is_master(p)]
    for pid in left:
        log.warning("SSH master %d did not exit when asked; terminating it", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _is_master(pid: int) -> bool:
    """Whether PID is alive and an SSH master ("ssh: SOCKET [mux]"), not a reused PID."""
    cmdline = read_proc(pid, "cmdline")
    return cmdline.startswith(b"ssh: ") and b"[mux]" in cmdline


def daemon_folder(state_root: Path) -> tuple[Path, str]:
    """The daemon's folder of kept SSH masters for STATE_ROOT, and why it is not in there.
    Links resolved: Ansible resolves the folder's path before it names a socket."""
    return choose_folder(state_root.resolve(), Path("/tmp").resolve(), os.getuid())


def open_masters(state_root: Path) -> Path | None:
    """The daemon's folder of kept SSH masters (agent.core.ssh_masters.choose_folder), made
    private, with any master an earlier daemon left there closed; None, with a warning, when
    it cannot be used (then each run keeps its own, as ad hoc runs do)."""
    folder, why = daemon_folder(state_root)
    if why:
        log.info("%s", why)
    try:
        open_folder(folder)
        left = close_masters(folder)
    except (AgentError, OSError) as e:
        log.warning("%s; SSH connections are not kept between cycles", e)
        return None
    if left:
        log.info("closed %d SSH connection(s) an earlier daemon left in %s", len(left), folder)
    return folder
