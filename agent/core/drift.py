"""Turn ansible-runner events into a drift report: pure functions over plain data.

Reads only structured event data (``event_data["res"]``, stats), never printed output.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from agent.core.hostkeys import parse_host_key_refusal

CLEAN, DRIFTED, FAILED = "clean", "drifted", "failed"
UNREACHABLE, UNKNOWN = "unreachable", "unknown"
STATUSES = (CLEAN, DRIFTED, FAILED, UNREACHABLE, UNKNOWN)
# Modules that run arbitrary commands: check mode cannot predict them unless
# creates/removes lets the module decide.
COMMAND_MODULES = frozenset({"command", "shell", "raw", "script", "expect"})
HIDDEN = "(hidden: no_log)"
MAX_MESSAGE = 500
GENERATED_PATH = re.compile(r"\S*/\.ansible/tmp/\S*")


@dataclass(frozen=True)
class Change:
    """One task that would change a host (or whose outcome check mode cannot know)."""

    play: str
    role: str | None
    task: str
    module: str
    diff: str
    check_blind: bool = False
    tags: tuple[str, ...] = ()  # the task's tags, for the policy; not part of the fingerprint


FINGERPRINTED = ("play", "role", "task", "module", "diff", "check_blind")


@dataclass(frozen=True)
class HostReport:
    name: str
    status: str
    changes: tuple[Change, ...] = ()
    fingerprint: str = ""
    message: str | None = None  # why a host failed, was unreachable or is unknown
    classes: tuple[str, ...] = ()  # each change's drift class (agent.core.ledger), when known

    def as_dict(self) -> dict[str, Any]:
        changes = [{**asdict(c), "tags": list(c.tags)} for c in self.changes]
        for change, cls in zip(changes, self.classes, strict=False):
            change["class"] = cls
        return {"status": self.status, "fingerprint": self.fingerprint, "message": self.message,
                "changes": changes}


@dataclass
class _HostTally:
    changes: list[Change] = field(default_factory=list)
    seen_changed: int = 0
    hidden: list[dict[str, Any]] = field(default_factory=list)  # no_log results, unknown change
    failed: str | None = None
    unreachable: str | None = None
    processed: bool = False
    stats_changed: int = 0
    stats_failures: int = 0


Facts = Mapping[tuple[str, str], Mapping[str, Any]]  # (task_uuid, host) -> the plugin's record


def build_host_reports(events: Iterable[Mapping[str, Any]], expected: Iterable[str],
                       tree_root: str = "", facts: Iterable[Mapping[str, Any]] = ()
                       ) -> dict[str, HostReport]:
    """Given the events of one or more check runs, the facts the petkeeper_facts callback
    recorded, and the hosts the runs were meant to cover, return a report per host.

    A host is UNKNOWN, never CLEAN, when it has no result or any run ended without stats."""
    tallies: dict[str, _HostTally] = {name: _HostTally() for name in expected}
    known: Facts = {(str(f.get("task_uuid")), str(f.get("host"))): f for f in facts}
    conditional: dict[str, bool] = {}
    started, finished = set(), set()
    for event in events:
        kind = event.get("event")
        data = event.get("event_data") or {}
        run = str(event.get("runner_ident", ""))
        if kind == "playbook_on_start":
            started.add(run)
        elif kind == "playbook_on_task_start":
            conditional[data.get("task_uuid", "")] = bool(data.get("is_conditional"))
        elif kind == "playbook_on_stats":
            finished.add(run)
            _read_stats(data, tallies)
        elif kind in ("runner_on_ok", "runner_on_skipped", "runner_on_failed",
                      "runner_on_unreachable"):
            host = data.get("host")
            if host:
                tally = tallies.setdefault(host, _HostTally())
                _read_result(kind, data, tally, conditional, known, tree_root)
    complete = bool(finished) and started <= finished
    return {name: _conclude(name, t, complete) for name, t in sorted(tallies.items())}


def fingerprint(status: str, changes: Iterable[Change]) -> str:
    """Return a stable sha256 of what would change: same drift, same fingerprint."""
    canonical = json.dumps({"status": status, "changes": [
        {k: getattr(c, k) for k in FINGERPRINTED} for c in changes]},
        sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def render_diff(diff: Any, tree_root: str = "") -> str:
    """Given Ansible's diff (a dict, or a list of them), return unified diff text."""
    parts = diff if isinstance(diff, list) else [diff]
    out = []
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        if "prepared" in part:
            out.append(str(part["prepared"]).rstrip("\n") + "\n")
            continue
        if "before" not in part and "after" not in part:
            continue
        before, after = _as_text(part.get("before", "")), _as_text(part.get("after", ""))
        if before == after:
            continue
        a = _clean_path(str(part.get("before_header", "before")), tree_root)
        b = _clean_path(str(part.get("after_header", "after")), tree_root)
        lines = difflib.unified_diff(before.splitlines(keepends=True),
                                     after.splitlines(keepends=True), f"before: {a}",
                                     f"after: {b}")
        out.append("".join(_ensure_newline(line) for line in lines))
    return "".join(out)


def short_module(action: str) -> str:
    return action.rsplit(".", 1)[-1]


def _read_stats(data: Mapping[str, Any], tallies: dict[str, _HostTally]) -> None:
    for host in data.get("processed") or {}:
        tallies.setdefault(host, _HostTally()).processed = True
    for host, n in (data.get("changed") or {}).items():
        tallies.setdefault(host, _HostTally()).stats_changed += int(n)
    for host, n in (data.get("failures") or {}).items():
        tallies.setdefault(host, _HostTally()).stats_failures += int(n)


def _read_result(kind: str, data: Mapping[str, Any], tally: _HostTally,
                 conditional: Mapping[str, bool], known: Facts, tree_root: str) -> None:
    res = data.get("res") or {}
    action = str(data.get("resolved_action") or data.get("task_action") or "")
    module = short_module(action)
    fact = known.get((str(data.get("task_uuid", "")), str(data.get("host", ""))))
    where: dict[str, Any] = dict(
        play=str(data.get("play") or ""), role=data.get("role") or None,
        task=str(data.get("task") or module), module=action,
        tags=tuple(sorted(fact.get("tags") or ())) if fact else ())
    if kind == "runner_on_unreachable":
        tally.unreachable = parse_host_key_refusal(str(res.get("msg") or "")) or \
            _message(res, "unreachable")
    elif kind == "runner_on_failed":
        if not data.get("ignore_errors"):
            tally.failed = f"task {where['task']!r}: {_message(res, 'failed')}"
    elif kind == "runner_on_skipped":
        # A module that cannot predict its outcome in check mode skips itself: check-blind.
        # A false `when:` is the play's own choice, not drift.
        skipped_by_when = fact["conditional"] if fact else \
            conditional.get(str(data.get("task_uuid", "")), False)
        if not skipped_by_when:
            tally.changes.append(Change(**where, diff="", check_blind=True))
    elif "censored" in res:
        if fact is None:
            tally.hidden.append(where)
        elif fact.get("changed"):
            tally.seen_changed += 1
            tally.changes.append(Change(**where, diff=HIDDEN))
    elif res.get("changed") or _any_item_changed(res):
        tally.seen_changed += 1
        # creates/removes let a command module decide in check mode; the callback says whether
        # they were set (results stopped carrying the module's arguments in ansible-core 2.21).
        blind = module in COMMAND_MODULES and not (fact and fact.get("predicted"))
        tally.changes.append(Change(**where, diff=_result_diff(res, tree_root),
                                    check_blind=blind))


def _conclude(name: str, t: _HostTally, complete: bool) -> HostReport:
    changes = t.changes + _hidden_changes(t)
    unexplained = complete and t.stats_changed > t.seen_changed
    if t.unreachable:
        status, message = UNREACHABLE, t.unreachable
    elif (t.stats_failures if complete else t.failed):
        status, message = FAILED, t.failed or "a task failed"
    elif not complete or not t.processed:
        status = UNKNOWN
        message = ("the run ended before this host's results were complete" if not complete
                   else "no play ran on this host: it matches no play's hosts pattern")
    elif unexplained or any(not c.check_blind for c in changes):
        status, message = DRIFTED, None
    else:
        status, message = CLEAN, None
    return HostReport(name, status, tuple(changes), fingerprint(status, changes), message)


def _hidden_changes(t: _HostTally) -> list[Change]:
    """Without the callback's facts, no_log results hide even `changed`: attribute the stats'
    changed count to them, check-blind where it cannot tell which of them changed."""
    unexplained = t.stats_changed - t.seen_changed
    if not t.hidden or unexplained <= 0:
        return []
    blind = unexplained != len(t.hidden)
    return [Change(**where, diff=HIDDEN, check_blind=blind) for where in t.hidden]


def _any_item_changed(res: Mapping[str, Any]) -> bool:
    return any(isinstance(r, Mapping) and r.get("changed") for r in res.get("results") or [])


def _result_diff(res: Mapping[str, Any], tree_root: str) -> str:
    if "diff" in res:
        return render_diff(res["diff"], tree_root)
    items = [r for r in res.get("results") or [] if isinstance(r, Mapping) and r.get("changed")]
    return "".join(render_diff(r.get("diff"), tree_root) for r in items if "diff" in r)


def _message(res: Mapping[str, Any], default: str) -> str:
    if "censored" in res:
        return HIDDEN
    msg = str(res.get("msg") or res.get("stderr") or default).strip()
    return msg if len(msg) <= MAX_MESSAGE else msg[:MAX_MESSAGE] + "..."


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"


def _clean_path(header: str, tree_root: str) -> str:
    if tree_root and header.startswith(tree_root.rstrip("/") + "/"):
        return header[len(tree_root.rstrip("/")) + 1:]
    return GENERATED_PATH.sub("(generated)", header)


def _ensure_newline(line: str) -> str:
    return line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"


def mask_reports(reports: Mapping[str, HostReport],
                 mask: Callable[[str], str]) -> dict[str, HostReport]:
    """REPORTS with MASK applied to everything they show; fingerprints follow the masked text,
    so a changed secret still changes the fingerprint (through its new mask)."""
    masked = {}
    for name, r in reports.items():
        changes = tuple(replace(c, play=mask(c.play), task=mask(c.task), diff=mask(c.diff))
                        for c in r.changes)
        masked[name] = replace(r, changes=changes, message=r.message and mask(r.message),
                               fingerprint=fingerprint(r.status, changes))
    return masked
