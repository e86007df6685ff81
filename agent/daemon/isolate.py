"""Run one daemon cycle in a forked child process, so the daemon's memory stays what it was.

A cycle parses YAML and JSON, runs Ansible through ansible-runner and builds reports: megabytes
allocated and freed. The heap keeps part of it, and a long-lived daemon that ran cycles in
process crept by about 3.7 KiB a cycle (bench/soak.py), with no live Python object behind it.
chef-client's daemon forks each run for the same reason (`client_fork`). The child runs the
cycle and sends back a small JSON result; the parent only waits, forwards a stop, and reads it.

Errors cross back by kind (locked, stalled, transient), the kinds the daemon acts on; anything
else, and a child that dies without a result, is a ChildFailed.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import select
import signal
import sys
from collections.abc import Callable
from typing import Any

from agent.errors import AgentError, LockedError, StalledError

log = logging.getLogger(__name__)

Cancelled = Callable[[], bool]
KINDS: dict[str, type[AgentError]] = {"locked": LockedError, "stalled": StalledError,
                                     "transient": AgentError}
POLL = 0.5  # seconds between looks at the stop request while the child runs


class ChildFailed(Exception):
    """The child raised an unexpected error (it logged the traceback) or died without a result."""


def run_forked(work: Callable[[Cancelled], dict[str, Any]], stop: Cancelled) -> dict[str, Any]:
    """Run WORK(cancelled) in a forked child and return its JSON-able result. When STOP() turns
    true, the child is sent SIGTERM, which WORK's cancelled() then reports."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(work, stop, write_fd)  # never returns
    os.close(write_fd)
    log.debug("cycle runs in process %d", pid)
    data = _read_until_closed(read_fd, pid, stop)
    _, status = os.waitpid(pid, 0)
    try:
        payload = json.loads(data)
    except ValueError:
        raise ChildFailed(f"the cycle's process {pid} {_ended(status)} without a result; see "
                          "the log above") from None
    log.info("cycle process %d: %.2fs of CPU of its own (Ansible's not counted)", pid,
             payload.get("cpu", 0.0))
    if "error" in payload:
        kind, message = payload["error"]
        if kind in KINDS:
            raise KINDS[kind](message)
        raise ChildFailed(message)
    return dict(payload["result"])


def _child(work: Callable[[Cancelled], dict[str, Any]], stop: Cancelled, write_fd: int) -> None:
    """In the child: take SIGTERM as a cancel, run WORK, write the result, _exit."""
    code = 70  # EX_SOFTWARE, if even writing the result failed
    try:
        asked = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: asked.append(True))
        for sig in (signal.SIGHUP, signal.SIGUSR1):  # the daemon's: not for this process
            signal.signal(sig, signal.SIG_IGN)
        try:
            payload: dict[str, Any] = {"result": work(lambda: bool(asked) or stop())}
        except LockedError as e:
            payload = {"error": ["locked", str(e)]}
        except StalledError as e:
            payload = {"error": ["stalled", str(e)]}
        except AgentError as e:
            payload = {"error": ["transient", str(e)]}
        except Exception as e:
            log.exception("unexpected error in a cycle, this is probably a bug")
            payload = {"error": ["bug", f"unexpected error in a cycle: {type(e).__name__}"]}
        usage = resource.getrusage(resource.RUSAGE_SELF)  # this process's since the fork
        payload["cpu"] = usage.ru_utime + usage.ru_stime
        with os.fdopen(write_fd, "w") as pipe:
            json.dump(payload, pipe)
        code = 0
    finally:
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(code)


def _read_until_closed(fd: int, pid: int, stop: Cancelled) -> bytes:
    """Read the child's result until it closes the pipe, forwarding a stop request once."""
    chunks: list[bytes] = []
    forwarded = False
    try:
        while True:
            if stop() and not forwarded:
                log.info("stopping the cycle in process %d", pid)
                os.kill(pid, signal.SIGTERM)
                forwarded = True
            ready, _, _ = select.select([fd], [], [], POLL)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
    finally:
        os.close(fd)


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with {os.waitstatus_to_exitcode(status)}"
