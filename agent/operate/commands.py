"""What the commands between cycles do: approve, ack, history, status, pause, resume, adopt. One
function each, which the command line calls and prints the result of; the work itself is the
cycle's."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.adapters.snapshots import read_holds, read_undo_plans
from agent.adapters.state import (
    StateDir,
    adopt_repo,
    claim_repo,
    clear_pause,
    cycle_lock,
    pause_applies,
    read_json,
    read_pause,
    read_status,
)
from agent.config import Config
from agent.core.approval import Approval, expiry
from agent.core.redact import redact_text
from agent.core.schema import parse_duration
from agent.cycle.apply import approval_record
from agent.cycle.decide import approve_plans
from agent.cycle.record import layout_of, publish, report_history
from agent.cycle.source import fetch_source, open_mirror
from agent.cycle.steps import fetch_step, run_cycle, target_step
from agent.cycle.trust import acknowledge, rewind_hold
from agent.cycle.undo import (
    approve_undo,
    check_undo_approval,
    find_apply,
    make_undo_plan,
    release_host,
)
from agent.errors import AgentError

SHOWN_HOSTS = 10  # hosts named when a host is not found


@dataclass(frozen=True)
class Approved:
    approvals: list[Approval]
    push_error: str | None  # the approvals are recorded; their commit waits to be pushed


def approve(config: Config, plan_ids: Sequence[str], approver: str, expires: str | None,
            comment: str, now: datetime | None = None, partial: bool = False,
            force_conflicts: bool = False) -> Approved:
    """APPROVER (root) approves each plan of PLAN_IDS (undo plans too): one approval and one
    record each, all or none; EXPIRES is a duration (default approvals.expires). A partial
    plan needs PARTIAL (the approver knows its check stopped early); FORCE_CONFLICTS lets an
    undo overwrite files changed again since its apply."""
    if os.geteuid() != 0:
        raise AgentError("approve: only root may approve a change to a pet; run it with sudo "
                         "(your login name is recorded)")
    state = StateDir(config.state_dir)
    now = now or datetime.now(UTC).replace(microsecond=0)
    until = approval_expiry(config, now, expires)
    with cycle_lock(state, f"petkeeper approve {' '.join(plan_ids)}"):
        mirror = open_mirror(config, state)
        undos = read_undo_plans(state)
        if force_conflicts and not any(pid in undos for pid in plan_ids):
            raise AgentError("approve: --force-conflicts is for undo plans (petkeeper undo "
                             "shows them); none of these is one")
        for pid in plan_ids:  # all or none: refused before anything is written
            if pid in undos:
                check_undo_approval(undos[pid], force_conflicts)
        others = [pid for pid in plan_ids if pid not in undos]
        approvals = approve_plans(config, state, mirror, others, approver, now, until,
                                  comment, partial) if others else []
        approvals += [approve_undo(state, undos[pid], approver, now, until, comment,
                                   force_conflicts) for pid in plan_ids if pid in undos]
        result = publish(mirror, config, [a.host for a in approvals],
                         lambda base: [approval_record(a) for a in approvals])
    return Approved(approvals, result.error)


def approval_expiry(config: Config, now: datetime, expires: str | None) -> datetime:
    """When an approval given at NOW expires: --expires EXPIRES from now, or
    approvals.expires."""
    try:
        return expiry(now, expires) if expires else \
            now + timedelta(seconds=config.approvals.expires)
    except ValueError as e:
        raise AgentError(f"approve: --expires: {e}; write e.g. --expires 4h") from None


def acknowledge_head(config: Config, commit: str, by: str, comment: str) -> dict[str, Any]:
    """BY (root) lets applies resume from COMMIT, a rewound source head."""
    if os.geteuid() != 0:
        raise AgentError("ack: only root may let applies resume on a pet; run it with sudo "
                         "(your login name is recorded)")
    state = StateDir(config.state_dir)
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    with cycle_lock(state, f"petkeeper ack {commit}"):
        return acknowledge(state, open_mirror(config, state), commit, by, now, comment)


def read_history(config: Config, host: str | None = None, since: str | None = None,
                 count: int | None = None, now: datetime | None = None
                 ) -> list[dict[str, Any]]:
    """What the reports say, newest first: HOST's entries (AgentError when the reports never
    saw HOST), those since SINCE (a duration back from NOW, or an ISO 8601 date), the newest
    COUNT. Offline, what the mirror has."""
    oldest = parse_since(since, now or datetime.now(UTC)) if since else None
    if count is not None and count < 1:
        raise AgentError(f"history: -n: expected a number of entries >= 1, got {count}")
    state = StateDir(config.state_dir)
    mirror = open_mirror(config, state)
    entries = report_history(mirror, config, host, oldest.isoformat() if oldest else None)
    if host and not entries:
        known = sorted({str(e["trailers"].get("Petkeeper-Host")) for e in
                        report_history(mirror, config)} - {"None"})
        if host not in known:
            raise AgentError(
                f"history: host {host!r} has no report on {layout_of(config).branch(host)} of "
                f"{redact_text(config.reports_url)}; "
                + (f"hosts it has: {_first(known)}" if known else "it has no report yet"))
    return select_history(entries, oldest, count)


def select_history(entries: Sequence[Mapping[str, Any]], oldest: datetime | None,
                   count: int | None) -> list[dict[str, Any]]:
    """ENTRIES (newest first) from OLDEST on, the newest COUNT of them."""
    kept = [dict(e) for e in entries
            if oldest is None or datetime.fromisoformat(str(e["date"])) >= oldest]
    return kept[:count] if count else kept


def parse_since(value: str, now: datetime, command: str = "history") -> datetime:
    """COMMAND's --since VALUE: a duration back from NOW ("7d", "12h"), or an ISO 8601 date
    or time (UTC unless it has an offset, as the reports' times are)."""
    seconds = parse_duration(value)
    if seconds is not None:
        return now - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise AgentError(f"{command}: --since: expected a duration like 7d or an ISO 8601 date "
                         f"like 2026-11-01, got {value!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def read_state_status(config: Config) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The last cycle's status (None: none ran) and the pause in force (None: not paused)."""
    state = StateDir(config.state_dir)
    claim_repo(state, config.repo.url, config.path, write=False)
    status = read_status(state)
    if status is not None and (watch := read_json(state.watch_file, None)) is not None:
        status = {**status, "watch": watch}  # the daemon's file watch, as it last wrote it
    return status, read_pause(state)


@dataclass(frozen=True)
class Paused:
    pause: dict[str, Any]  # the pause now in force
    previous: dict[str, Any] | None  # the pause it replaces (by, at, reason, checks)
    running: dict[str, Any] | None  # the cycle running meanwhile (see pause_applies)


def pause(config: Config, by: str, reason: str, checks: bool) -> Paused:
    """BY pauses applies (and the daemon's checks, with CHECKS) for REASON; a pause in force
    is replaced, and said so."""
    state = StateDir(config.state_dir)
    claim_repo(state, config.repo.url, config.path, write=False)
    previous = read_pause(state)
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    new, running = pause_applies(state, by, now, reason, checks)
    return Paused(new, previous, running)


def resume(config: Config) -> dict[str, Any] | None:
    """Lift the pause; return what it was (None: there was none)."""
    state = StateDir(config.state_dir)
    claim_repo(state, config.repo.url, config.path, write=False)
    return clear_pause(state)


def adopt(config: Config, by: str) -> dict[str, Any]:
    """BY (root) moves the state directory to CONFIG's repo.url (the Git server moved): the new
    URL must answer with repo.branch; the history, approvals and the no-rollback mark stay.
    Return what was and what is: url, before, head, and hold (why applies wait, or None)."""
    if os.geteuid() != 0:
        raise AgentError("adopt: only root may move a pet's state to another repository; run "
                         "it with sudo (your login name is recorded)")
    state = StateDir(config.state_dir)
    with cycle_lock(state, "petkeeper adopt"):
        mirror = open_mirror(config, state, claim=False)
        fetch_source(config, mirror)  # it must answer, with the branch, before anything
        head = mirror.resolve(config.repo.branch)
        assert head is not None  # fetch_source raised otherwise
        before = adopt_repo(state, config.repo.url, config.path, by)
        hold = rewind_hold(state, mirror, head)
    return {"url": redact_text(config.repo.url), "before": before["url"] if before else None,
            "head": head, "hold": hold}


def plan_undo(config: Config, aid: str | None, host: str | None,
              now: datetime | None = None) -> dict[str, Any]:
    """The undo plan of apply AID (or HOST's last apply): the files to restore with their
    diffs, the conflicts, the irreversible changes; saved for approve and run."""
    state = StateDir(config.state_dir)
    claim_repo(state, config.repo.url, config.path, write=False)
    manifest = find_apply(state, aid, host)
    made: list[dict[str, Any]] = []

    def plan_step(c: Any) -> None:
        made.append(make_undo_plan(c.config, c.source, c.targets, c.state, manifest, c.run_id,
                                   c.clock(), c.cancel))

    run_cycle(replace(config, limit=str(manifest["host"])), (fetch_step, target_step,
                                                             plan_step),
              "undo", now=now)
    return made[0]


def release(config: Config, host: str) -> dict[str, Any]:
    """Lift the hold an undo put on HOST: its corrections may be applied again."""
    state = StateDir(config.state_dir)
    claim_repo(state, config.repo.url, config.path, write=False)
    with cycle_lock(state, f"petkeeper release {host}"):
        return release_host(state, host)


def holds(config: Config) -> dict[str, Any]:
    """The hosts undos hold: host -> apply_id, by, at."""
    return read_holds(StateDir(config.state_dir))


def _first(names: list[str]) -> str:
    more = len(names) - SHOWN_HOSTS
    return ", ".join(names[:SHOWN_HOSTS]) + (f", ... ({more} more)" if more > 0 else "")
