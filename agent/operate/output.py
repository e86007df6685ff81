"""What people read on a terminal: pure renderers over the report and status data.

Text from hosts and repos (diffs, messages, task and host names) may hold terminal control
sequences: every renderer shows them as escapes (``\x1b``), never sends them to the terminal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.core.wording import change_counts, task_title
from agent.errors import ConfigError

COLORS = {"clean": "32", "drifted": "33", "failed": "31", "unreachable": "31", "unknown": "35",
          "+": "32", "-": "31", "@": "36"}
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 (less tab, newline), DEL, C1
COLOR_CHOICES = ("auto", "always", "never")


def terminal_safe(text: str, newlines: bool = False) -> str:
    """TEXT with every control character shown as an escape (\\x1b); tabs stay, and newlines
    too when NEWLINES (multi-line text such as a diff), else they are escaped as well."""
    text = CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if newlines else text.replace("\n", "\\n")


def color_wanted(choice: str, tty: bool, env: Mapping[str, str]) -> bool:
    """--color CHOICE: always, never, or auto: on a terminal (TTY) unless NO_COLOR is set to
    anything (no-color.org) or TERM is dumb. --color always outranks NO_COLOR."""
    if choice in ("always", "never"):
        return choice == "always"
    return tty and not env.get("NO_COLOR") and env.get("TERM") != "dumb"


def _safe(value: Any, key: str = "") -> Any:
    """VALUE (report data) with its strings terminal_safe; diffs keep their lines."""
    if isinstance(value, str):
        return terminal_safe(value, newlines=key == "diff")
    if isinstance(value, Mapping):
        return {_safe(k): _safe(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_safe(v, key) for v in value]
    return value


def cycle_json(data: Mapping[str, Any] | None, error: BaseException | None = None
               ) -> dict[str, Any]:
    """check, plan, run and apply --json: the cycle's DATA with `error`, None or what ended the
    cycle early (a config error's problems joined by "; "). With no cycle (the config or the
    lock stopped it first), its parts are empty."""
    base = dict(data) if data is not None else {
        "run_id": None, "source_sha": None, "hosts": {}, "plans": {}, "applies": [],
        "reports": None}
    problems = error.problems if isinstance(error, ConfigError) else [str(error)]
    return {**base, "error": "; ".join(problems) if error is not None else None}


def render_check(report: Mapping[str, Any], color: bool = False) -> str:
    """Given check --json data, return a terraform-plan-like summary with diffs."""
    report, paint = _safe(report), _painter(color)
    lines = []
    for name, host in report["hosts"].items():
        changes = host["changes"]
        head = f"{name}: {paint(host['status'], host['status'])}"
        if changes:
            blind = sum(1 for c in changes if c["check_blind"])
            head += f" ({change_counts(len(changes) - blind, blind)})"
        head += f"  [fingerprint {host['fingerprint'][:12]}]"
        lines.append(head)
        if host.get("message"):
            lines.append(f"    {host['message']}")
        for c in changes:
            note = "  (check mode cannot tell)" if c["check_blind"] else ""
            lines.append(f"  {_change_line(c)}{note}")
            lines.extend(_change_details(c, paint))
    lines.append(_footer(report))
    return "\n".join(lines)


def render_plan(report: Mapping[str, Any], color: bool = False) -> str:
    """Given plan/run --json data, return each host's plan, decision and diffs, then applies."""
    report, paint = _safe(report), _painter(color)
    lines = []
    for name, host in report["hosts"].items():
        plan = (report.get("plans") or {}).get(name) or {}
        lines.append(f"{name}: {paint(host['status'], host['status'])}  plan "
                     f"{plan.get('plan_id', '-')}  [{plan.get('action', '-')}] "
                     f"{plan.get('reason', '')}")
        if host.get("message"):
            lines.append(f"    {host['message']}")
        decisions = plan.get("decisions") or []
        for i, c in enumerate(host["changes"]):
            d = decisions[i] if i < len(decisions) else {}
            lines.append(f"  {_change_line(c)}  [{c.get('class', '-')}; {d.get('mode', '-')} "
                         f"by {d.get('rule', '-')}]")
            if c.get("irreversible"):
                lines.append(f"      irreversible: {c['irreversible']}")
            lines.extend(_change_details(c, paint))
    for a in report.get("applies") or []:
        what = f"undid {a['undo_of']} with plan" if a.get("undo_of") else "applied plan"
        lines.append(f"{what} {a['plan_id']} to {a['host']}: {a['result']} (approved by "
                     f"{a['approved_by']}; {a['before_status']} -> {a['after_status']})"
                     + (f"  apply id {a['apply_id']}" if a.get("apply_id") else ""))
        if a.get("leftovers"):
            lines.append(f"    still changing: {', '.join(a['leftovers'])}")
    lines.append(_footer(report))
    return "\n".join(lines)


def render_history(entries: Sequence[Mapping[str, Any]], empty: str = "no reports yet") -> str:
    """Given report_history() entries, return one line per commit, newest first: when, which
    host, what happened (who approved it, once), on which source commit."""
    if not entries:
        return empty
    entries = _safe(list(entries))
    hosts = [str(e["trailers"].get("Petkeeper-Host", "")) for e in entries]
    width = max(len(h) for h in hosts)
    lines = []
    for e, host in zip(entries, hosts, strict=True):
        t = e["trailers"]
        what = str(e["subject"]).removeprefix(f"{host}: ")
        approver = t.get("Petkeeper-Approved-By")
        if approver and approver not in what:
            what += f", approved by {approver}"
        source = str(t.get("Petkeeper-Source", ""))[:12]
        if t.get("Petkeeper-Apply"):
            what += f"  [apply id {t['Petkeeper-Apply']}]"
        lines.append(f"{e['date']}  {host:<{width}}  {what}" +
                     (f"  (source {source})" if source else ""))
    return "\n".join(lines)


def render_undo_plan(plan: Mapping[str, Any], color: bool = False) -> str:
    """Given an undo plan (agent.cycle.undo), return its files, diffs, conflicts, what it
    cannot put back, and how to approve it."""
    plan, paint = _safe(plan), _painter(color)
    lines = [f"{plan['host']}: undo of {plan['apply_id']}  plan {plan['plan_id']}  "
             f"[{plan['action']}]"]
    diffs = {c["task"].split(" ", 1)[-1]: c["diff"] for c in plan["changes"]}
    for f in plan["files"]:
        lines.append(f"  {f['path']}: {f['action']}" + (f" ({f['why']})" if f["why"] else ""))
        if f["action"] in ("restore", "conflict"):
            lines.extend(f"      {_paint_diff_line(d, paint)}"
                         for d in diffs.get(f["path"], "").splitlines())
    for i in plan["irreversible"]:
        lines.append(f"  irreversible: {i['task'] + ': ' if i['task'] else ''}{i['reason']}")
    if plan["action"] != "wait":
        lines.append("nothing to undo: every file is as the snapshot holds it")
    else:
        force = " --force-conflicts" if plan["conflicts"] else ""
        lines.append(f"approve with: sudo petkeeper approve {plan['plan_id']}{force}; the next "
                     "run applies it and holds the host until petkeeper release")
        if plan["conflicts"]:
            lines.append(f"conflicts (changed again since the apply, not overwritten without "
                         f"--force-conflicts): {', '.join(plan['conflicts'])}")
    return "\n".join(lines)


def render_status(status: Mapping[str, Any]) -> str:
    """Given status.json data, return the last run, then per host its last check, what waits
    and its last apply."""
    status = _safe(status)
    last = status.get("last_run") or {}
    lines = [f"last run {last.get('run_id')} at {last.get('started')}, source "
             f"{str(last.get('source_sha'))[:12]}, exit {last.get('exit_code')}"]
    if last.get("fetch_error"):
        lines.append(f"  fetch failed: {last['fetch_error']}")
    if last.get("applies_held"):
        lines.append(f"  applies held: {last['applies_held']}")
    queued = (last.get("reports") or {}).get("queued", 0)
    lines.append(f"  reports: {queued} commit(s) queued, not yet pushed" if queued
                 else "  reports: all pushed")
    for name, host in sorted((status.get("hosts") or {}).items()):
        blind = host.get("check_blind", 0)
        lines.append(f"{name}: {host['status']} ({change_counts(host['changes'] - blind, blind)})"
                     f", checked {host['checked_at']} at {str(host['source_sha'])[:12]}")
        if host.get("held"):
            h = host["held"]
            lines.append(f"  held by undo of {h['apply_id']} ({h['by']}, {h['at']}): "
                         f"petkeeper release {name} lets it be corrected")
        if host.get("source_rejected"):
            lines.append(f"  source head rejected: {host['source_rejected']}")
        plan = host.get("plan") or {}
        if plan.get("action") == "wait":
            lines.append(f"  plan {plan['plan_id']}: {plan.get('reason')}")
        if applied := host.get("last_apply"):
            lines.append(f"  last apply {applied['at']}: {applied['result']} (plan "
                         f"{applied['plan_id']}, approved by {applied['approved_by']})")
    if isinstance(watch := status.get("watch"), Mapping):
        lines.extend(render_watch(watch))
    return "\n".join(lines)


def render_watch(watch: Mapping[str, Any]) -> list[str]:
    """Given the daemon's watch.json, the status lines of its file watch."""
    if not watch.get("on"):
        problem = watch.get("problem")
        return [f"watch: off ({problem})" if problem else "watch: off"]
    lines = [f"watch: on, {watch.get('paths', 0)} path(s) in {watch.get('watches', 0)} "
             "watched folder(s)"]
    if last := watch.get("last_trigger"):
        lines.append(f"  last trigger {last.get('at')}: {last.get('path')}")
    if watch.get("problem"):
        lines.append(f"  {watch['problem']}")
    return lines


def render_pause(pause: Mapping[str, Any], running: Mapping[str, Any] | None,
                 previous: Mapping[str, Any] | None = None) -> str:
    """Given the pause just written, the cycle running (or None) and the pause it replaced (or
    None), say what stops when, and whose pause is gone."""
    what = "checks and applies" if pause["checks"] else "applies (checks go on)"
    text = f"paused {what} as {pause['by']}: {pause['reason']}; petkeeper resume to undo"
    if previous:
        text += (f"\nthis replaces the pause by {previous['by']} since {previous['at']}"
                 f"{' (checks too)' if previous.get('checks') else ''}: {previous['reason']}")
    if running:
        text += (f"\na cycle is running (PID {running['pid']}, run {running['run_id']}); it "
                 "will apply nothing that has not started")
        text += (f"; an apply already running on {running['applying']} finishes"
                 if running.get("applying") else "; no apply is running")
    return text


def _change_line(c: Mapping[str, Any]) -> str:
    return f"{'?' if c['check_blind'] else '~'} {task_title(c.get('role'), c['task'])} " \
           f"({c['module']})"


def _change_details(c: Mapping[str, Any], paint: Callable[[str, str], str]) -> list[str]:
    """What follows a change's line: why check mode could not judge it, then its diff."""
    lines = []
    if c.get("message"):
        lines.append(f"      {c['message']}")
    if c.get("error"):
        lines.append(f"      error: {c['error']}")
    return lines + [f"      {_paint_diff_line(d, paint)}" for d in c["diff"].splitlines()]


def _footer(report: Mapping[str, Any]) -> str:
    counts: dict[str, int] = {}
    for host in report["hosts"].values():
        counts[host["status"]] = counts.get(host["status"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no hosts"
    line = f"\n{summary}. Source {str(report['source_sha'])[:12]}, run {report['run_id']}."
    if report.get("fetch_error"):
        line += f"\nwarning: {report['fetch_error']}; checked the last good commit"
    if report.get("applies_held"):
        line += f"\nwarning: applies held: {report['applies_held']}"
    if (accel := report.get("accelerator") or {}).get("warning"):
        line += f"\nwarning: accelerator: {accel['reason']}"
    if pause := report.get("paused"):
        line += (f"\npaused by {pause['by']} since {pause['at']}: {pause['reason']}; nothing "
                 "is applied until petkeeper resume")
    if rep := report.get("reports"):
        line += f"\n{_reports_line(rep)}"
        if rep.get("error"):
            line += f"\nwarning: {rep['error']}"
    return line


def _reports_line(rep: Mapping[str, Any]) -> str:
    """What the cycle committed to the reports branch, and whether it reached the remote."""
    committed = rep.get("committed") or {}
    files = sum(len(v) for v in committed.values())
    line = f"reports: {files} commit(s) for {', '.join(committed)}" if files else \
        "reports: nothing new to commit"
    queued = rep.get("queued", 0)
    return line + {"pushed": ", pushed", "off": f"; {queued} queued (reports.push is off)",
                   "failed": f"; push failed, {queued} commit(s) queued for the next cycle",
                   "rejected": f"; push rejected, {queued} commit(s) queued for the next cycle",
                   }.get(str(rep.get("push")), "; nothing to push")


def _painter(color: bool) -> Callable[[str, str], str]:
    def paint(text: str, key: str) -> str:
        code = COLORS.get(key)
        return f"\x1b[{code}m{text}\x1b[0m" if color and code else text
    return paint


def _paint_diff_line(line: str, paint: Callable[[str, str], str]) -> str:
    if line.startswith(("+++", "---")):
        return line
    return paint(line, line[:1]) if line[:1] in "+-@" else line
