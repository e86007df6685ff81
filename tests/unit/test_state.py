"""adapters/state: atomic writes, the versioned status file and the cycle lock across processes."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.adapters.state import (
    StateDir,
    clear_cycle_note,
    cycle_lock,
    mount_point,
    note_applying,
    note_cycle,
    pause_applies,
    read_pause,
    read_status,
    running_cycle,
    write_atomic,
    write_status,
)
from agent.errors import LockedError, StalledError, TransientError


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    s = StateDir(tmp_path / "state")
    s.ensure()
    return s


def test_ensure_creates_the_state_directory_private_to_its_owner(tmp_path: Path):
    s = StateDir(tmp_path / "a" / "state")

    s.ensure()

    assert stat.S_IMODE(s.root.stat().st_mode) == 0o700


# --- write_atomic ----------------------------------------------------------------------------

def test_write_atomic_writes_the_content_private_and_leaves_no_temp_file(tmp_path: Path):
    path = tmp_path / "status.json"

    write_atomic(path, b"new\n")

    assert path.read_bytes() == b"new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_write_atomic_replaces_existing_content_with_the_mode_asked(tmp_path: Path):
    path = tmp_path / "inventory.yml"
    path.write_bytes(b"old content that is longer\n")

    write_atomic(path, b"new\n", mode=0o640)

    assert path.read_bytes() == b"new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.parametrize("failing", ["replace", "fsync", "interrupt"])
def test_write_atomic_failing_midway_keeps_the_old_content_and_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str):
    path = tmp_path / "status.json"
    path.write_bytes(b"old\n")
    error: BaseException = KeyboardInterrupt() if failing == "interrupt" else \
        OSError(errno.EIO, "Input/output error")

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(os, "fsync" if failing == "fsync" else "replace", fail)
    if failing == "interrupt":
        monkeypatch.setattr(os, "replace", fail)

    with pytest.raises(type(error)):
        write_atomic(path, b"new content\n")

    monkeypatch.undo()
    assert path.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


@pytest.mark.parametrize("failing", ["open", "fsync", "replace"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_write_atomic_on_a_full_disk_names_the_file_and_where_to_free_space(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str, code: int):
    path = tmp_path / "status.json"
    path.write_bytes(b"old\n")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, failing, full)
    with pytest.raises(TransientError) as e:
        write_atomic(path, b"new content\n")

    monkeypatch.undo()
    where = mount_point(tmp_path)
    assert str(e.value) == (f"{path}: cannot write: no space left on device; free space on "
                            f"{where} (df -h {where}), then run again")
    assert e.value.transient and isinstance(e.value.__cause__, OSError)
    assert path.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_mount_point_is_the_nearest_mounted_parent_even_of_a_missing_path(tmp_path: Path):
    where = mount_point(tmp_path / "missing" / "status.json")

    assert os.path.ismount(where)
    assert tmp_path.resolve().is_relative_to(where)
    assert mount_point(Path("/")) == Path("/")
    assert mount_point(Path("/proc/self/status")) == Path("/proc")


def test_write_atomic_into_a_missing_folder_fails_and_creates_nothing(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "status.json", b"x")

    assert list(tmp_path.iterdir()) == []


# --- status.json -----------------------------------------------------------------------------

def test_read_status_without_a_file_is_none(state: StateDir):
    assert read_status(state) is None


def test_written_status_reads_back_with_its_schema(state: StateDir):
    status = {"last_run": {"run_id": "r1", "exit_code": 2},
              "hosts": {"web1": {"status": "drifted", "changes": 1}}}

    write_status(state, status)

    assert read_status(state) == {"schema": 1, **status}
    assert stat.S_IMODE(state.status_file.stat().st_mode) == 0o600


@pytest.mark.parametrize("schema", [2, None, "1"])
def test_read_status_rejects_another_schema_naming_the_file_and_the_fix(
        state: StateDir, schema: object):
    body = json.dumps({"schema": schema, "hosts": {}})
    state.status_file.write_text(body)

    with pytest.raises(StalledError) as e:
        read_status(state)

    assert str(e.value) == (f"{state.status_file}: schema {schema!r}, expected 1; move it "
                            "aside and run a new check")
    assert state.status_file.read_text() == body  # left for a person to look at


def test_read_status_rejects_a_file_that_is_not_json(state: StateDir):
    state.status_file.write_text('{"schema": 1, "hosts": ')

    with pytest.raises(StalledError) as e:
        read_status(state)

    assert str(e.value).startswith(f"{state.status_file}: unreadable (")
    assert str(e.value).endswith("move it aside and run a new check")


@pytest.mark.parametrize("body", ["[1]", '"status"', "null"])
def test_read_status_rejects_json_that_is_not_an_object(state: StateDir, body: str):
    state.status_file.write_text(body)

    with pytest.raises(StalledError, match="not a status object; move it aside"):
        read_status(state)


# --- cycle_lock: another process holds it ----------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from agent.adapters.state import StateDir, cycle_lock
    with cycle_lock(StateDir(Path(sys.argv[1])), "petkeeper check, run holder-run"):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    print("released", flush=True)
""")


@pytest.fixture
def holder(state: StateDir) -> Iterator[Callable[[float], subprocess.Popen[str]]]:
    """Start a process that takes the lock and holds it for SECONDS; wait until it has it."""
    procs: list[subprocess.Popen[str]] = []

    def start(seconds: float) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(state.root), str(seconds)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def test_lock_held_by_another_process_raises_locked_error_naming_its_pid(state, holder):
    proc = holder(30)

    with pytest.raises(LockedError) as e, cycle_lock(state, "petkeeper check, run second"):
        pytest.fail("the second holder must not get the lock")

    assert f"pid {proc.pid}, petkeeper check, run holder-run" in str(e.value)
    assert str(state.lock_file) in str(e.value) and "--wait" in str(e.value)
    assert state.lock_file.read_text().startswith(f"pid {proc.pid}, ")  # holder's record kept


def test_lock_of_a_process_killed_with_sigkill_can_be_taken(state, holder):
    proc = holder(30)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)

    with cycle_lock(state, "petkeeper check, run after-kill"):
        assert state.lock_file.read_text().startswith(f"pid {os.getpid()}, petkeeper check, "
                                                      "run after-kill, since ")


def test_wait_succeeds_when_the_holder_releases_in_time(state, holder):
    proc = holder(0.5)
    start = time.monotonic()

    with cycle_lock(state, "petkeeper check, run waiter", wait=2):
        waited = time.monotonic() - start
        assert f"pid {os.getpid()}, " in state.lock_file.read_text()

    assert waited < 2
    assert proc.wait(timeout=10) == 0


def test_wait_gives_up_after_its_time_when_the_holder_keeps_the_lock(state, holder):
    proc = holder(30)
    start = time.monotonic()

    with pytest.raises(LockedError, match=f"pid {proc.pid}"), cycle_lock(state, "x", wait=0.5):
        pytest.fail("the lock must not be taken")

    assert time.monotonic() - start >= 0.5


# --- cycle_lock: in this process -------------------------------------------------------------

def test_lock_records_the_holder_and_clears_the_record_on_release(state: StateDir):
    with cycle_lock(state, "petkeeper check, run r1"):
        assert state.lock_file.read_text().startswith(f"pid {os.getpid()}, petkeeper check, "
                                                      "run r1, since ")
        assert stat.S_IMODE(state.lock_file.stat().st_mode) == 0o600

    assert state.lock_file.read_text() == ""


def test_lock_on_a_full_disk_names_the_lock_file_and_is_released(
        state: StateDir, monkeypatch: pytest.MonkeyPatch):
    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(TransientError, match=f"^{state.lock_file}: cannot write: no space "
                                             "left on device; free space on "), \
            cycle_lock(state, "petkeeper check, run full"):
        pytest.fail("no cycle may run without its lock record")

    monkeypatch.undo()
    with cycle_lock(state, "petkeeper check, run after"):
        assert "run after" in state.lock_file.read_text()


def test_lock_is_released_when_the_cycle_raises(state: StateDir):
    with pytest.raises(RuntimeError), cycle_lock(state, "first"):
        raise RuntimeError("cycle failed")

    with cycle_lock(state, "second"):
        assert "second" in state.lock_file.read_text()


def test_second_holder_in_the_same_process_is_refused_too(state: StateDir):
    with cycle_lock(state, "outer"), pytest.raises(LockedError, match="outer"), \
            cycle_lock(state, "inner"):
        pytest.fail("flock on a second open file must conflict")


# --- the pause and the running cycle's note (what petkeeper pause reads, without the lock) ---

def test_pause_with_no_cycle_running_writes_the_pause_and_finds_no_cycle(state: StateDir):
    pause, running = pause_applies(state, "alice", "2026-11-25T20:00:00+00:00", "disks", False)

    assert running is None
    assert read_pause(state) == pause == {"by": "alice", "at": "2026-11-25T20:00:00+00:00",
                                          "reason": "disks", "checks": False}


def test_pause_during_a_cycle_names_its_pid_run_and_the_host_being_applied(state: StateDir):
    note_cycle(state, "20261125T200000Z-abc123", "petkeeper run")
    assert running_cycle(state) == {"pid": os.getpid(), "run_id": "20261125T200000Z-abc123",
                                    "command": "petkeeper run", "applying": None}
    note_applying(state, "web1")

    _, running = pause_applies(state, "alice", "2026-11-25T20:00:00+00:00", "disks", False)

    assert running is not None and running["applying"] == "web1"
    note_applying(state, None)
    assert running_cycle(state)["applying"] is None  # type: ignore[index]
    assert stat.S_IMODE(state.cycle_file.stat().st_mode) == 0o600
    clear_cycle_note(state)
    assert running_cycle(state) is None and not state.cycle_file.exists()


def test_a_note_left_by_a_killed_cycle_is_no_running_cycle(state: StateDir):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""\
        import sys
        from pathlib import Path
        from agent.adapters.state import StateDir, note_applying, note_cycle
        state = StateDir(Path(sys.argv[1]))
        note_cycle(state, "killed-run", "petkeeper run")
        note_applying(state, "web1")
    """), str(state.root)], timeout=60)
    assert proc.returncode == 0 and json.loads(state.cycle_file.read_text())["applying"] == "web1"

    assert running_cycle(state) is None  # its process is gone


@pytest.mark.parametrize("body", ["not json", "[]", '{"schema": 9, "pid": 1}',
                                  '{"schema": 1, "pid": "1"}', '{"schema": 1, "pid": 0}'])
def test_an_unreadable_cycle_note_is_no_running_cycle(state: StateDir, body: str):
    state.cycle_file.write_text(body)

    assert running_cycle(state) is None
