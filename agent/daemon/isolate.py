"""Run one daemon cycle in a fresh Python child process, so the daemon's memory stays what it was.

A cycle parses YAML and JSON, runs Ansible through ansible-runner and builds reports: megabytes
allocated and freed. The heap keeps part of it, and a long-lived daemon that ran cycles in
process crept by about 3.7 KiB a cycle (bench/soak.py), with no live Python object behind it.
So each cycle runs in a child that exits after it; the parent only waits, forwards a stop, and
reads the result.

The child is a new interpreter (``python -c``, started by subprocess's fork+exec), not a fork()
of the daemon: the daemon has threads (the scheduler's; a metrics server's may join it; the file
watch has none, the main loop reads it), Python 3.12+ warns on fork() in a threaded process,
and such a child can deadlock on a lock another thread held at the fork. A fresh interpreter
costs about 0.3 s of CPU a cycle, and keeps nothing between cycles: no fork server or tracker
process beside the daemon (bench/isolate_start.py compares the ways; docs/daemon.md says why
this one).

The job crosses as a pickle on the child's stdin (the work function by reference, its
arguments, the parent's sys.path and log levels); the child's log records and its result come
back as JSON lines on a pipe, and the parent logs the records through its own handlers. Errors
cross back by kind (locked, stalled, transient), the kinds the daemon acts on; anything else,
and a child that dies without a result, is a ChildFailed.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import resource
import select
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from typing import Any

from agent.errors import AgentError, LockedError, StalledError

log = logging.getLogger(__name__)

Cancelled = Callable[[], bool]
Work = Callable[..., dict[str, Any]]  # WORK(cancelled, *args) -> a JSON-able result
KINDS: dict[str, type[AgentError]] = {"locked": LockedError, "stalled": StalledError,
                                     "transient": AgentError}
POLL = 0.5  # seconds between looks at the stop request while the child runs
START_TIMEOUT = 60.0  # seconds for the child to read its job
# Isolated mode (-I): no PYTHON* variables, no user site, and no working directory on sys.path
# while the child imports this module (a folder others can write must not shadow Petkeeper);
# then the parent's sys.path comes with the job.
CHILD = "from agent.daemon.isolate import child_main; child_main()"
RECORD_KEYS = ("name", "levelno", "levelname", "pathname", "lineno", "funcName", "created",
               "msecs", "threadName", "processName")


class ChildFailed(Exception):
    """The child raised an unexpected error (it logged the traceback) or died without a result."""


def run_isolated(work: Work, args: tuple[Any, ...], stop: Cancelled) -> dict[str, Any]:
    """Run WORK(cancelled, *ARGS) in a fresh child process and return its JSON-able result.
    WORK and ARGS must pickle (WORK by reference: a module-level function). When STOP() turns
    true, the child is sent SIGTERM, which WORK's cancelled() then reports."""
    job = pickle.dumps({"sys_path": sys.path, "levels": _log_levels(),
                        "job": pickle.dumps((work, args))})
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", *(f"-W{w}" for w in sys.warnoptions), "-c", CHILD,
             str(write_fd)],
            stdin=subprocess.PIPE, pass_fds=(write_fd,))
    finally:
        os.close(write_fd)
    log.debug("cycle runs in process %d", proc.pid)
    try:
        assert proc.stdin is not None
        proc.stdin.write(job)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the child died at once: it has no result, said below
    payload = _read_until_closed(read_fd, proc.pid, stop)
    status = proc.wait()
    if payload is None:
        raise ChildFailed(f"the cycle's process {proc.pid} {_ended(status)} without a result; "
                          "see the log above")
    log.info("cycle process %d: %.2fs of CPU of its own (Ansible's not counted)", proc.pid,
             payload.get("cpu", 0.0))
    if "error" in payload:
        kind, message = payload["error"]
        if kind in KINDS:
            raise KINDS[kind](message)
        raise ChildFailed(message)
    return dict(payload["result"])


def child_main() -> None:
    """In the child: read the job, take SIGTERM as a cancel, run it, write the result, exit."""
    code = 70  # EX_SOFTWARE, if even writing the result failed
    asked: list[bool] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: asked.append(True))
    for sig in (signal.SIGHUP, signal.SIGUSR1):  # the daemon's: not for this process
        signal.signal(sig, signal.SIG_IGN)
    out = os.fdopen(int(sys.argv[1]), "w", encoding="utf-8")
    try:
        data = pickle.load(sys.stdin.buffer)
        _detach_stdin()
        sys.path[:] = data["sys_path"]
        _send_logs_to(out, data["levels"])
        work, args = pickle.loads(data["job"])
        payload = _run(work, args, lambda: bool(asked))
        usage = resource.getrusage(resource.RUSAGE_SELF)  # this process's, imports included
        payload["cpu"] = usage.ru_utime + usage.ru_stime
        out.write(json.dumps(payload) + "\n")
        out.flush()
        code = 0
    except BaseException:  # the job could not even start (or the pipe broke): say why
        sys.stderr.write(traceback.format_exc())
    finally:
        sys.stderr.flush()
        os._exit(code)


def _run(work: Work, args: tuple[Any, ...], cancelled: Cancelled) -> dict[str, Any]:
    try:
        return {"result": work(cancelled, *args)}
    except LockedError as e:
        return {"error": ["locked", str(e)]}
    except StalledError as e:
        return {"error": ["stalled", str(e)]}
    except AgentError as e:
        return {"error": ["transient", str(e)]}
    except Exception as e:
        log.exception("unexpected error in a cycle, this is probably a bug")
        return {"error": ["bug", f"unexpected error in a cycle: {type(e).__name__}"]}


def _detach_stdin() -> None:
    """The job is read: the child's stdin becomes /dev/null, as a daemon's is."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


class _PipeHandler(logging.Handler):
    """Sends each log record to the parent as a JSON line, its message and traceback formatted."""

    def __init__(self, out: Any) -> None:
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = {k: getattr(record, k) for k in RECORD_KEYS}
            data["msg"] = record.getMessage()
            if record.exc_info:
                data["exc_text"] = logging.Formatter().formatException(record.exc_info)
            self.out.write(json.dumps({"log": data}) + "\n")
            self.out.flush()
        except Exception:
            self.handleError(record)


def _log_levels() -> dict[str, int]:
    """The levels the parent set on its loggers (the root's under "")."""
    loggers = logging.Logger.manager.loggerDict.items()
    levels = {name: lg.level for name, lg in loggers
              if isinstance(lg, logging.Logger) and lg.level != logging.NOTSET}
    return {"": logging.getLogger().level, **levels}


def _send_logs_to(out: Any, levels: dict[str, int]) -> None:
    root = logging.getLogger()
    root.handlers[:] = [_PipeHandler(out)]
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)


def _read_until_closed(fd: int, pid: int, stop: Cancelled) -> dict[str, Any] | None:
    """Relay the child's log records and return its result once it closes the pipe (None if it
    sent none), forwarding a stop request once."""
    buffer, payload = b"", None
    forwarded = False
    try:
        while True:
            if stop() and not forwarded:
                log.info("stopping the cycle in process %d", pid)
                os.kill(pid, signal.SIGTERM)
                forwarded = True
            ready, _, _ = select.select([fd], [], [], POLL)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            lines = (buffer + chunk).split(b"\n")
            buffer = lines.pop()
            for line in lines:
                payload = _relay(line, pid) or payload
            if not chunk:
                return payload
    finally:
        os.close(fd)


def _relay(line: bytes, pid: int) -> dict[str, Any] | None:
    """Log a record line through the parent's handlers; return a result line's payload."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if "log" not in message:
        return dict(message)
    record = logging.makeLogRecord({**message["log"], "process": pid})
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)
    return None


def _ended(status: int) -> str:
    if status < 0:
        return f"was killed by {signal.Signals(-status).name}"
    return f"exited with {status}"
