"""Waiting for the agents: `petkeeper fleet --wait-for COMMIT`, e.g. in a pipeline after merge.

Polls the fleet view (agent.operate.fleet_git) until every host's newest report checked COMMIT
(or a later commit of the source branch) and no apply it decided is still under way; then the
view's own exit code says how the fleet took it (0 clean, 2 drift, 1 a failure). When the
timeout passes first, exit 1 with one line naming each host still behind and why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from agent.adapters.gitrepo import Mirror
from agent.config import Config
from agent.core.redact import redact_text
from agent.core.schema import parse_duration
from agent.errors import AgentError
from agent.operate.fleet import MISSING, UNREADABLE, UNTRUSTED, one_line
from agent.operate.fleet_git import FleetRequest, open_cache, survey_fleet

HEAD = "head"  # --wait-for head: the source branch's head when the wait starts
HISTORY = 500  # commits of the source branch fetched to tell a later commit from another one
EXIT_ERROR = 1


@dataclass(frozen=True)
class WaitRequest:
    commit: str  # a commit id (or prefix) of the source branch, or HEAD
    timeout: float  # seconds
    interval: float  # seconds between two readings of the fleet


def wait_request(commit: str | None, timeout: str | None, interval: str | None
                 ) -> WaitRequest | None:
    """fleet's --wait-for, --timeout and --interval, checked: one error naming the option."""
    if commit is None:
        for name, value in (("--timeout", timeout), ("--interval", interval)):
            if value is not None:
                raise AgentError(f"fleet: {name}: only with --wait-for COMMIT; give the commit "
                                 "to wait for (e.g. --wait-for $GITHUB_SHA)")
        return None
    if not commit or commit.startswith("-"):
        raise AgentError(f"fleet: --wait-for: expected a commit id or {HEAD}, got {commit!r}")
    return WaitRequest(commit, _duration("--timeout", timeout or "30m", "30m"),
                       _duration("--interval", interval or "15s", "15s"))


def _duration(option: str, value: str, example: str) -> float:
    seconds = parse_duration(value)
    if not seconds:
        raise AgentError(f"fleet: {option}: expected a duration like {example}, got {value!r}")
    return seconds


def fleet_view(req: FleetRequest, wait: WaitRequest | None = None,
               progress: Callable[[str], None] | None = None, *,
               sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic,
               now: Callable[[], datetime] | None = None) -> dict[str, Any]:
    """The fleet view (petkeeper fleet); with WAIT, once every host caught up with its
    commit or its timeout passed (then `wait.caught_up` is false and the exit code 1).
    PROGRESS hears one line per reading that leaves hosts behind."""
    if wait is None:
        return survey_fleet(req)
    now = now or (lambda: datetime.now(UTC).replace(microsecond=0))
    started = clock()
    view = survey_fleet(replace(req, now=now()))
    mirror = open_cache(req.config, req.cache)
    target = resolve_target(req.config, mirror, wait.commit, view["source"]["head"])
    later = later_commits(req.config, mirror, target, view["source"]["head"])
    said: dict[str, str] = {}
    tell = progress or (lambda line: None)
    while True:
        behind = hosts_behind(view, target, later)
        waited = clock() - started
        if not behind:
            tell(f"every host checked {target[:12]} (or a later commit) after "
                 f"{_minutes(waited)}")
        if not behind or waited + wait.interval > wait.timeout:
            return finish(view, wait, target, behind, waited)
        if behind != said:  # a line when something moved, not one per reading
            tell(f"waiting for {len(behind)} host(s) to check {target[:12]}: {_listed(behind)}")
            said = behind
        sleep(wait.interval)
        try:
            view = survey_fleet(replace(req, now=now()))
            later = later_commits(req.config, mirror, target, view["source"]["head"])
        except AgentError as e:  # a wait of half an hour outlasts a network blip
            if not e.transient:
                raise
            tell(f"{e}; reading again in {_minutes(wait.interval)}")


def resolve_target(config: Config, mirror: Mirror, commit: str, head: str) -> str:
    """The full id of COMMIT (or HEAD): a commit of the source branch, whose head is HEAD."""
    if commit == HEAD:
        return head
    found = mirror.resolve_commit(commit)
    if found is None or not mirror.is_ancestor(found, head):
        _fetch_history(config, mirror)
        found = mirror.resolve_commit(commit)
    if found is None or not mirror.is_ancestor(found, head):
        raise AgentError(
            f"fleet: --wait-for {commit}: not a commit of {config.repo.branch} in "
            f"{redact_text(config.repo.url)} (among its newest {HISTORY}); give the merged "
            f"commit's id (e.g. $GITHUB_SHA, $CI_COMMIT_SHA, $GIT_COMMIT) or {HEAD}")
    return found


def later_commits(config: Config, mirror: Mirror, target: str, head: str
                  ) -> Callable[[str], bool]:
    """Whether a commit comes after TARGET on the source branch (whose head is HEAD): an
    agent that checked a newer merge has checked TARGET's change too."""
    if head == target:
        return lambda sha: False
    _fetch_history(config, mirror)  # the view's reading fetched the head alone
    return lambda sha: bool(sha) and mirror.has_commit(sha) and mirror.is_ancestor(target, sha)


def _fetch_history(config: Config, mirror: Mirror) -> None:
    branch = config.repo.branch
    mirror.fetch_refs(config.repo.url, [f"+refs/heads/{branch}:refs/remotes/origin/{branch}"],
                      depth=HISTORY, missing=branch)


def hosts_behind(view: Mapping[str, Any], target: str, later: Callable[[str], bool]
                 ) -> dict[str, str]:
    """Host -> why it has not caught up with TARGET: no report of it yet, a report that
    cannot be read or trusted, an older commit checked, or an apply decided and not done."""
    behind = {}
    for row in view["hosts"]:
        why = _behind(row, target, later)
        if why:
            behind[row["host"]] = why
    return behind


def _behind(row: Mapping[str, Any], target: str, later: Callable[[str], bool]) -> str | None:
    status, sha = row["status"], row.get("source_sha")
    if status == MISSING:
        return "no report yet"
    if status in (UNREADABLE, UNTRUSTED):
        return f"its report is {status}"
    if sha != target and not later(str(sha)):
        refused, paused = row.get("source_refused"), row.get("paused") or {}
        return f"checked {str(sha)[:12]}" + (
            f"; its agent refused a newer commit: {refused}" if refused else
            f"; its agent is paused by {paused.get('by')}: {paused.get('reason')}"
            if paused.get("checks") else "")
    plan, done = row.get("plan") or {}, row.get("last_apply") or {}
    if plan.get("action") == "apply" and done.get("plan_id") != plan.get("id"):
        return f"applying plan {plan['id']}"
    return None


def finish(view: dict[str, Any], wait: WaitRequest, target: str, behind: Mapping[str, str],
           waited: float) -> dict[str, Any]:
    """VIEW with what the wait found (`wait`), failed when hosts are still behind."""
    view = {**view, "wait": {"commit": target, "given": wait.commit, "timeout": wait.timeout,
                             "waited_seconds": round(waited, 1), "caught_up": not behind,
                             "behind": [{"host": h, "reason": why} for h, why in behind.items()]}}
    if behind:
        line = (f"fleet: --wait-for {target[:12]}: after {_minutes(waited)}, "
                f"{len(behind)} of {len(view['hosts'])} host(s) have not checked it: " +
                _listed(behind) +
                "; see those agents' logs (journalctl -u petkeeper), or wait longer "
                "(--timeout)")
        view["problems"] = [*view["problems"], line]
        view["exit_code"] = EXIT_ERROR
    return view


def _listed(behind: Mapping[str, str]) -> str:
    """Host names and reasons hold host text (a refused commit's message): one line each."""
    return ", ".join(f"{one_line(h)} ({one_line(why)})" for h, why in behind.items())


def _minutes(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
