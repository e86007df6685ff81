"""What a cycle has to tell: events, each sent once per transition (pure).

A cycle's record (``Cycle.as_json()``) and what was told before (the memory) give the events
of this cycle and the new memory. The same drift (host, fingerprint and the plan's source
commit, which an approval commit does not move) is told once, not every cycle; a heartbeat
never is. Applies are told as they happen. The memory lives in the state directory, written
together with the outbox (agent.operate.tell).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.core.drift import CLEAN, DRIFTED, FAILED, UNKNOWN, UNREACHABLE

TYPE_PREFIX = "org.petkeeper."
FAILED_APPLIES = ("not converged", "interrupted", "apply failed", "conflict")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 and C1 controls, but \t and \n


@dataclass(frozen=True)
class Event:
    type: str  # one of agent.config.EVENTS, or "test"
    subject: str | None  # the host, or None for the agent's own events
    data: Mapping[str, Any]


def find_events(record: Mapping[str, Any], memory: Mapping[str, Any],
                error: str | None = None, stalled: bool = False
                ) -> tuple[list[Event], dict[str, Any]]:
    """Given a cycle's RECORD (Cycle.as_json(), with "report_commits" per host), the MEMORY of
    what was told, and the cycle's ERROR (STALLED when a person must act), return the events
    to tell and the new memory."""
    told = {"hosts": dict(memory.get("hosts") or {}), "agent": dict(memory.get("agent") or {})}
    events = _agent_events(record, told["agent"], error, stalled)
    plans = record.get("plans") or {}
    commits = record.get("report_commits") or {}
    for host, report in sorted((record.get("hosts") or {}).items()):
        seen = dict(told["hosts"].get(host) or {})
        seen["report_commit"] = commits.get(host) or seen.get("report_commit")
        summary = host_summary(host, report, plans.get(host), record, seen["report_commit"])
        events += _host_events(report, plans.get(host), seen, summary)
        told["hosts"][host] = seen
    for apply in record.get("applies") or []:
        event = _apply_event(apply, told["hosts"].get(apply["host"]) or {}, record)
        if event is not None:
            events.append(event)
    return events, told


def _agent_events(record: Mapping[str, Any], told: dict[str, Any], error: str | None,
                  stalled: bool) -> list[Event]:
    """The agent's own events, updating TOLD. What a cycle did not reach (the source, when
    it stopped before; a stall, when it failed for a passing reason) stays as it was."""
    rejected = record.get("source_rejected")
    held = record.get("applies_held")
    keys: dict[str, tuple[str | None, str | None]] = {}
    if record.get("source_sha"):
        keys["source.rejected"] = (rejected, rejected)
        keys["source.rewound"] = ("rewound" if held and not rejected else None, held)
    if stalled or not error:
        keys["agent.stalled"] = (error, error)
    events = []
    for kind, (key, message) in keys.items():
        if key is not None and told.get(kind) != key:
            events.append(Event(kind, None, {"message": message, "run_id": record.get("run_id"),
                                             "source_sha": record.get("source_sha")}))
        told[kind] = key
    return events


def _host_events(report: Mapping[str, Any], plan: Mapping[str, Any] | None,
                 seen: dict[str, Any], summary: dict[str, Any]) -> list[Event]:
    """The events of one host, updating SEEN, its memory."""
    host, status = summary["host"], report["status"]
    events = []
    plan_source = (plan or {}).get("source_sha") or summary["source_sha"]
    if status == DRIFTED:
        key = f"{report['fingerprint']}@{plan_source}"
        if seen.get("drift") != key:
            events.append(Event("drift.detected", host, summary))
        seen["drift"] = key
    elif status == CLEAN:
        if seen.get("drift"):
            events.append(Event("drift.resolved", host, summary))
        seen["drift"] = None
    if status in (FAILED, UNKNOWN, UNREACHABLE):
        key = status if status == UNREACHABLE else f"{status}@{plan_source}"
        if seen.get("health") != key:
            kind = "host.unreachable" if status == UNREACHABLE else "host.failed"
            events.append(Event(kind, host, summary))
        seen["health"] = key
    else:
        seen["health"] = None
    # Unknown while the host cannot be checked; no plan: the cycle stopped before deciding.
    if plan is not None and status in (CLEAN, DRIFTED):
        pending = plan["plan_id"] if pending_approval(plan) else None
        if pending and seen.get("pending") != pending:
            events.append(Event("approval.pending", host, summary))
        seen["pending"] = pending
    return events


def pending_approval(plan: Mapping[str, Any]) -> bool:
    """PLAN waits for a person's approval (not for a window, a pause, or nothing)."""
    return plan.get("action") == "wait" and plan.get("mode") == "approve" and \
        not plan.get("approval")


def _apply_event(apply: Mapping[str, Any], seen: Mapping[str, Any],
                 record: Mapping[str, Any]) -> Event | None:
    tests = apply.get("tests")
    failed = apply["result"] in FAILED_APPLIES or (tests is not None and not tests["passed"])
    if not failed and apply["result"] not in ("converged", "undone"):
        return None  # the drift changed since it was approved: nothing was applied
    host = apply["host"]
    report = (record.get("hosts") or {}).get(host) or {"status": apply["after_status"],
                                                         "fingerprint": "", "changes": []}
    summary = host_summary(host, report, (record.get("plans") or {}).get(host), record,
                           seen.get("report_commit"))
    summary["apply"] = {k: apply.get(k) for k in (
        "plan_id", "result", "approved_by", "before_status", "after_status", "message",
        "started", "finished", "apply_id", "undo_of")}
    summary["apply"]["leftovers"] = list(apply.get("leftovers") or ())
    summary["apply"]["tests_passed"] = None if tests is None else bool(tests["passed"])
    return Event("apply.failed" if failed else "apply.succeeded", host, summary)


def host_summary(host: str, report: Mapping[str, Any], plan: Mapping[str, Any] | None,
                 record: Mapping[str, Any], report_commit: str | None) -> dict[str, Any]:
    """The host's report summary an event carries: no diffs, only what changes and why."""
    return {
        "host": host, "status": report["status"], "fingerprint": report["fingerprint"],
        "source_sha": record.get("source_sha"), "run_id": record.get("run_id"),
        "message": report.get("message"),
        "plan": None if plan is None else {
            "id": plan["plan_id"], "action": plan["action"], "reason": plan["reason"],
            "source_sha": plan["source_sha"]},
        "changes": [{"role": c.get("role"), "task": c["task"], "module": c["module"],
                     "check_blind": bool(c.get("check_blind")),
                     **({"error": c["error"]} if c.get("error") else {})}
                    for c in report.get("changes") or []],
        "report_commit": report_commit,
    }


def cloud_event(event: Event, agent: str, when: datetime,
                mask: Callable[[str], str]) -> dict[str, Any]:
    """EVENT as a CloudEvents 1.0 structured-mode event, every text through MASK."""
    body: dict[str, Any] = {
        "specversion": "1.0", "id": str(uuid.uuid4()), "source": f"petkeeper://{agent}",
        "type": f"{TYPE_PREFIX}{event.type}", "time": when.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json", "data": masked(event.data, mask)}
    if event.subject is not None:
        body["subject"] = mask(event.subject)
    return body


def masked(data: Any, mask: Callable[[str], str]) -> Any:
    """DATA with every string (keys included) through MASK."""
    if isinstance(data, Mapping):
        return {mask(str(k)): masked(v, mask) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [masked(v, mask) for v in data]
    return mask(data) if isinstance(data, str) else data


def plain(text: Any, limit: int = 300) -> str:
    """TEXT on one line, without control characters (a host's text is untrusted)."""
    return " ".join(CONTROL.sub(" ", str(text)).split())[:limit]
