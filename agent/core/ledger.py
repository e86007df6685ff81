"""Drift classes, from a small per-host ledger of applies. Pure functions over plain data.

The ledger (``STATE_DIR/ledger.json``) keeps, per host, the source commit of its last converged
apply, its last clean check (source commit and time) and the tasks that kept changing after an
apply. A change is:

- ``check_blind``: check mode cannot tell what the task would do;
- ``flapping``: the task still changed right after an apply (not idempotent);
- ``corrective``: the host was clean at this very source commit (a clean check, or a converged
  apply, whoever converged it), so the host moved: someone or something changed it;
- ``intentional``: the host was never seen clean at this source commit, so the change carries
  out a new commit (or the host was never converged).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agent.core.drift import CLEAN, Change

CHECK_BLIND, FLAPPING, CORRECTIVE, INTENTIONAL = "check_blind", "flapping", "corrective", \
    "intentional"


def task_key(change: Change) -> str:
    return f"{change.play}|{change.role or ''}|{change.task}"


def classify(change: Change, entry: Mapping[str, Any] | None, source_sha: str) -> str:
    """The class of CHANGE on a host whose ledger ENTRY this is, checked at SOURCE_SHA."""
    entry = entry or {}
    if change.check_blind:
        return CHECK_BLIND
    if task_key(change) in (entry.get("flapping") or {}):
        return FLAPPING
    if source_sha in (entry.get("converged_source"), (entry.get("clean") or {}).get("source")):
        return CORRECTIVE
    return INTENTIONAL


def record_check(entry: Mapping[str, Any] | None, source_sha: str, status: str,
                 checked_at: str) -> dict[str, Any]:
    """Return the host's ledger ENTRY after a check of SOURCE_SHA at CHECKED_AT that found it
    STATUS: a clean check is kept as the host's last one."""
    new = dict(entry or {})
    if status == CLEAN:
        new["clean"] = {"source": source_sha, "checked_at": checked_at}
    return new


def record_apply(entry: Mapping[str, Any] | None, source_sha: str, converged: bool,
                 leftovers: Iterable[Change]) -> dict[str, Any]:
    """Return the host's ledger ENTRY after an apply of SOURCE_SHA whose re-check left
    LEFTOVERS (tasks still changing)."""
    new = dict(entry or {})
    flapping = dict(new.get("flapping") or {})
    for change in leftovers:
        if not change.check_blind:
            flapping[task_key(change)] = int(flapping.get(task_key(change), 0)) + 1
    new["flapping"] = {} if converged else flapping
    if converged:
        new["converged_source"] = source_sha
    return new
