"""A preview for people in CI: a Markdown summary (a pull-request comment, GitHub's job
summary) and GitHub's workflow-command annotations.

Host text (names, tasks, diffs) only ever appears as code: diffs in fenced blocks longer than
any backtick run they hold, names in code spans (<code> with HTML escapes inside <details>), so
nothing in it is read as Markdown or HTML, and no @mention or link comes of it. Annotations
carry the workflow-command escapes (%, CR, LF; and : and , in properties), so a line of a diff
cannot become a command."""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Iterator, Mapping
from typing import Any

from agent.core.delta import BASE_UNKNOWN, EXISTING, INTRODUCED, RESOLVED
from agent.operate.codequality import split_task_path
from agent.operate.junit import change_label
from agent.operate.output import terminal_safe

MAX_DIFF_LINES = 200  # per change, in a summary; the reports branch has the whole diff
MAX_SUMMARY = 60000  # characters: a pull-request comment holds 65536
MAX_ANNOTATION_LINES = 20
MARKS = {INTRODUCED: "🆕", EXISTING: "♻️", RESOLVED: "✅", BASE_UNKNOWN: "❔"}


def code_span(text: str, table: bool = False) -> str:
    """TEXT as one Markdown code span (no line breaks; | escaped for a table cell)."""
    text = terminal_safe(text)
    ticks = "`" * (max((len(r) for r in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    span = f"{ticks}{pad}{text}{pad}{ticks}"
    return span.replace("|", "\\|") if table else span


def html_code(text: str) -> str:
    return f"<code>{html.escape(terminal_safe(text))}</code>"


def fenced(text: str, lang: str = "diff") -> str:
    """TEXT as a fenced code block that nothing in it can close."""
    text = terminal_safe(text, newlines=True)
    lines = text.splitlines()
    if len(lines) > MAX_DIFF_LINES:
        more = len(lines) - MAX_DIFF_LINES
        lines = [*lines[:MAX_DIFF_LINES], f"... ({more} more lines in the report)"]
    fence = "`" * max(3, max((len(r) for r in re.findall("`{3,}", text)), default=0) + 1)
    return "\n".join([f"{fence}{lang}", *lines, fence])


def render_markdown(preview: Mapping[str, Any]) -> str:
    """Given preview data, return the Markdown summary."""
    out = list(_head(preview))
    for name, host in preview["hosts"].items():
        out.extend(_host(name, host, (preview.get("policy") or {}).get(name)))
    text = "\n".join(out) + "\n"
    if len(text) > MAX_SUMMARY:
        cut = text[:MAX_SUMMARY].rsplit("\n<details>", 1)[0]
        text = cut + "\n\n*(summary cut short: see the job's log or the JUnit report)*\n"
    return text


def short_source(sha: str) -> str:
    """A source id, short: 12 digits of the commit (or the files' hash), -dirty and tree: kept."""
    prefix = "tree:" if sha.startswith("tree:") else ""
    body = sha.removeprefix(prefix)
    dirty = "-dirty" if body.endswith("-dirty") else ""
    return prefix + body.removesuffix("-dirty")[:12] + dirty


def _head(preview: Mapping[str, Any]) -> Iterator[str]:
    base = preview.get("base") or {}
    n = preview.get("counts") or {}
    yield f"## Petkeeper preview of {code_span(short_source(str(preview.get('source_sha'))))}" \
          f" against {code_span(str(base.get('sha') or '')[:12])}" \
          f" ({code_span(str(base.get('ref') or ''))})"
    yield ""
    yield (f"**{n.get(INTRODUCED, 0)} introduced** · {n.get(EXISTING, 0)} existing · "
           f"{n.get(RESOLVED, 0)} resolved · {n.get(BASE_UNKNOWN, 0)} with base unknown · "
           f"exit {preview.get('exit_code')} (`--fail-on {preview.get('fail_on')}`)")
    yield ""
    yield "| host | status | base | introduced | existing | resolved |"
    yield "|---|---|---|---:|---:|---:|"
    for name, host in preview["hosts"].items():
        kinds = [c["kind"] for c in host.get("changes") or []]
        base_status = (host.get("base") or {}).get("status") or BASE_UNKNOWN
        yield (f"| {code_span(name, table=True)} | {host['status']} | {base_status} | "
               f"{kinds.count(INTRODUCED) + kinds.count(BASE_UNKNOWN)} | "
               f"{kinds.count(EXISTING)} | {kinds.count(RESOLVED)} |")


def _host(name: str, host: Mapping[str, Any], policy: Mapping[str, str] | None
          ) -> Iterator[str]:
    yield ""
    base = "base unknown: no report of this host checked the base commit" \
        if host.get("base") is None else f"base: {host['base'].get('status')}"
    yield f"### {code_span(name)}: {host['status']} ({base})"
    if policy:
        yield ""
        yield f"After merge, the policy says {code_span(policy['mode'])} " \
              f"({code_span(policy['rule'])})."
    if host.get("message"):
        yield ""
        yield code_span(str(host["message"]))
    for change in host.get("changes") or []:
        where = change.get("task_path") or "outside the repository"
        blind = " · check mode cannot tell" if change.get("check_blind") else ""
        yield ""
        yield "<details>"
        yield (f"<summary>{MARKS.get(change['kind'], '')} {change['kind']}: "
               f"{html_code(change_label(change))} at {html_code(where)}{blind}</summary>")
        yield ""
        yield fenced(change.get("diff") or "(no diff)")
        yield ""
        yield "</details>"


def escape_data(text: str) -> str:
    """A workflow command's message: %, CR and LF escaped."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value: as data, and : and , too."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render_annotations(preview: Mapping[str, Any]) -> list[str]:
    """One ::warning (introduced, base unknown) or ::notice (existing) per change the head
    would make, at its task's file and line."""
    lines = []
    for name, host in preview["hosts"].items():
        for change in host.get("changes") or []:
            if change["kind"] == RESOLVED:
                continue
            level = "notice" if change["kind"] == EXISTING else "warning"
            path, line = split_task_path(change.get("task_path") or "",
                                         preview.get("folder") or "")
            title = f"{name}: {change['kind']}: {change_label(change)}"
            diff = terminal_safe(change.get("diff") or "", newlines=True).splitlines()
            cut = ["..."] if len(diff) > MAX_ANNOTATION_LINES else []
            body = "\n".join([*diff[:MAX_ANNOTATION_LINES], *cut])
            props = f"file={escape_property(path)},line={line},title=" \
                    f"{escape_property(terminal_safe(title))}"
            lines.append(f"::{level} {props}::{escape_data(body or title)}")
    return lines


def without_commands(text: str) -> str:
    """TEXT (the log's human output, diffs and all) between ::stop-commands:: and its end
    token: no line of a host's file is read as a workflow command."""
    token = secrets.token_hex(16)
    return f"::stop-commands::{token}\n{text}\n::{token}::"


def render_preview(preview: Mapping[str, Any], color: bool = False) -> str:
    """Given preview data, return what a CI log shows: per host its changes by kind, with
    diffs (terminal controls shown as escapes)."""
    paint = (lambda code, text: f"\x1b[{code}m{text}\x1b[0m") if color else \
        (lambda code, text: text)
    shade = {INTRODUCED: "33", BASE_UNKNOWN: "35", EXISTING: "36", RESOLVED: "32"}
    lines = []
    for name, host in preview["hosts"].items():
        was = "base unknown" if host.get("base") is None else \
            f"base {host['base'].get('status')}"
        lines.append(f"{terminal_safe(name)}: {host['status']} ({was})")
        if host.get("message"):
            lines.append(f"    {terminal_safe(str(host['message']))}")
        for c in host.get("changes") or []:
            where = f"  [{terminal_safe(c['task_path'])}]" if c.get("task_path") else ""
            blind = "  (check mode cannot tell)" if c.get("check_blind") else ""
            lines.append(f"  {paint(shade[c['kind']], c['kind'])}: "
                         f"{terminal_safe(change_label(c))}{where}{blind}")
            if c["kind"] != RESOLVED:
                lines.extend(f"      {d}" for d in
                             terminal_safe(c.get("diff") or "", newlines=True).splitlines())
    n, base = preview.get("counts") or {}, preview.get("base") or {}
    lines.append(f"preview of {preview.get('source_sha')} against {base.get('ref')} "
                 f"({str(base.get('sha'))[:12]}): {n.get(INTRODUCED, 0)} introduced, "
                 f"{n.get(EXISTING, 0)} existing, {n.get(RESOLVED, 0)} resolved, "
                 f"{n.get(BASE_UNKNOWN, 0)} with base unknown; exit {preview.get('exit_code')}"
                 f" (--fail-on {preview.get('fail_on')})")
    return "\n".join(lines)
