"""What a cycle leaves for people: one result line for the log, and status.json (the last run,
and per host its own last check and last apply)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from agent.adapters.snapshots import read_holds
from agent.core.drift import HostReport
from agent.cycle.decide import WAIT

if TYPE_CHECKING:
    from agent.cycle.steps import Cycle


def build_status(c: Cycle, earlier: dict[str, Any], finished: datetime) -> dict[str, Any]:
    """status.json's content after C: the last run (without its hosts, which are under
    hosts), and per host its last check and last apply. Hosts C did not check (another
    limit) keep what an earlier cycle saved about them (EARLIER)."""
    last_run = {k: v for k, v in c.as_json().items() if k not in ("hosts", "plans")}
    return {
        "last_run": {**last_run, "finished": finished.isoformat(timespec="seconds"),
                     "exit_code": c.exit_code},
        "hosts": {**earlier, **{name: _host_status(c, name, r, earlier.get(name) or {})
                                for name, r in c.hosts.items()}},
    }


def _host_status(c: Cycle, name: str, r: HostReport, earlier: dict[str, Any]) -> dict[str, Any]:
    assert c.source is not None
    entry = {"status": r.status, "fingerprint": r.fingerprint, "changes": len(r.changes),
             "check_blind": sum(1 for change in r.changes if change.check_blind),
             "message": r.message, "source_sha": c.source.sha,
             "source_rejected": c.source.rejected,
             "checked_at": c.checked.get(name, c.started.isoformat(timespec="seconds")),
             "run_id": c.run_id}
    if name in c.plans:
        entry["plan"] = c.plans[name].as_dict()
    applies = [a for a in c.applies if a.host == name]
    last_apply = {"at": applies[-1].finished, "result": applies[-1].result,
                  "plan_id": applies[-1].plan_id, "approved_by": applies[-1].approved_by,
                  "run_id": applies[-1].run_id} if applies else earlier.get("last_apply")
    if last_apply:
        entry["last_apply"] = last_apply
    hold = read_holds(c.state).get(name)
    if hold:
        entry["held"] = {k: hold[k] for k in ("apply_id", "by", "at")}
    return entry


def result_line(c: Cycle, command: str) -> str:
    """The cycle's outcome in one log line: hosts per status, the source commit, what was
    committed, what waits for approval, what was applied."""
    counts: dict[str, int] = {}
    for report in c.hosts.values():
        counts[report.status] = counts.get(report.status, 0) + 1
    parts = [", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no hosts",
             f"source {c.source.sha[:12] if c.source else 'none'}"]
    if c.publish is not None:
        done = c.publish.committed_by_host()
        parts.append(f"committed {', '.join(f'{h} ({len(f)})' for h, f in done.items())}"
                     if done else "nothing committed")
        parts[-1] += f", {c.publish.push}"
    waiting = [f"{h} plan {p.plan_id}" for h, p in c.plans.items() if p.action == WAIT]
    parts.append(f"waiting: {', '.join(waiting)}" if waiting else "nothing waits")
    parts.append("applied: " + (", ".join(f"{a.host} plan {a.plan_id} {a.result}"
                                          for a in c.applies) or "nothing"))
    return f"cycle {c.run_id} ({command}) exit {c.exit_code}: {'; '.join(parts)}"
