"""The fleet view: every host's newest report, as one document, and its text rendering (pure).

`build_fleet` turns what the reports say (agent.adapters.reportstore.HostReports), the
inventory and a clock into a versioned JSON document; `render_fleet` prints it one line per
host; agent.operate.fleet_page renders the same document as a web page.

A host's fleet status is the worst that is true of it: ``untrusted`` (its report is not signed
by its own key), ``unreadable``, ``stale`` (its newest report is older than the threshold,
however clean it was: an agent that died must not look clean), or the status its report gives.
Inventory hosts with no report are ``missing``; hosts with reports that the inventory no
longer has are ``retired``, listed apart and not counted. A group is as bad as its worst host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.core.undo import hold_reason

FLEET_SCHEMA = 1
STALE, MISSING, UNREADABLE, UNTRUSTED = "stale", "missing", "unreadable", "untrusted"
# From best to worst: the order of the summary, of the page, and of the group roll-up.
SEVERITY = ("clean", "drifted", STALE, MISSING, "unknown", "unreachable", "failed", UNREADABLE,
            UNTRUSTED)
REPORTED = ("clean", "drifted", "failed", "unreachable", "unknown")  # what a report may say
GROUP_RULE = "a group is as bad as its worst host: " + " < ".join(SEVERITY)
EXIT_CLEAN, EXIT_ERROR, EXIT_DRIFT = 0, 1, 2
COLORS = {"clean": "32", "drifted": "33", STALE: "35", MISSING: "35", "unknown": "35",
          "unreachable": "31", "failed": "31", UNREADABLE: "31", UNTRUSTED: "31"}


@dataclass(frozen=True)
class FleetInput:
    """What the view is built from, besides the reports."""

    now: datetime
    stale_after: float  # seconds
    source_branch: str
    source_head: str | None
    source_url: str  # credentials already masked
    inventory: Mapping[str, Sequence[str]] | None = None  # host -> its groups


def build_fleet(found: Sequence[Any], given: FleetInput) -> dict[str, Any]:
    """Given each host's HostReports (as_dict()) and GIVEN, return the fleet document."""
    inventory = given.inventory
    rows = [host_row(r, given) for r in found]
    if inventory is not None:
        seen = {row["host"] for row in rows}
        rows += [missing_row(h, inventory[h]) for h in inventory if h not in seen]
        for row in rows:
            row["groups"] = list(inventory.get(row["host"], ()))
    current = [r for r in rows if inventory is None or r["host"] in inventory]
    retired = [r for r in rows if inventory is not None and r["host"] not in inventory]
    current.sort(key=lambda r: r["host"])
    summary = {s: n for s in SEVERITY if (n := sum(1 for r in current if r["status"] == s))}
    return {
        "schema": FLEET_SCHEMA, "generated_at": given.now.isoformat(timespec="seconds"),
        "source": {"url": given.source_url, "branch": given.source_branch,
                   "head": given.source_head},
        "stale_after": given.stale_after, "hosts": current,
        "retired": sorted(retired, key=lambda r: r["host"]), "summary": summary,
        "groups": None if inventory is None else roll_up(current),
        "group_rule": GROUP_RULE, "exit_code": exit_code(current),
        "problems": [r["problem"] for r in rows if r.get("problem")],
    }


def host_row(found: Mapping[str, Any], given: FleetInput) -> dict[str, Any]:
    """One host's line of the view, from its HostReports.as_dict()."""
    report = found.get("report") or {}
    trust = found.get("trust")
    checked = report.get("checked_at")
    age = _age(checked, given.now)
    status = report.get("status") if report.get("status") in REPORTED else "unknown"
    if found.get("problem"):
        status = UNREADABLE
    elif trust is not None and not trust["trusted"]:
        status = UNTRUSTED
    elif age is None or age > given.stale_after:
        status = STALE
    changes = report.get("changes") or []
    head = given.source_head
    source = report.get("source_sha")
    return {
        "host": found["host"], "status": status, "reported_status": report.get("status"),
        "change_count": sum(1 for c in changes if not c.get("check_blind")),
        "check_blind": sum(1 for c in changes if c.get("check_blind")),
        "changes": changes, "message": report.get("message"), "checked_at": checked,
        "checked_by": report.get("checked_by"), "age_seconds": age, "source_sha": source,
        "behind": bool(head and source and source != head),
        "source_refused": report.get("source_refused"),
        "plan": _plan(report.get("plan"), report.get("status")),
        "paused": report.get("paused"), "held": _held(report.get("held")),
        "last_apply": _apply(found.get("apply")),
        "approval": found.get("approval"), "trust": trust, "problem": found.get("problem"),
        "branch": found.get("branch"), "commit": found.get("commit"), "groups": [],
    }


def missing_row(host: str, groups: Sequence[str]) -> dict[str, Any]:
    return {"host": host, "status": MISSING, "reported_status": None, "change_count": 0,
            "check_blind": 0, "changes": [], "message": "in the inventory, but no report",
            "checked_at": None, "checked_by": None, "age_seconds": None, "source_sha": None,
            "behind": False, "source_refused": None, "plan": None, "paused": None,
            "held": None, "last_apply": None,
            "approval": None, "trust": None, "problem": None, "branch": None, "commit": None,
            "groups": list(groups)}


def roll_up(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each group's status (its worst host's) and how many hosts it has in each status."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        for group in row["groups"]:
            groups.setdefault(group, []).append(row["status"])
    return [{"group": g, "status": max(s, key=SEVERITY.index), "hosts": len(s),
             "counts": {x: s.count(x) for x in SEVERITY if x in s}}
            for g, s in sorted(groups.items())]


def exit_code(rows: Sequence[Mapping[str, Any]]) -> int:
    """0 every host clean and fresh, 2 drift and nothing worse, 1 anything else (or no host),
    like check: the fleet view is a monitoring check as it stands."""
    statuses = {r["status"] for r in rows}
    if not statuses or statuses - {"clean", "drifted"}:
        return EXIT_ERROR
    return EXIT_DRIFT if "drifted" in statuses else EXIT_CLEAN


def approve_command(plan: Mapping[str, Any] | None) -> str | None:
    """The command that approves PLAN from anywhere, when it waits for an approval."""
    if not plan or plan.get("action") != "wait" or plan.get("mode") != "approve" or \
            plan.get("approved_by"):
        return None
    return f"petkeeper approve {plan['id']} --via-git"


def plan_reason(plan: Mapping[str, Any]) -> str:
    """The plan's reason, less the host-side approve command when the fleet shows its own."""
    reason = str(plan["reason"])
    return reason.replace(f": petkeeper approve {plan['id']}", "") if approve_command(plan) \
        else reason


def render_fleet(view: Mapping[str, Any], color: bool = False) -> str:
    """Given build_fleet's document, return one line per host, then the summary and groups."""
    paint = _painter(color)
    lines = [host_line(row, view, paint) for row in view["hosts"]]
    lines.append("")
    counts = ", ".join(f"{n} {s}" for s, n in view["summary"].items()) or "no hosts"
    head = view["source"]["head"]
    lines.append(f"{len(view['hosts'])} host(s): {counts}. Source {view['source']['branch']} "
                 f"at {str(head)[:12]}; stale after {_duration(view['stale_after'])}.")
    if view["groups"] is not None:
        lines.append(f"groups ({view['group_rule']}):")
        lines += [f"  {g['group']}: {paint(g['status'], g['status'])} ({g['hosts']} host(s): "
                  + ", ".join(f"{n} {s}" for s, n in g["counts"].items()) + ")"
                  for g in view["groups"]]
    if view["retired"]:
        lines.append("retired (reports of hosts the inventory no longer has; not counted):")
        lines += [f"  {host_line(row, view, paint)}" for row in view["retired"]]
    return "\n".join(lines)


def host_line(row: Mapping[str, Any], view: Mapping[str, Any],
              paint: Callable[[str, str], str]) -> str:
    """One host: status, changes, age, source, plan, pause, last apply, trust. What a report
    says is host text: it is put on one line with no control character before it is shown."""
    first = f"{one_line(row['host'])}: {paint(row['status'], row['status'])}"
    if row["reported_status"] and row["reported_status"] != row["status"]:
        first += f" (last report: {one_line(row['reported_status'])})"
    parts = []
    if row["checked_at"]:
        n = row["change_count"]
        first += f", {n} change{'s' if n != 1 else ''}" + \
            (f" (+{row['check_blind']} check-blind)" if row["check_blind"] else "")
        behind = f" (behind {view['source']['branch']} {str(view['source']['head'])[:12]})" \
            if row["behind"] else ""
        parts.append(f"checked {_duration(row['age_seconds'])} ago at "
                     f"{str(row['source_sha'])[:12]}{behind}")
    return "; ".join([first, *(one_line(p) for p in parts + _details(row))])


def _details(row: Mapping[str, Any]) -> list[str]:
    out = []
    if row["problem"]:
        out.append(row["problem"])
    elif row["message"] and row["status"] not in ("clean", "drifted"):
        out.append(str(row["message"]))
    if row["trust"] and not row["trust"]["trusted"]:
        out.append(f"untrusted: {row['trust']['reason']}")
    plan = row["plan"]
    if plan and plan["action"] != "nothing":
        command = approve_command(plan)
        out.append(f"plan {plan['id']} [{plan['action']}] {plan_reason(plan)}" +
                   (f"; approve: {command}" if command else ""))
    if row["paused"]:
        p = row["paused"]
        out.append(f"paused by {p.get('by')} since {p.get('at')}: {p.get('reason')}")
    if row["held"]:
        out.append(held_line(row["held"], row["host"]))
    if row["source_refused"]:
        out.append(f"source head refused: {row['source_refused']}")
    if a := row["last_apply"]:
        undo = f"undo of {a['undo_of']}: " if a.get("undo_of") else ""
        out.append(f"last apply {a['finished']}: {undo}{a['result']} (plan {a['plan_id']}, "
                   f"approved by {a['approved_by']})")
    return out


def held_line(held: Mapping[str, Any], host: str) -> str:
    """What the fleet says of a host an undo holds (agent.core.undo.hold_reason's words)."""
    return f"{hold_reason(held)}: nothing is corrected until petkeeper release {host} or a " \
        "new commit"


def _held(held: Any) -> dict[str, Any] | None:
    """The report's undo hold (apply_id, by, at), or None."""
    if not isinstance(held, Mapping) or not held.get("apply_id"):
        return None
    return {k: held.get(k) for k in ("apply_id", "by", "at")}


def _plan(plan: Mapping[str, Any] | None, status: str | None) -> dict[str, Any] | None:
    """The pending plan: only a drifted host has one worth showing."""
    if not isinstance(plan, Mapping) or status != "drifted" or not plan.get("id"):
        return None
    return {**plan, "approve": approve_command(plan)}


def _apply(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(record, Mapping) or not record.get("plan_id"):
        return None
    return {k: record.get(k) for k in ("plan_id", "result", "approved_by", "started",
                                       "finished", "before_status", "after_status",
                                       "apply_id", "undo_of")}


def _age(checked_at: Any, now: datetime) -> float | None:
    try:
        return (now - datetime.fromisoformat(str(checked_at))).total_seconds()
    except (ValueError, TypeError):
        return None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = max(0, int(seconds))
    for unit, size, least in (("d", 86400, 3 * 86400), ("h", 3600, 3600), ("m", 60, 60)):
        if s >= least:
            return f"{s // size}{unit}"
    return f"{s}s"


def one_line(text: str) -> str:
    """Host text on one line of a terminal: no control characters (escapes), no line breaks."""
    return "".join(ch if ch.isprintable() else " " for ch in " ".join(str(text).split()))[:500]


def _painter(color: bool) -> Callable[[str, str], str]:
    def paint(text: str, key: str) -> str:
        code = COLORS.get(key)
        return f"\x1b[{code}m{text}\x1b[0m" if color and code else text
    return paint
