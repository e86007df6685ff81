"""Drift classes, from a small per-host ledger of applies. Pure functions over plain data.

The ledger (``STATE_DIR/ledger.json``) keeps, per host, the source commit of its last converged
apply and the tasks that kept changing after an apply. A change is:

- ``check_blind``: check mode cannot tell what the task would do;
- ``flapping``: the task still changed right after an apply (not idempotent);
- ``corrective``: the source is unchanged since the last converged apply, so the host moved;
- ``intentional``: the source changed since (or there was no converged apply yet), so the
  change carries out a new commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agent.core.drift import Change

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
    if entry.get("converged_source") == source_sha:
        return CORRECTIVE
    return INTENTIONAL


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
