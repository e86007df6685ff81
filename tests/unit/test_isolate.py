"""agent.daemon.isolate: a cycle in a fresh child process, its result, its errors, its log
and a stop request. The work functions live at module level: the child imports them."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.daemon.isolate import ChildFailed, run_isolated
from agent.errors import AgentError, ConfigError, FetchError, LockedError, StalledError

ROOT = Path(__file__).resolve().parents[2]
GROWN: list[bytes] = []
PARENT_STATE: dict[str, str] = {}
log = logging.getLogger("agent.tests.isolate")


def never() -> bool:
    return False


def grow(cancelled: Any) -> dict[str, Any]:
    GROWN.append(b"x" * 10_000_000)  # what a cycle leaves in the heap
    return {"pid": os.getpid(), "parent": os.getppid(), "grown": len(GROWN),
            "cancelled": cancelled(), "state": dict(PARENT_STATE),
            "warnings": ",".join(sys.warnoptions)}


ERRORS = {
    "locked": LockedError("another cycle holds the lock"),
    "config": ConfigError(["agent.yml: repo.url: missing; set repo.url", "agent.yml: x: y; z"]),
    "fetch": FetchError("git fetch file:///srv/pets.git failed: timed out"),
}


def fail_with(cancelled: Any, name: str) -> dict[str, Any]:
    raise ERRORS[name]  # raised in the child, as a cycle's own errors are


def divide(cancelled: Any) -> dict[str, Any]:
    log.info("about to divide")
    return {"oops": 1 / 0}


def kill_myself(cancelled: Any) -> dict[str, Any]:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def wait_for_cancel(cancelled: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while not cancelled() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"cancelled": cancelled()}


def take_daemon_signals(cancelled: Any) -> dict[str, Any]:
    for sig in (signal.SIGHUP, signal.SIGUSR1):
        os.kill(os.getpid(), sig)
    time.sleep(0.2)
    return {"alive": True, "cancelled": cancelled()}


def test_the_work_runs_in_a_fresh_process_and_what_it_allocates_stays_there():
    PARENT_STATE["set"] = "by the parent"  # a fork would carry it over; a fresh one cannot
    try:
        result = run_isolated(grow, (), never)
    finally:
        PARENT_STATE.clear()

    assert result == {"pid": result["pid"], "parent": os.getpid(), "grown": 1,
                      "cancelled": False, "state": {}, "warnings": result["warnings"]}
    assert result["pid"] != os.getpid() and GROWN == []
    with pytest.raises(ChildProcessError):
        os.waitpid(result["pid"], os.WNOHANG)  # reaped: no zombie left


@pytest.mark.parametrize(("name", "kind"), [
    ("locked", LockedError), ("config", StalledError), ("fetch", AgentError)])
def test_known_errors_come_back_as_the_kind_the_daemon_acts_on(name: str, kind: type):
    with pytest.raises(kind) as e:
        run_isolated(fail_with, (name,), never)

    assert type(e.value) is kind and str(e.value) == str(ERRORS[name])


def test_an_unexpected_error_is_logged_through_the_parents_handlers_and_is_a_child_failure(
        caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="agent")

    with pytest.raises(ChildFailed, match="unexpected error in a cycle: ZeroDivisionError"):
        run_isolated(divide, (), never)

    records = [r for r in caplog.records if r.process != os.getpid()]
    assert [r.getMessage() for r in records] == [
        "about to divide", "unexpected error in a cycle, this is probably a bug"]
    assert "ZeroDivisionError: division by zero" in (records[1].exc_text or "")  # traceback


def test_the_childs_records_keep_the_parents_levels(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="agent")

    with pytest.raises(ChildFailed):
        run_isolated(divide, (), never)

    assert [r.getMessage() for r in caplog.records if r.process != os.getpid()] == [
        "unexpected error in a cycle, this is probably a bug"]  # not the INFO line


def test_a_child_that_dies_without_a_result_is_a_child_failure_naming_how():
    with pytest.raises(ChildFailed, match=r"process \d+ was killed by SIGKILL without a result"):
        run_isolated(kill_myself, (), never)


def test_a_stop_request_reaches_the_child_as_its_cancel():
    asked = time.monotonic() + 1.0

    assert run_isolated(wait_for_cancel, (), lambda: time.monotonic() > asked) == {
        "cancelled": True}


def test_the_daemons_reload_and_run_now_signals_do_not_end_the_child():
    assert run_isolated(take_daemon_signals, (), never) == {"alive": True, "cancelled": False}


def test_a_cycle_started_from_a_thread_of_a_threaded_process_gives_no_fork_warning(
        tmp_path: Path):
    """Python 3.12+ warns (DeprecationWarning) on fork() in a process with threads: the daemon
    starts cycles from its scheduler's thread, beside others. That warning cannot be an error
    (CPython clears it), so it is printed here, and any other warning is an error."""
    script = tmp_path / "threaded.py"
    script.write_text(textwrap.dedent("""
        import sys, threading, time
        from tests.unit.test_isolate import grow, never
        from agent.daemon.isolate import run_isolated
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()  # e.g. metrics
        out = []
        worker = threading.Thread(target=lambda: out.append(run_isolated(grow, (), never)))
        worker.start()
        worker.join()
        print(out[0]["grown"], out[0]["warnings"], threading.active_count())
    """))

    proc = subprocess.run([sys.executable, "-W", "error", "-W", "always::DeprecationWarning",
                           str(script)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})

    # The child ran with the parent's warning filters too.
    assert (proc.returncode, proc.stdout.split(), proc.stderr) == (
        0, ["1", "error,always::DeprecationWarning", "2"], "")


def test_a_busy_thread_beside_does_not_hold_up_the_result():
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: stop.wait(30))
    spinner.start()
    try:
        assert run_isolated(grow, (), never)["grown"] == 1
    finally:
        stop.set()
        spinner.join()


def test_the_child_does_not_import_petkeeper_from_the_working_directory(tmp_path: Path,
                                                                         monkeypatch):
    """A daemon whose working directory others can write must not run their agent/."""
    planted = tmp_path / "agent" / "daemon"
    planted.mkdir(parents=True)
    for folder in (tmp_path / "agent", planted):
        (folder / "__init__.py").write_text("")
    (planted / "isolate.py").write_text("raise SystemExit('planted code ran')\n")
    monkeypatch.chdir(tmp_path)

    assert run_isolated(grow, (), never)["grown"] == 1
