"""Progress of long work on a terminal, read from the runner's events as they happen.

Ansible does not know in advance how many tasks a run has, so the line says what runs now
(mode, playbook, host, play, task), how many task results came so far, and the time elapsed:
``check site.yml | pet2 | Keep the pets | Write the motd | 12 tasks done | 0:34``.
The face decides where the line goes (stderr, when it is a terminal) and whether at all.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

from agent.adapters.runner import PlaybookRun
from agent.operate.output import terminal_safe

RESULTS = ("runner_on_ok", "runner_on_failed", "runner_on_skipped", "runner_on_unreachable")
REFRESH = 1.0  # seconds between redraws without events: the elapsed time keeps moving


@dataclass
class Progress:
    """What a run is doing now, as far as its events tell."""

    mode: str = ""  # check or apply
    playbook: str = ""
    host: str = ""
    play: str = ""
    task: str = ""
    done: int = 0  # task results so far (a task on two hosts counts twice)

    def update(self, mode: str, playbook: str, event: Mapping[str, Any]) -> None:
        """Take one runner EVENT of a MODE run of PLAYBOOK into account."""
        kind, data = event.get("event"), event.get("event_data") or {}
        self.mode, self.playbook = mode, playbook
        if kind == "playbook_on_play_start":
            self.play, self.task = str(data.get("play") or data.get("name") or ""), ""
        elif kind == "playbook_on_task_start":
            self.task = str(data.get("task") or data.get("name") or "")
        elif kind == "runner_on_start":
            self.host = str(data.get("host") or "")
        elif kind in RESULTS:
            self.host = str(data.get("host") or self.host)
            self.done += 1


def render_progress(p: Progress, elapsed: float, width: int = 80) -> str:
    """Given a run's progress and the seconds since the work began, return one line that fits
    in WIDTH columns: what runs (shortened first), then the count and the time, which always
    show. Control characters from the repo are shown as escapes, never sent."""
    minutes, seconds = divmod(int(elapsed), 60)
    tail = f" | {p.done} task{'s' if p.done != 1 else ''} done | {minutes}:{seconds:02d}"
    head = terminal_safe(" | ".join(part for part in (f"{p.mode} {p.playbook}".strip(), p.host,
                                                      p.play, p.task) if part))
    room = max(width - 1 - len(tail), 4)
    return (head if len(head) <= room else head[:room - 3] + "...") + tail


class ProgressLine:
    """One line on a terminal STREAM that updates in place: on each event, and every second
    for the elapsed time. Call it with the runner's (run, event); close() erases it."""

    def __init__(self, stream: IO[str], clock: Callable[[], float] = time.monotonic,
                 refresh: float = REFRESH) -> None:
        self.stream, self.clock, self.refresh = stream, clock, refresh
        self.started = clock()
        self.progress = Progress()
        self.lock = threading.Lock()
        self.shown = False
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._tick, name="progress", daemon=True)
        self.thread.start()

    def __call__(self, run: PlaybookRun, event: Mapping[str, Any]) -> None:
        with self.lock:
            self.progress.update("check" if run.check else "apply", run.playbook, event)
            self._draw()

    @contextlib.contextmanager
    def interlude(self) -> Iterator[None]:
        """Within: the line is erased, so that a log line can be written; then drawn again."""
        with self.lock:
            shown = self.shown
            self._erase()
            try:
                yield
            finally:
                if shown:
                    self._draw()

    def close(self) -> None:
        """Stop refreshing and erase the line: what is printed next starts on a clean line."""
        self.stopped.set()
        self.thread.join()
        with self.lock:
            self._erase()

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tick(self) -> None:
        while not self.stopped.wait(self.refresh):
            with self.lock:
                if self.shown:
                    self._draw()

    def _draw(self) -> None:
        text = render_progress(self.progress, self.clock() - self.started, _width(self.stream))
        self._write(f"\r{text}\x1b[K")
        self.shown = True

    def _erase(self) -> None:
        if self.shown:
            self._write("\r\x1b[K")
            self.shown = False

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed terminal: no progress
            self.stream.write(text)
            self.stream.flush()


def _width(stream: IO[str]) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        return 80
