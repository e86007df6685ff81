"""`petkeeper fleet --html FILE`: the fleet view as one self-contained static page (pure).

No script, no CDN, no web font: readable offline and from any static host. Every text that
comes from a report (host names, diffs, messages, reasons: anyone who can edit a managed file
can put markup in a diff) is escaped, and the page's Content-Security-Policy allows its one
stylesheet, by hash, and nothing else: no script runs, whatever the text.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Mapping, Sequence
from typing import Any

from agent.operate.fleet import SEVERITY, approve_command, held_line, plan_reason

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.2em;margin:1.4em 0 .4em}
.meta{color:#555}table{border-collapse:collapse;width:100%;margin:.4em 0}
th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#f4f4f4}.badge{display:inline-block;padding:.1em .6em;border-radius:1em;
margin:0 .3em .3em 0;color:#fff;background:#777}
.clean{background:#2e7d32}.drifted{background:#b26a00}.stale,.missing,.unknown{background:#6a1b9a}
.unreachable,.failed,.unreadable,.untrusted{background:#c62828}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;margin:.3em 0;font-size:12px}
.add{color:#1b5e20}.del{color:#b71c1c}.hunk{color:#0d47a1}code{font-size:12px}
details{margin:.3em 0}summary{cursor:pointer}.small{font-size:12px;color:#555}
""".strip()
CSP = ("default-src 'none'; style-src 'sha256-{digest}'; img-src 'none'; base-uri 'none'; "
       "form-action 'none'")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def render_page(view: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> str:
    """Given build_fleet's document and the history entries (newest first), the page."""
    digest = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    n = len(view["hosts"])
    body = [
        f"<h1>Petkeeper fleet: {n} host{'s' if n != 1 else ''}</h1>",
        f"<p class=meta>Generated {e(view['generated_at'])} from {e(view['source']['url'])}, "
        f"source branch {e(view['source']['branch'])} at "
        f"<code>{e(str(view['source']['head'])[:12])}</code>; a report older than "
        f"{e(_hours(view['stale_after']))} is stale.</p>",
        _summary(view), _groups(view), *_statuses(view), _retired(view), _timeline(history)]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP.format(digest=digest)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Petkeeper fleet: {n} hosts</title>", f"<style>{STYLE}</style>", "</head>",
        "<body>", *filter(None, body), "</body>", "</html>", ""])


def e(text: Any) -> str:
    """TEXT as HTML text or attribute value: escaped, control characters made visible."""
    return html.escape(CONTROL.sub("\ufffd", str(text)), quote=True)


def _summary(view: Mapping[str, Any]) -> str:
    badges = "".join(f'<span class="badge {s}">{n} {s}</span>'
                     for s, n in view["summary"].items())
    return f"<section id=summary>{badges or '<p>No hosts.</p>'}</section>"


def _groups(view: Mapping[str, Any]) -> str:
    if view["groups"] is None:
        return ""
    rows = "".join(
        f"<tr><td>{e(g['group'])}</td><td><span class=\"badge {g['status']}\">{g['status']}"
        f"</span></td><td>{g['hosts']}</td><td>"
        + ", ".join(f"{n} {s}" for s, n in g["counts"].items()) + "</td></tr>"
        for g in view["groups"])
    return (f"<h2>Groups</h2><p class=small>{e(view['group_rule'])}</p><table><tr><th>group"
            f"</th><th>status</th><th>hosts</th><th>by status</th></tr>{rows}</table>")


def _statuses(view: Mapping[str, Any]) -> list[str]:
    """The host table, grouped by status, worst first, each host's changes under it."""
    return ["<h2>Hosts</h2>", _table(view["hosts"], view)] if view["hosts"] else []


def _table(rows: Sequence[Mapping[str, Any]], view: Mapping[str, Any]) -> str:
    out = ["<table><thead><tr><th>host</th><th>changes</th><th>checked</th><th>source</th>"
           "<th>plan</th><th>last apply</th></tr></thead>"]
    for status in reversed(SEVERITY):
        mine = [r for r in rows if r["status"] == status]
        if mine:
            out.append(f'<tbody id="status-{status}"><tr><th colspan=6><span class="badge '
                       f'{status}">{status}</span> {len(mine)} host'
                       f"{'s' if len(mine) != 1 else ''}</th></tr>")
            out += [_row(r, view) for r in mine]
            out.append("</tbody>")
    return "".join(out) + "</table>"


def _row(r: Mapping[str, Any], view: Mapping[str, Any]) -> str:
    said = f" <span class=small>(last report: {e(r['reported_status'])})</span>" \
        if r["reported_status"] and r["reported_status"] != r["status"] else ""
    notes = [x for x in (r["problem"], r["message"] if r["status"] != "clean" else None,
                         r["trust"] and not r["trust"]["trusted"] and
                         f"untrusted: {r['trust']['reason']}") if x]
    if r["paused"]:
        p = r["paused"]
        notes.append(f"paused by {p.get('by')} since {p.get('at')}: {p.get('reason')}")
    if r["held"]:
        notes.append(held_line(r["held"], r["host"]))
    if r["source_refused"]:
        notes.append(f"source head refused: {r['source_refused']}")
    checked = f"{e(r['checked_at'])}<br><span class=small>by {e(r['checked_by'])}</span>" \
        if r["checked_at"] else "never"
    behind = f"<br><span class=small>behind {e(view['source']['branch'])}</span>" \
        if r["behind"] else ""
    cells = [
        f"<strong>{e(r['host'])}</strong>{said}" + "".join(
            f"<br><span class=small>{e(n)}</span>" for n in notes) + _changes(r),
        f"{r['change_count']}" + (f" (+{r['check_blind']} check-blind)" if r["check_blind"]
                                  else ""),
        checked, f"<code>{e(str(r['source_sha'] or '')[:12])}</code>{behind}",
        _plan(r["plan"]), _apply(r["last_apply"])]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _changes(r: Mapping[str, Any]) -> str:
    if not r["changes"]:
        return ""
    items = "".join(
        f"<p>{'?' if c.get('check_blind') else '~'} {e(c.get('role') or '')}"
        f"{' | ' if c.get('role') else ''}{e(c.get('task'))} <code>{e(c.get('module'))}</code>"
        f"</p>" + (f"<pre>{_diff(str(c.get('diff') or ''))}</pre>" if c.get("diff") else "")
        for c in r["changes"])
    return f"<details open><summary>changes</summary>{items}</details>"


def _diff(text: str) -> str:
    def line(ln: str) -> str:
        kind = "hunk" if ln.startswith("@@") else "add" if ln.startswith("+") and not \
            ln.startswith("+++") else "del" if ln.startswith("-") and not \
            ln.startswith("---") else ""
        return f'<span class="{kind}">{e(ln)}</span>' if kind else e(ln)
    return "\n".join(line(ln) for ln in text.splitlines())


def _plan(plan: Mapping[str, Any] | None) -> str:
    if not plan or plan.get("action") == "nothing":
        return ""
    command = approve_command(plan)
    return (f"<code>{e(plan['id'])}</code> [{e(plan['action'])}] {e(plan_reason(plan))}" +
            (f"<br><code>{e(command)}</code>" if command else ""))


def _apply(a: Mapping[str, Any] | None) -> str:
    if not a:
        return ""
    undo = f"undo of {e(a['undo_of'])}: " if a.get("undo_of") else ""
    return (f"{e(a['finished'])}: {undo}{e(a['result'])}<br><span class=small>plan "
            f"{e(a['plan_id'])}, approved by {e(a['approved_by'])}</span>")


def _retired(view: Mapping[str, Any]) -> str:
    if not view["retired"]:
        return ""
    return ("<h2>Retired</h2><p class=small>Reports of hosts the inventory no longer has; "
            f"not counted.</p>{_table(view['retired'], view)}")


def _timeline(history: Sequence[Mapping[str, Any]]) -> str:
    """Drift, approvals and applies, newest first."""
    if not history:
        return "<h2>History</h2><p>Nothing in this period.</p>"
    rows = "".join(
        f"<tr><td>{e(h['date'])}</td><td>{e(h['trailers'].get('Petkeeper-Host', ''))}</td>"
        f"<td>{_kind(h)}</td><td>{e(h['subject'])}</td></tr>" for h in history)
    return (f"<h2>History</h2><table><tr><th>when</th><th>host</th><th>what</th><th>record"
            f"</th></tr>{rows}</table>")


def _kind(entry: Mapping[str, Any]) -> str:
    t, subject = entry["trailers"], str(entry["subject"])
    if "Petkeeper-Moved-From" in t:
        return "moved"
    if "Petkeeper-Undo" in t:
        return "undo"
    if "Petkeeper-Plan" in t:
        return "apply" if ": apply of plan " in subject else "approval"
    status = str(t.get("Petkeeper-Status", ""))
    known = status if status in SEVERITY else "unknown"
    return f'<span class="badge {known}">{known}</span>'


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g}h" if seconds >= 3600 else f"{seconds:g}s"
