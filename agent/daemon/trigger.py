"""What the daemon does with its file watch: which paths, when a change makes a check due,
which changes are its own, and what `petkeeper status` shows of it.

The main thread owns the watch (it selects on its descriptor, reads, rebuilds); the ticker's
thread, which runs cycles, hands over the trigger and says when a cycle starts and ends. A
cycle's applies write managed files: events read during a cycle wait for its end, and those
that fell within its applies are dropped (the daemon's own writes never trigger a check).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

from agent.adapters.state import StateDir, read_managed_paths, write_json
from agent.config import Config
from agent.core.watchplan import Debounce, build_watch_plan, limit_plan, select_watched
from agent.daemon.watch import FileWatch, WatchUnavailable

log = logging.getLogger(__name__)

Window = tuple[float, float]  # an apply's start and end, on the monotonic clock
MARGIN = 1.0  # seconds around an apply whose events are its own


class Triggers:
    """The daemon's file watch and the checks it triggers (see the module's docstring)."""

    def __init__(self, config: Config, state: StateDir) -> None:
        self.config, self.state = config, state
        d = config.daemon
        self.debounce = Debounce(d.watch_debounce, d.watch_min_interval, d.watch_max_delay)
        self.watch: FileWatch | None = None
        self.lock = threading.Lock()
        self.in_cycle = False
        self.ended: list[Window] | None = None  # the cycle that just ended; None: none did
        self.buffered: list[tuple[float, str]] = []
        self.pending: dict[str, Any] | None = None  # a trigger for the ticker's next tick
        self.grace_at: float | None = None  # a held correction is due then
        self.grace_due = False
        self.info: dict[str, Any] = {"on": False, "paths": 0, "watches": 0,
                                     "last_trigger": None, "problem": None}
        self.warned: str | None = None
        self._switch()
        self.rebuild()

    # -- the main thread ----------------------------------------------------------------

    def fds(self) -> list[int]:
        return [self.watch.fileno()] if self.watch is not None else []

    def timeout(self, now: float) -> float:
        """Seconds until a burst or a grace period ends (1 h when none is pending)."""
        dues = [t for t in (self.debounce.due_at(), self.grace_at) if t is not None]
        return max(0.0, min(dues) - now) if dues else 3600.0

    def turn(self, now: float, busy: bool) -> bool:
        """Read the events, settle an ended cycle's; True when a check is due (poke the
        ticker)."""
        if self.watch is None:
            return False
        changed, rebuild = self.watch.read()
        with self.lock:
            if self.in_cycle:
                self.buffered.extend((now, p) for p in changed)
                changed = []
            ended, self.ended = self.ended, None
        for path in changed:
            self.debounce.event(now, path)
        if ended is not None:
            self._settle(ended)
            rebuild = True
        if rebuild:
            self.rebuild()
        return not busy and self._fire(now)

    def rebuild(self) -> None:
        """Watch what the hosts' last checks recorded as managed."""
        if self.watch is None:
            self._save()
            return
        records = read_managed_paths(self.state)
        watched = select_watched(records, self.config.daemon.watch, [str(self.state.root)])
        plan, left = limit_plan(build_watch_plan(watched, os.path.isdir),
                                self.config.daemon.watch_max)
        problem = self.watch.update(plan)
        if left:
            problem = (f"daemon.watch_max ({self.config.daemon.watch_max} folders) is reached: "
                       f"{left} managed path(s) are not watched")
        # Off by default where nothing can be watched (hosts reached over SSH only): said so.
        self.info.update(on=bool(watched) or self.config.daemon.watch is True,
                         paths=len(watched), watches=self.watch.watches)
        if problem:
            self._problem("limit", f"{problem}; they are found by the scheduled check only")
        elif not watched:
            self._nothing_watched(records)
        else:
            self.info["problem"] = self.warned = None
        self._save()

    def _nothing_watched(self, records: dict[str, dict[str, Any]]) -> None:
        if not records:
            self.info["problem"], self.warned = ("nothing recorded yet: each check records the "
                                                 "paths its playbooks manage"), None
        elif not any(r.get("local") for r in records.values()):
            text = ("no host is managed with the local connection (hosts reached over SSH "
                    "cannot be watched: the scheduled check finds their drift)")
            if self.config.daemon.watch:
                self._problem("remote", f"daemon.watch is on, but {text}")
            else:
                self.info["problem"], self.warned = text, None
        else:
            self.info["problem"], self.warned = ("the playbooks manage no file on this host "
                                                 "that the watch can follow"), None

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: its settings, and the watch turned on or off."""
        d = config.daemon
        self.config = config
        self.debounce.debounce, self.debounce.min_interval, self.debounce.max_delay = (
            d.watch_debounce, d.watch_min_interval, d.watch_max_delay)
        self._switch()
        self.rebuild()

    def _switch(self) -> None:
        """Open the inotify instance when the watch may be on, close it when it is off."""
        if self.config.daemon.watch is False:
            if self.watch is not None:
                self.watch.close()
            self.watch = None
            self.info.update(on=False, paths=0, watches=0, problem="daemon.watch is off")
        elif self.watch is None:
            try:
                self.watch = FileWatch()
            except WatchUnavailable as e:
                self._problem("unavailable", f"{e}; only the scheduled check "
                              "(daemon.check_interval) finds drift")

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
        self.info.update(on=False, problem="the daemon stopped")
        self._save()

    def _fire(self, now: float) -> bool:
        grace = self.grace_at is not None and now >= self.grace_at
        taken = self.debounce.take(now)
        with self.lock:
            if grace:
                self.grace_at, self.grace_due = None, True
            if taken is not None:
                path, events = taken
                self.pending = {"path": path, "events": events,
                                "at": datetime.now(UTC).isoformat(timespec="seconds")}
                self.info["last_trigger"] = dict(self.pending)
        if taken is not None:
            log.info("file watch: %s changed (%d event(s)): a check is due", taken[0], taken[1])
            self._save()
        return grace or taken is not None

    def _settle(self, windows: list[Window]) -> None:
        """Events read during the cycle that ended: its applies' are dropped, others count."""
        with self.lock:
            buffered, self.buffered = self.buffered, []
        own = 0
        for t, path in buffered:
            if any(start - MARGIN <= t <= end + MARGIN for start, end in windows):
                own += 1
            else:
                self.debounce.event(t, path)
        if own:
            log.debug("file watch: %d event(s) of the daemon's own apply ignored", own)

    def _problem(self, kind: str, text: str) -> None:
        self.info["problem"] = text
        if self.warned != kind:  # once, not at every rebuild
            log.warning("file watch: %s", text)
        self.warned = kind

    def _save(self) -> None:
        try:
            write_json(self.state.watch_file, {**self.info, "pid": os.getpid(),
                                               "updated": _now()})
        except OSError as e:
            log.warning("file watch: %s not written: %s", self.state.watch_file, e)

    # -- the ticker's thread --------------------------------------------------------------

    def take(self) -> tuple[dict[str, Any] | None, bool]:
        """The trigger pending (or None), and whether a held correction's grace is over."""
        with self.lock:
            pending, grace = self.pending, self.grace_due
            self.pending, self.grace_due = None, False
        return pending, grace

    def cycle_started(self) -> None:
        with self.lock:
            self.in_cycle = True

    def cycle_ended(self, windows: list[Window] | None, held: bool) -> None:
        """The cycle ended; WINDOWS are its applies (None: unknown, its events are dropped);
        HELD: it held a correction for daemon.watch_grace."""
        with self.lock:
            self.in_cycle = False
            self.ended = [(float("-inf"), float("inf"))] if windows is None else list(windows)
            if held and self.grace_at is None:
                self.grace_at = time.monotonic() + self.config.daemon.watch_grace


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
