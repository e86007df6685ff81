"""Turn ansible-runner events into a drift report: pure functions over plain data.

Reads only structured event data (``event_data["res"]``, stats), never printed output.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from agent.core.accelerator import plain_words
from agent.core.diffs import clean_text, render_diff
from agent.core.hostkeys import parse_host_key_refusal
from agent.core.undo import irreversible_reason
from agent.core.wording import task_title

CLEAN, DRIFTED, FAILED = "clean", "drifted", "failed"
UNREACHABLE, UNKNOWN = "unreachable", "unknown"
STATUSES = (CLEAN, DRIFTED, FAILED, UNREACHABLE, UNKNOWN)
# Modules that run arbitrary commands: check mode cannot predict them unless
# creates/removes lets the module decide.
COMMAND_MODULES = frozenset({"command", "shell", "raw", "script", "expect"})
HIDDEN = "(hidden: no_log)"
MAX_MESSAGE = 500


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
    # Where the task is written, repo-relative "FILE:LINE" ("" outside the repo), for CI
    # annotations; not part of the fingerprint: moving a task does not void an approval.
    task_path: str = ""
    # For `petkeeper undo` (not part of the fingerprint): the files the change touches, and
    # why an undo could not put it back ('' when it could).
    paths: tuple[str, ...] = ()
    irreversible: str = ""
    # A task that failed in check mode after an earlier change (agent.core.drift's partial
    # checks): Ansible's error, and which earlier change it may wait for. Empty otherwise.
    error: str = ""
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        data = {**asdict(self), "tags": list(self.tags), "paths": list(self.paths)}
        return {k: v for k, v in data.items() if v or k not in ONLY_WHEN_SET}


FINGERPRINTED = ("play", "role", "task", "module", "diff", "check_blind")
# In reports only when not empty; never fingerprinted.
ONLY_WHEN_SET = ("error", "message", "paths", "irreversible")


@dataclass(frozen=True)
class HostReport:
    name: str
    status: str
    changes: tuple[Change, ...] = ()
    fingerprint: str = ""
    message: str | None = None  # why a host failed, was unreachable, is unknown or partial
    classes: tuple[str, ...] = ()  # each change's drift class (agent.core.ledger), when known
    partial: bool = False  # a task failed in check mode after a change: the rest was unchecked

    def as_dict(self) -> dict[str, Any]:
        changes = [c.as_dict() for c in self.changes]
        for change, cls in zip(changes, self.classes, strict=False):
            change["class"] = cls
        return {"status": self.status, "fingerprint": self.fingerprint, "message": self.message,
                "partial": self.partial, "changes": changes}


@dataclass(frozen=True)
class _Failure:
    """A task that failed, not ignored; AFTER is the last change the same run would have made
    to the host before it (None: nothing changed before it, so the failure is real)."""

    where: Mapping[str, Any]
    error: str
    after: Change | None


@dataclass
class _HostTally:
    changes: list[Change] = field(default_factory=list)
    seen_changed: int = 0
    hidden: list[dict[str, Any]] = field(default_factory=list)  # no_log results, unknown change
    unreachable: str | None = None
    processed: bool = False
    stats_changed: int = 0
    last_change: dict[str, Change] = field(default_factory=dict)  # per run
    item_errors: dict[str, list[str]] = field(default_factory=dict)  # per task: failed items
    # Per run, its last failure until the run's stats tell whether a rescue caught it.
    pending: dict[str, _Failure] = field(default_factory=dict)
    failures: list[_Failure] = field(default_factory=list)  # failures the stats count


Facts = Mapping[tuple[str, str], Mapping[str, Any]]  # (task_uuid, host) -> the plugin's record


def build_host_reports(events: Iterable[Mapping[str, Any]], expected: Iterable[str],
                       tree_root: str = "", facts: Iterable[Mapping[str, Any]] = ()
                       ) -> dict[str, HostReport]:
    """Given the events of one or more check runs, the facts the petkeeper_facts callback
    recorded, and the hosts the runs were meant to cover, return a report per host.

    A host is UNKNOWN, never CLEAN, when it has no result or any run ended without stats."""
    tallies: dict[str, _HostTally] = {name: _HostTally() for name in expected}
    known: Facts = {(str(f.get("task_uuid")), str(f.get("host"))): f for f in facts
                    if f.get("event") != "paths"}  # the file watch's, not drift's
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
            _read_stats(data, tallies, run)
        elif kind in ("runner_on_ok", "runner_on_skipped", "runner_on_failed",
                      "runner_on_unreachable", "runner_item_on_failed"):
            host = data.get("host")
            if host:
                tally = tallies.setdefault(host, _HostTally())
                _read_result(kind, data, tally, run, conditional, known, tree_root)
    complete = bool(finished) and started <= finished
    return {name: _conclude(name, t, complete) for name, t in sorted(tallies.items())}


def fingerprint(status: str, changes: Iterable[Change], partial: bool = False) -> str:
    """Return a stable sha256 of what would change: same drift, same fingerprint."""
    # A check-blind failure's error and message stay out: Ansible's words differ between
    # versions and may hold what differs between runs, and an approval must survive both.
    body: dict[str, Any] = {"status": status, "changes": [
        {k: getattr(c, k) for k in FINGERPRINTED} for c in changes]}
    if partial:  # only then: the fingerprints of every other report stay what they were
        body["partial"] = True
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def short_module(action: str) -> str:
    return action.rsplit(".", 1)[-1]


def _read_stats(data: Mapping[str, Any], tallies: dict[str, _HostTally], run: str) -> None:
    for host in data.get("processed") or {}:
        tallies.setdefault(host, _HostTally()).processed = True
    for host, n in (data.get("changed") or {}).items():
        tallies.setdefault(host, _HostTally()).stats_changed += int(n)
    for host, n in (data.get("failures") or {}).items():
        tally = tallies.setdefault(host, _HostTally())
        if int(n):
            failure = tally.pending.get(run) or _Failure({}, "a task failed", None)
            _count_failure(tally, failure)
    for tally in tallies.values():
        tally.pending.pop(run, None)  # a failure the stats do not count was rescued


def _count_failure(tally: _HostTally, failure: _Failure) -> None:
    """A failure counts: after a change of the same run it is check-blind, not a failure."""
    tally.failures.append(failure)
    if failure.after is not None:
        tally.changes.append(Change(**failure.where, diff="", check_blind=True,
                                    error=failure.error, message=_waits_for(failure.after)))


def _read_result(kind: str, data: Mapping[str, Any], tally: _HostTally, run: str,
                 conditional: Mapping[str, bool], known: Facts, tree_root: str) -> None:
    res = data.get("res") or {}
    action = str(data.get("resolved_action") or data.get("task_action") or "")
    module = short_module(action)
    fact = known.get((str(data.get("task_uuid", "")), str(data.get("host", ""))))
    where: dict[str, Any] = dict(
        play=str(data.get("play") or ""), role=data.get("role") or None,
        task=str(data.get("task") or module), module=action,
        tags=tuple(sorted(set(fact.get("tags") or ()))) if fact else (),
        task_path=repo_task_path(str(data.get("task_path") or ""), tree_root))
    paths = tuple(str(p) for p in (fact.get("paths") or ())) if fact else ()
    undo: dict[str, Any] = dict(paths=paths, irreversible=irreversible_reason(
        action, paths, str(fact.get("state") or "") if fact else ""))
    if kind == "runner_on_unreachable":
        msg = plain_words(str(res.get("msg") or ""))  # Mitogen's words, as plain ones
        tally.unreachable = parse_host_key_refusal(msg) or \
            _message({**res, "msg": msg} if msg else res, "unreachable")
    elif kind == "runner_item_on_failed":  # before its task's runner_on_failed
        tally.item_errors.setdefault(str(data.get("task_uuid", "")), []).append(
            _item_message(res))
    elif kind == "runner_on_failed":
        # A loop's own message ("One or more items failed") says nothing: its items' do.
        items = tally.item_errors.pop(str(data.get("task_uuid", "")), [])
        error = _capped("; ".join(items)) if items and "censored" not in res else \
            _message(res, "failed")
        if not data.get("ignore_errors"):
            tally.pending[run] = _Failure(where, clean_text(error, tree_root),
                                          tally.last_change.get(run))
    elif kind == "runner_on_skipped":
        if _skip_is_blind(fact, conditional.get(str(data.get("task_uuid", "")), False)):
            tally.changes.append(Change(**where, **undo, diff="", check_blind=True))
    elif "censored" in res:
        if fact is None:
            tally.hidden.append(where)
        elif fact.get("changed"):
            tally.seen_changed += 1
            _add_change(tally, run, Change(**where, **undo, diff=HIDDEN))
    elif res.get("changed") or _any_item_changed(res):
        tally.seen_changed += 1
        # creates/removes let a command module decide in check mode; the callback says whether
        # they were set (results stopped carrying the module's arguments in ansible-core 2.21).
        blind = module in COMMAND_MODULES and not (fact and fact.get("predicted"))
        _add_change(tally, run, Change(**where, **undo,
                                       diff=_result_diff(res, tree_root), check_blind=blind))


def _skip_is_blind(fact: Mapping[str, Any] | None, is_conditional: bool) -> bool:
    """Whether a skipped task is one whose outcome check mode cannot know: a module that skips
    itself in check mode, or a `when:` that names ansible_check_mode. A false `when:` is the
    play's own choice, an empty loop has nothing to do, and a task that is `changed_when:
    false` can change nothing: none of them is drift."""
    if fact is None:
        return not is_conditional
    if fact.get("reason") in ("no_items", "never_changes"):
        return False
    if fact.get("reason") == "check_mode":
        return True
    return not fact.get("conditional")


def _add_change(tally: _HostTally, run: str, change: Change) -> None:
    tally.changes.append(change)
    if not change.check_blind:
        tally.last_change[run] = change


def _conclude(name: str, t: _HostTally, complete: bool) -> HostReport:
    for failure in t.pending.values():  # runs that ended without stats
        _count_failure(t, failure)
    changes = t.changes + _hidden_changes(t)
    unexplained = complete and t.stats_changed > t.seen_changed
    hard = [f for f in t.failures if f.after is None]
    blind = [f for f in t.failures if f.after is not None]
    message = None
    if t.unreachable:
        status, message = UNREACHABLE, t.unreachable
    elif hard:
        status = FAILED
        message = f"task {hard[0].where['task']!r}: {hard[0].error}" if hard[0].where \
            else hard[0].error
    elif not complete or not t.processed:
        status = UNKNOWN
        message = ("the run ended before this host's results were complete" if not complete
                   else "no play ran on this host: it matches no play's hosts pattern")
    elif unexplained or any(not c.check_blind for c in changes):
        status = DRIFTED
    else:
        status = CLEAN
    if blind and status == DRIFTED:
        message = "; ".join(_stopped_at(f) for f in blind)
    partial = bool(blind)
    return HostReport(name, status, tuple(changes), fingerprint(status, changes, partial),
                      message, partial=partial)


def _waits_for(change: Change) -> str:
    return (f"failed in check mode after '{task_title(change.role, change.task)}' would "
            "change this host; may pass once that change is applied")


def _stopped_at(failure: _Failure) -> str:
    title = task_title(failure.where.get("role"), str(failure.where.get("task")))
    return (f"partial check: '{title}' failed in check mode after an earlier change; Ansible "
            "stops a host at its first failure, so the tasks after it were not checked")


def _hidden_changes(t: _HostTally) -> list[Change]:
    """Without the callback's facts, no_log results hide even `changed`: attribute the stats'
    changed count to them, check-blind where it cannot tell which of them changed."""
    unexplained = t.stats_changed - t.seen_changed
    if not t.hidden or unexplained <= 0:
        return []
    blind = unexplained != len(t.hidden)
    return [Change(**where, diff=HIDDEN, check_blind=blind,
                   irreversible=irreversible_reason(where["module"], ()))
            for where in t.hidden]


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
    return _capped(str(res.get("msg") or res.get("stderr") or default).strip())


def _item_message(item: Mapping[str, Any]) -> str:
    """A failed loop item's words, after its label."""
    text = HIDDEN if "censored" in item else \
        str(item.get("msg") or item.get("stderr") or "failed").strip()
    label = item.get("_ansible_item_label", item.get("item"))
    return f"{label}: {text}" if isinstance(label, str | int) else text


def _capped(msg: str) -> str:
    return msg if len(msg) <= MAX_MESSAGE else msg[:MAX_MESSAGE] + "..."


def repo_task_path(task_path: str, tree_root: str) -> str:
    """Ansible's "/abs/FILE:LINE" as "FILE:LINE" relative to TREE_ROOT; "" for a task outside
    it (a Galaxy role, say): no controller path reaches a report."""
    root = tree_root.rstrip("/") + "/"
    if tree_root and task_path.startswith(root):
        return task_path[len(root):]
    return ""


def mask_reports(reports: Mapping[str, HostReport],
                 mask: Callable[[str], str]) -> dict[str, HostReport]:
    """REPORTS with MASK applied to everything they show; fingerprints follow the masked text,
    so a changed secret still changes the fingerprint (through its new mask)."""
    masked = {}
    for name, r in reports.items():
        changes = tuple(replace(c, play=mask(c.play), task=mask(c.task), diff=mask(c.diff),
                                error=mask(c.error), message=mask(c.message))
                        for c in r.changes)
        masked[name] = replace(r, changes=changes, message=r.message and mask(r.message),
                               fingerprint=fingerprint(r.status, changes, r.partial))
    return masked
