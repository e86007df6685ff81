"""Where log lines go and how they look: the one module that configures logging handlers.

On a terminal or in a file each line carries its time (a foreground daemon, or -v). When
stderr is the systemd journal (``JOURNAL_STREAM`` names it, see systemd.exec(5)) the journal
adds the time itself, and every line starts with its priority as sd-daemon(3) describes
(``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug), so that
``journalctl -u petkeeper -p warning`` shows exactly the warnings and errors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
              logging.DEBUG: 7}
LEVELS = {0: logging.WARNING, 1: logging.INFO}  # by -v count; more: debug


def journal_stream(stream: IO[Any], env: Mapping[str, str]) -> bool:
    """Whether STREAM is the journal: JOURNAL_STREAM holds its device and inode."""
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        return False


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels in between take the next one up)."""
    return next((p for level, p in sorted(PRIORITIES.items()) if levelno <= level), 2)


class JournalFormatter(logging.Formatter):
    """Each line, a traceback's too, starts with its priority; no time (the journal has it),
    no name (the unit's). Warnings and errors say so in words too, for `--output cat`."""

    def format(self, record: logging.LogRecord) -> str:
        word = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        prefix = f"<{priority(record.levelno)}>"
        lines = (word + super().format(record)).splitlines() or [""]
        return "\n".join(prefix + line for line in lines)


class PlainFormatter(logging.Formatter):
    """``[time ]petkeeper: level: message``, level in lower case like the error lines."""

    def __init__(self, timestamps: bool) -> None:
        super().__init__(("%(asctime)s " if timestamps else "") +
                         "petkeeper: %(levelname_lower)s: %(message)s",
                         datefmt="%Y-%m-%dT%H:%M:%SZ")
        self.converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        record.levelname_lower = record.levelname.lower()
        return super().format(record)


class Handler(logging.StreamHandler[Any]):
    """A stream handler that can step around a progress line on the same terminal."""

    interlude: Callable[[], contextlib.AbstractContextManager[None]] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        with self.interlude() if self.interlude else contextlib.nullcontext():
            super().emit(record)


def setup_logging(verbosity: int, timestamps: bool = False, stream: IO[Any] | None = None,
                  env: Mapping[str, str] | None = None) -> Handler:
    """Send Petkeeper's log to STREAM (stderr) at the level VERBOSITY (-v count) asks for;
    return the handler. Other libraries' records pass at warning and above."""
    stream = stream or sys.stderr
    handler = Handler(stream)
    if journal_stream(stream, os.environ if env is None else env):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(PlainFormatter(timestamps))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("agent").setLevel(LEVELS.get(verbosity, logging.DEBUG))
    return handler
