"""The state directory: atomic writes, the cycle lock and the last cycle's status.

Layout (mode 0700)::

    lock            flock held by the running cycle; holds its PID and command
    status.json     the last cycle, per host (schema below, versioned)
    plans.json      the last check's plan per host (id, decision, window)
    approvals/      host-side approvals, one file per plan id
    used-approvals.json  approvals already used once (never replayed)
    journal/        applies in progress: found after a crash, recorded as interrupted
    ledger.json     per host: last converged source, flapping tasks (agent.core.ledger)
    mirror.git/     bare mirror of the GitOps repo (agent.adapters.gitrepo)
    trees/<sha>/    materialised commits (the current one and the one before)
    runner/         ansible-runner's private data dir, artifacts rotated
    pause.json      set by `petkeeper pause`: who, when, why, whether checks pause too
    cycle.json      the running cycle: PID, run id, the host being applied (read by pause)
    daemon.pid      the running daemon's PID, flock-ed while it runs (`petkeeper run --now`)
    trust.json      last verified source commit, last applied one, an acknowledged rewind
    metrics.json    counters and gauges behind every metrics exposition (agent.operate.metrics)
    notify.json     what was told per host, and the outbox of undelivered events
    repo.json       the repository (repo.url, credentials left out) this directory belongs to
    inventory-listings.json  static inventories' listings (agent.adapters.inventory_cache)
    undo/           snapshots taken before applies, undo plans, approvals and holds
                    (agent.adapters.snapshots): file bytes that may hold secrets rest here only
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from agent.core.redact import redact_text
from agent.errors import LockedError, StalledError, TransientError

STATUS_SCHEMA = 1
PAUSE_SCHEMA = 1
CYCLE_SCHEMA = 1
REPO_SCHEMA = 1
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or a quota: free space and retry


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def mirror(self) -> Path:
        return self.root / "mirror.git"

    @property
    def trees(self) -> Path:
        return self.root / "trees"

    @property
    def runner(self) -> Path:
        return self.root / "runner"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "lock"

    @property
    def plans_file(self) -> Path:
        return self.root / "plans.json"

    @property
    def ledger_file(self) -> Path:
        return self.root / "ledger.json"

    @property
    def used_approvals_file(self) -> Path:
        return self.root / "used-approvals.json"

    @property
    def approvals(self) -> Path:
        return self.root / "approvals"

    @property
    def journal(self) -> Path:
        return self.root / "journal"

    @property
    def pause_file(self) -> Path:
        return self.root / "pause.json"

    @property
    def cycle_file(self) -> Path:
        return self.root / "cycle.json"

    @property
    def daemon_pid_file(self) -> Path:
        return self.root / "daemon.pid"

    @property
    def trust_file(self) -> Path:
        return self.root / "trust.json"

    @property
    def repo_file(self) -> Path:
        return self.root / "repo.json"

    @property
    def managed_dir(self) -> Path:
        """Per host, the paths its last check found managed (the daemon's file watch reads it)."""
        return self.root / "managed"

    @property
    def watch_file(self) -> Path:
        """The daemon's file watch, as `petkeeper status` shows it."""
        return self.root / "watch.json"

    @property
    def undo(self) -> Path:
        return self.root / "undo"

    def ensure(self) -> None:
        """Create the state directory, private to root (0700)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.root, 0o700)
        except OSError as e:
            raise StalledError(f"{self.root}: cannot create the state directory: {e.strerror}; "
                               "check state_dir in the config and its permissions") from e


def mount_point(path: Path) -> Path:
    """Return the mount point of the filesystem that holds PATH (or its nearest parent)."""
    here = Path(os.path.abspath(path))
    while not os.path.ismount(here) and here != here.parent:
        here = here.parent
    return here


def disk_full_error(path: Path, what: str = "") -> TransientError:
    """The error for a full disk (or quota) while writing PATH (WHAT, when PATH is a folder).

    Transient, not stalled: nothing was lost, and the next cycle (the daemon's backoff)
    succeeds once a person, or log rotation, frees space."""
    where = mount_point(path)
    return TransientError(f"{path}: cannot write{f' {what}' if what else ''}: no space left on "
                          f"device; free space on {where} (df -h {where}), then run again")


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write DATA to PATH so that readers see the old or the new content, never a mix; a full
    disk is a TransientError naming PATH and where to free space."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        os.fchmod(fd, mode)  # MODE as asked, whatever the umask (systemd's UMask=0077)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            raise disk_full_error(path) from e
        raise


def read_json(path: Path, default: Any) -> Any:
    """PATH's JSON, or DEFAULT when the file does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except PermissionError:
        raise  # not root: moving the file aside would not help
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested too deeply
        raise StalledError(f"{path}: unreadable ({e}); move it aside and run again") from e


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_status(state: StateDir) -> dict[str, Any] | None:
    """Return the last cycle's status, or None if there was none."""
    try:
        data = json.loads(state.status_file.read_text())
    except FileNotFoundError:
        return None
    except PermissionError:
        raise  # not root: moving the file aside would not help
    except (OSError, ValueError) as e:
        raise StalledError(f"{state.status_file}: unreadable ({e}); move it aside and run "
                           "a new check") from e
    if not isinstance(data, dict):
        raise StalledError(f"{state.status_file}: not a status object; move it aside and run "
                           "a new check")
    if data.get("schema") != STATUS_SCHEMA:
        raise StalledError(f"{state.status_file}: schema {data.get('schema')!r}, expected "
                           f"{STATUS_SCHEMA}; move it aside and run a new check")
    return dict(data)


def write_status(state: StateDir, status: dict[str, Any]) -> None:
    body = {"schema": STATUS_SCHEMA, **status}
    write_atomic(state.status_file, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())


def claim_repo(state: StateDir, url: str, config_path: str, write: bool = True) -> None:
    """The state directory belongs to one repository: the first config to use it records its
    URL (credentials left out, so a rotated password is the same repository); a config with
    another repo.url is refused (StalledError), until `petkeeper adopt` moves the state."""
    safe = redact_text(url)
    owner = read_repo(state)
    if owner is None:
        if write and state.root.is_dir():
            write_json(state.repo_file, {"schema": REPO_SCHEMA, "url": safe, "since": _now_iso(),
                                         "config": config_path})
        return
    if owner["url"] != safe:
        raise StalledError(
            f"{config_path}: repo.url: {safe} is not the repository state_dir {state.root} "
            f"belongs to ({owner['url']}, recorded by {owner.get('config')} since "
            f"{owner.get('since')}); give this config its own state_dir, or, if the Git "
            "server moved, run petkeeper adopt to move this state to the new URL")


def read_repo(state: StateDir) -> dict[str, Any] | None:
    """What repo.json records (url, since, config), or None before any cycle."""
    data = read_json(state.repo_file, None)
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("schema") != REPO_SCHEMA or \
            not isinstance(data.get("url"), str):
        raise StalledError(f"{state.repo_file}: not a repository record of schema "
                           f"{REPO_SCHEMA}; run petkeeper adopt to record the repository again")
    return data


def adopt_repo(state: StateDir, url: str, config_path: str, by: str) -> dict[str, Any] | None:
    """Record URL as the repository the state belongs to (a moved Git server); return what
    was recorded before (None: nothing)."""
    try:
        before = read_repo(state)
    except StalledError:
        before = None
    write_json(state.repo_file, {"schema": REPO_SCHEMA, "url": redact_text(url),
                                 "since": _now_iso(), "config": config_path, "adopted_by": by,
                                 "before": before["url"] if before else None})
    return before


def read_pause(state: StateDir) -> dict[str, Any] | None:
    """The pause in force (by, at, reason, checks), or None when applies may run."""
    data = read_json(state.pause_file, None)
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("schema") != PAUSE_SCHEMA:
        raise StalledError(f"{state.pause_file}: not a pause of schema {PAUSE_SCHEMA}; run "
                           "petkeeper pause again, or petkeeper resume")
    return {k: v for k, v in data.items() if k != "schema"}


def write_pause(state: StateDir, by: str, at: str, reason: str, checks: bool) -> dict[str, Any]:
    pause = {"by": by, "at": at, "reason": reason, "checks": checks}
    state.ensure()
    write_json(state.pause_file, {"schema": PAUSE_SCHEMA, **pause})
    return pause


def pause_applies(state: StateDir, by: str, at: str, reason: str, checks: bool
                  ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Write the pause, then read what a running cycle does (without its lock): the pause and
    the running cycle (None when none runs). In that order: the cycle marks an apply as
    running before it reads the pause, so an apply this misses cannot start."""
    return write_pause(state, by, at, reason, checks), running_cycle(state)


def note_cycle(state: StateDir, run_id: str, command: str) -> None:
    """Record, for `petkeeper pause`, that this process runs cycle RUN_ID (under the lock)."""
    write_json(state.cycle_file, {"schema": CYCLE_SCHEMA, "pid": os.getpid(), "run_id": run_id,
                                  "command": command, "applying": None})


def note_applying(state: StateDir, host: str | None) -> None:
    """Record that the running cycle now applies HOST (None: no apply runs)."""
    note = read_json(state.cycle_file, None)
    if isinstance(note, dict):
        write_json(state.cycle_file, {**note, "applying": host})


def clear_cycle_note(state: StateDir) -> None:
    state.cycle_file.unlink(missing_ok=True)


def running_cycle(state: StateDir) -> dict[str, Any] | None:
    """The cycle running now (pid, run_id, command, applying), or None. A note left by a
    killed cycle names a process that is gone: no cycle runs."""
    try:
        note = json.loads(state.cycle_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(note, dict) or note.get("schema") != CYCLE_SCHEMA or \
            not isinstance(note.get("pid"), int) or not _alive(note["pid"]):
        return None
    return {k: note.get(k) for k in ("pid", "run_id", "command", "applying")}


def _alive(pid: int) -> bool:
    if pid <= 0:  # kill(0) and kill(-1) would ask about groups, not one process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_pause(state: StateDir) -> dict[str, Any] | None:
    """Remove the pause; return what it was (None if there was none)."""
    pause = read_pause(state)
    state.pause_file.unlink(missing_ok=True)
    return pause


def running_daemon(state: StateDir) -> int | None:
    """The PID of the daemon running on STATE (it holds STATE_DIR/daemon.pid), or None."""
    try:
        fd = os.open(state.daemon_pid_file, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # held: a daemon runs
            text = os.pread(fd, 64, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() and int(text) > 0 else None
        return None  # nobody holds it: a stale file
    finally:
        os.close(fd)


@contextlib.contextmanager
def cycle_lock(state: StateDir, command: str, wait: float = 0.0) -> Iterator[None]:
    """Hold the state directory's lock for one cycle; LockedError names the holder.

    flock is released by the kernel when its holder dies, so a killed cycle never leaves it
    stuck. WAIT seconds are spent retrying before giving up."""
    fd = os.open(state.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    locked = False
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
                    raise LockedError(
                        f"{state.lock_file}: another cycle is running ({holder}); wait for it "
                        "to finish or pass --wait SECONDS") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        try:
            os.pwrite(fd, f"pid {os.getpid()}, {command}, since {_now_iso()}\n".encode(), 0)
        except OSError as e:  # the first write of a cycle: a full disk stops it here
            if e.errno in DISK_FULL:
                raise disk_full_error(state.lock_file) from e
            raise
        yield
    finally:
        if locked:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_managed_paths(state: StateDir, host: str, data: dict[str, Any]) -> None:
    """Keep DATA (paths, local, source_sha, checked_at) as HOST's managed paths."""
    write_json(state.managed_dir / f"{quote(host, safe='')}.json", data)


def read_managed_paths(state: StateDir) -> dict[str, dict[str, Any]]:
    """Every host's managed paths as its last check recorded them; unreadable files are left
    out (the next check writes them again)."""
    found: dict[str, dict[str, Any]] = {}
    if not state.managed_dir.is_dir():
        return found
    for path in sorted(state.managed_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("paths"), list):
            found[unquote(path.stem)] = data
    return found
