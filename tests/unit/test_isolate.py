"""agent.daemon.isolate: a cycle in a forked child, its result, its errors and a stop request."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import pytest

from agent.daemon.isolate import ChildFailed, run_forked
from agent.errors import AgentError, ConfigError, FetchError, LockedError, StalledError

GROWN: list[bytes] = []


def test_the_work_runs_in_another_process_and_what_it_allocates_stays_there():
    def work(cancelled: Any) -> dict[str, Any]:
        GROWN.append(b"x" * 10_000_000)  # what a cycle leaves in the heap
        return {"pid": os.getpid(), "grown": len(GROWN), "cancelled": cancelled()}

    result = run_forked(work, lambda: False)

    assert result == {"pid": result["pid"], "grown": 1, "cancelled": False}
    assert result["pid"] != os.getpid() and GROWN == []
    with pytest.raises(ChildProcessError):
        os.waitpid(result["pid"], os.WNOHANG)  # reaped: no zombie left


@pytest.mark.parametrize(("error", "kind"), [
    (LockedError("another cycle holds the lock"), LockedError),
    (ConfigError(["agent.yml: repo.url: missing; set repo.url", "agent.yml: x: y; z"]),
     StalledError),
    (FetchError("git fetch file:///srv/pets.git failed: timed out"), AgentError),
])
def test_known_errors_come_back_as_the_kind_the_daemon_acts_on(error: Exception, kind: type):
    def work(cancelled: Any) -> dict[str, Any]:
        raise error

    with pytest.raises(kind) as e:
        run_forked(work, lambda: False)

    assert type(e.value) is kind and str(e.value) == str(error)


def test_an_unexpected_error_is_logged_by_the_child_and_is_a_child_failure(capfd):
    def work(cancelled: Any) -> dict[str, Any]:
        return {"oops": 1 / 0}

    stderr = logging.StreamHandler(os.fdopen(os.dup(2), "w"))  # the daemon logs to stderr
    logging.getLogger().addHandler(stderr)
    try:
        with pytest.raises(ChildFailed, match="unexpected error in a cycle: ZeroDivisionError"):
            run_forked(work, lambda: False)
    finally:
        logging.getLogger().removeHandler(stderr)
        stderr.stream.close()
    err = capfd.readouterr().err
    assert "unexpected error in a cycle, this is probably a bug" in err
    assert "ZeroDivisionError: division by zero" in err  # with its traceback


def test_a_child_that_dies_without_a_result_is_a_child_failure_naming_how():
    def work(cancelled: Any) -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGKILL)
        return {}

    with pytest.raises(ChildFailed, match=r"process \d+ was killed by SIGKILL without a result"):
        run_forked(work, lambda: False)


def test_a_stop_request_reaches_the_child_as_its_cancel():
    asked = time.monotonic() + 1.0

    def work(cancelled: Any) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while not cancelled() and time.monotonic() < deadline:
            time.sleep(0.05)
        return {"cancelled": cancelled()}

    assert run_forked(work, lambda: time.monotonic() > asked) == {"cancelled": True}


def test_the_daemons_reload_and_run_now_signals_do_not_end_the_child():
    def work(cancelled: Any) -> dict[str, Any]:
        for sig in (signal.SIGHUP, signal.SIGUSR1):
            os.kill(os.getpid(), sig)
        time.sleep(0.2)
        return {"alive": True, "cancelled": cancelled()}

    assert run_forked(work, lambda: False) == {"alive": True, "cancelled": False}
