"""The daemon's file watch, decided without a kernel or a clock: what to watch, and when a
burst of changes makes a check due.

Directories are watched, never the files themselves: an inotify watch on a directory reports
writes, chmod/chown, creation, deletion and renames of every entry in it, so one watch serves
every managed file of that directory, a file an editor replaces by renaming over it stays
watched, and a path that does not exist yet is watched through its nearest existing ancestor
(the entry to look for is the first missing component).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# directory -> entry name in it -> the managed paths an event on that entry concerns
WatchPlan = dict[str, dict[str, set[str]]]


def select_watched(records: Mapping[str, Mapping[str, Any]], enabled: bool | None,
                   excluded: Iterable[str]) -> dict[str, str]:
    """Given each host's managed-paths record, return path -> host for the paths to watch: the
    hosts managed with the local connection only (ENABLED false: none), never a path under
    one of EXCLUDED (Petkeeper's own state directory)."""
    if enabled is False:
        return {}
    roots = [posixpath.normpath(str(e)) for e in excluded]
    watched: dict[str, str] = {}
    for host, record in sorted(records.items()):
        if not record.get("local"):
            continue
        for path in record.get("paths") or ():
            path = posixpath.normpath(str(path))
            if posixpath.isabs(path) and path != "/" and not any(_under(path, r) for r in roots):
                watched.setdefault(path, host)
    return watched


def build_watch_plan(paths: Iterable[str], is_dir: Callable[[str], bool]) -> WatchPlan:
    """Given absolute PATHS, return the directories to watch and the entries to look for in
    each: a path's parent, or for a missing parent its nearest existing ancestor."""
    plan: WatchPlan = {}
    for path in sorted(paths):
        folder, entry = posixpath.split(path)
        while folder != "/" and not is_dir(folder):
            folder, entry = posixpath.split(folder)
        plan.setdefault(folder, {}).setdefault(entry, set()).add(path)
    return plan


def limit_plan(plan: WatchPlan, most: int) -> tuple[WatchPlan, int]:
    """At most MOST directories of PLAN (those covering the most paths first); return them and
    how many paths were left out."""
    if len(plan) <= most:
        return plan, 0
    ranked = sorted(plan, key=lambda d: (-sum(len(p) for p in plan[d].values()), d))
    kept = {d: plan[d] for d in ranked[:most]}
    left = sum(len(p) for d in ranked[most:] for p in plan[d].values())
    return kept, left


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass
class Debounce:
    """When a burst of changes makes a check due: DEBOUNCE seconds after its last event, but
    never later than MAX_DELAY after its first, and never sooner than MIN_INTERVAL after the
    last check it caused. Times are a monotonic clock's, given by the caller."""

    debounce: float
    min_interval: float
    max_delay: float
    first: float | None = None  # the burst's first event
    last: float | None = None  # and its last
    path: str | None = None  # what the burst's first event changed: the trigger named
    events: int = 0
    fired: float | None = None  # when the last check was triggered

    def event(self, now: float, path: str) -> None:
        if self.first is None:
            self.first, self.path = now, path
        self.last = now
        self.events += 1

    def due_at(self) -> float | None:
        """When the pending burst makes a check due (None: no burst)."""
        if self.first is None or self.last is None:
            return None
        at = min(self.last + self.debounce, self.first + self.max_delay)
        return at if self.fired is None else max(at, self.fired + self.min_interval)

    def take(self, now: float) -> tuple[str, int] | None:
        """The trigger's path and its burst's event count when a check is due at NOW (the
        burst is then over), else None."""
        at = self.due_at()
        if at is None or now < at or self.path is None:
            return None
        taken = (self.path, self.events)
        self.drop()
        self.fired = now
        return taken

    def drop(self) -> None:
        """Forget the pending burst (its events were the daemon's own apply)."""
        self.first = self.last = self.path = None
        self.events = 0
