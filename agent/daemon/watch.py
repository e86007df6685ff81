"""The daemon's file watch: inotify through inotify_simple, and only here.

inotify_simple is a thin ctypes wrapper with no thread of its own: the daemon's main loop
selects on its file descriptor and reads the events itself (agent.daemon.service). What to
watch is agent.core.watchplan's decision; this module only asks the kernel and maps its events
back to the managed paths they concern.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os

from inotify_simple import INotify, flags

from agent.core.watchplan import WatchPlan

log = logging.getLogger(__name__)

# On a directory, these report the same for every entry in it (inotify(7)).
DIR_EVENTS = (flags.MODIFY | flags.CLOSE_WRITE | flags.ATTRIB | flags.CREATE | flags.DELETE |
              flags.MOVED_FROM | flags.MOVED_TO | flags.DELETE_SELF | flags.MOVE_SELF |
              flags.ONLYDIR | flags.EXCL_UNLINK)
ENTRY_GONE_OR_NEW = flags.CREATE | flags.DELETE | flags.MOVED_FROM | flags.MOVED_TO
WATCH_GONE = flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED | flags.UNMOUNT
OVERFLOW = "(inotify queue overflow: some events were lost)"


class WatchUnavailable(Exception):
    """The kernel gives no inotify instance (fs.inotify.max_user_instances, or no inotify)."""


class FileWatch:
    """Directories watched with inotify, and the managed paths each event concerns."""

    def __init__(self) -> None:
        try:
            self._inotify = INotify(nonblocking=True)
        except OSError as e:
            raise WatchUnavailable(f"inotify: {e.strerror or e}") from e
        self._plan: WatchPlan = {}
        self._wds: dict[str, int] = {}  # directory -> watch descriptor
        self._dirs: dict[int, str] = {}  # and back

    def fileno(self) -> int:
        return int(self._inotify.fileno())

    @property
    def watches(self) -> int:
        return len(self._wds)

    def update(self, plan: WatchPlan) -> str | None:
        """Watch PLAN's directories (and no other); return why some could not be, or None.
        The kernel's limit (fs.inotify.max_user_watches) leaves the rest unwatched."""
        for folder in set(self._wds) - set(plan):
            self._forget(folder, remove=True)
        problem = None
        for folder in sorted(plan):
            if folder in self._wds:
                continue
            try:
                wd = self._inotify.add_watch(folder, DIR_EVENTS)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    problem = ("the kernel's limit of inotify watches is reached "
                               "(fs.inotify.max_user_watches)")
                    break
                if e.errno in (errno.ENOENT, errno.ENOTDIR):  # gone meanwhile: next rebuild
                    continue
                problem = f"{folder}: cannot watch: {e.strerror or e}"
                continue
            self._wds[folder], self._dirs[wd] = wd, folder
        self._plan = {f: plan[f] for f in self._wds}
        return problem

    def read(self) -> tuple[list[str], bool]:
        """The managed paths the pending events concern (without waiting), and whether the
        watch must be rebuilt (a watched directory, or one on the way to a path, came or
        went)."""
        changed: list[str] = []
        rebuild = False
        for event in self._inotify.read(timeout=0):
            if event.mask & flags.Q_OVERFLOW:
                changed.append(OVERFLOW)
                rebuild = True
                continue
            folder = self._dirs.get(event.wd)
            if folder is None:
                continue
            if event.mask & WATCH_GONE:
                changed.extend(p for paths in self._plan.get(folder, {}).values() for p in paths)
                self._forget(folder, remove=False)
                rebuild = True
                continue
            paths = self._plan.get(folder, {}).get(event.name)
            if not paths:
                continue
            changed.extend(sorted(paths))
            if event.mask & ENTRY_GONE_OR_NEW and (
                    event.mask & flags.ISDIR or
                    any(os.path.dirname(p) != folder for p in paths)):
                rebuild = True
        return list(dict.fromkeys(changed)), rebuild  # a write is several events

    def close(self) -> None:
        self._inotify.close()

    def _forget(self, folder: str, remove: bool) -> None:
        wd = self._wds.pop(folder)
        self._dirs.pop(wd, None)
        self._plan.pop(folder, None)
        if remove:
            with contextlib.suppress(OSError):  # the kernel dropped it already (it went)
                self._inotify.rm_watch(wd)
