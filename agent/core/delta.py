"""What a pull request changes, per host and per task: the head's check compared with the
base commit's report (pure functions over report data, as the reports hold it)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

INTRODUCED, EXISTING, RESOLVED = "introduced", "existing", "resolved"
BASE_UNKNOWN = "base unknown"  # no report of the host checked the base commit
KINDS = (INTRODUCED, EXISTING, RESOLVED, BASE_UNKNOWN)
FAIL_ON = ("introduced", "drift")  # --fail-on: the changes that make a preview exit 2
ERRORS = ("failed", "unreachable", "unknown")  # a host in one of these: the preview exits 1
EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
TASK_KEYS = ("play", "role", "task", "module")


def compare_changes(head: Sequence[Mapping[str, Any]],
                    base: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """HEAD's changes, each with its kind: `existing` when the base report holds the same task
    with the same diff (the host already drifts there), `introduced` otherwise, or `base
    unknown` when BASE is None; then the base's changes the head no longer has, `resolved`.
    A task that runs twice is matched by its order among its namesakes."""
    if base is None:
        return [{**c, "kind": BASE_UNKNOWN} for c in head]
    left = {_key(c, i): c for c, i in _numbered(base)}
    out = []
    for change, i in _numbered(head):
        before = left.pop(_key(change, i), None)
        same = before is not None and before.get("diff") == change.get("diff") and \
            bool(before.get("check_blind")) == bool(change.get("check_blind"))
        out.append({**change, "kind": EXISTING if same else INTRODUCED})
    return out + [{**c, "kind": RESOLVED} for c in left.values()]


def counts(hosts: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """How many changes of each kind the preview's HOSTS hold."""
    found = dict.fromkeys(KINDS, 0)
    for host in hosts.values():
        for change in host.get("changes") or []:
            found[change["kind"]] += 1
    return found


def preview_exit(hosts: Mapping[str, Mapping[str, Any]], fail_on: str) -> int:
    """1 when a host failed, was unreachable or unknown (or none was checked); 2 when a change
    FAIL_ON names exists (`introduced`: introduced, or on a host whose base is unknown;
    `drift`: any the head would make); 0 otherwise. Check-blind tasks never fail a preview."""
    if not hosts or any(h.get("status") in ERRORS for h in hosts.values()):
        return EXIT_ERROR
    failing = {INTRODUCED, BASE_UNKNOWN} if fail_on == "introduced" else \
        {INTRODUCED, BASE_UNKNOWN, EXISTING}
    return EXIT_CHANGES if any(c["kind"] in failing and not c.get("check_blind")
                               for h in hosts.values() for c in h.get("changes") or []) \
        else EXIT_OK


def _numbered(changes: Iterable[Mapping[str, Any]]) -> Iterable[tuple[Mapping[str, Any], int]]:
    seen: dict[tuple[Any, ...], int] = {}
    for change in changes:
        key = tuple(change.get(k) for k in TASK_KEYS)
        seen[key] = seen.get(key, -1) + 1
        yield change, seen[key]


def _key(change: Mapping[str, Any], index: int) -> tuple[Any, ...]:
    return (*(change.get(k) for k in TASK_KEYS), index)
