"""Record: write host reports to Git as commits, and push them.

A host's report is ``hosts/<host>.yml`` on its reports branch (agent.adapters.reportstore says
which): a comment block for people, then machine-readable YAML. A commit is made only when a
host's status, fingerprint or source commit changed, or when the heartbeat period has passed.
Commits wait in a local queue until the remote accepts them; a rejected push is rebased and
pushed by a later cycle, never forced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml

from agent.adapters.gitrepo import Author, Mirror
from agent.adapters.reportstore import (
    NOTHING_TO_PUSH,
    HostQueues,
    Layout,
    ReportReader,
    format_message,
    host_path,
)
from agent.config import Config
from agent.core.drift import HostReport
from agent.core.schema import load_yaml
from agent.core.wording import change_counts, task_title
from agent.errors import FetchError

log = logging.getLogger(__name__)

REPORT_SCHEMA = 2  # 2: the plan (id, action, reason, rule) is in the report


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    source_sha: str
    checked_at: datetime
    agent: str  # the machine that ran the check
    paused: Mapping[str, Any] | None = None  # `petkeeper pause` in force: by, at, reason, checks
    trigger: str | None = None  # the daemon's file watch: "check triggered by a change of X"
    refused: str | None = None  # the newest source commit was refused: why (Source.rejected)
    plans: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # host -> Plan.as_dict
    held: Mapping[str, Mapping[str, Any]] | None = None  # hosts an undo holds (agent.cycle.undo)


@dataclass(frozen=True)
class PublishResult:
    committed: tuple[tuple[str, str], ...]  # (host, file) of each commit made this cycle
    queued: int  # report commits the remote does not have yet
    pushed: bool
    error: str | None = None
    # (host, commit) of each host report committed: a later rebase onto a moved remote
    # (HostQueues.sync) makes a new commit of the same report
    report_commits: tuple[tuple[str, str], ...] = ()
    push: str = NOTHING_TO_PUSH  # PUSHED, NOTHING_TO_PUSH, PUSH_OFF (reports.push: false),
    # PUSH_FAILED (the remote could not be reached) or PUSH_REJECTED (it moved meanwhile)

    def committed_by_host(self) -> dict[str, list[str]]:
        """Each host once, with the files committed for it, each file once (a run commits a
        host's report before and after its apply)."""
        found: dict[str, dict[str, None]] = {}
        for host, path in self.committed:
            found.setdefault(host, {})[path] = None
        return {host: list(paths) for host, paths in found.items()}


def report_path(host: str) -> str:
    return host_path("hosts", host)


def build_report(report: HostReport, run: RunInfo) -> dict[str, Any]:
    """Return the machine-readable report of one host."""
    data = {"schema": REPORT_SCHEMA, "host": report.name, **report.as_dict(),
            "source_sha": run.source_sha, "run_id": run.run_id,
            "checked_at": _iso(run.checked_at), "checked_by": run.agent}
    if run.paused:  # only while paused: reports of an agent never paused keep their shape
        data["paused"] = {k: run.paused[k] for k in ("by", "at", "reason", "checks")}
    if run.trigger:  # only a check the file watch triggered: not in the fingerprint
        data["trigger"] = run.trigger
    if run.refused:  # only then, as paused
        data["source_refused"] = run.refused
    if plan := run.plans.get(report.name):
        data["plan"] = report_plan(plan)
    hold = (run.held or {}).get(report.name)
    if hold:  # only while an undo holds the host, like paused
        data["held"] = {k: hold[k] for k in ("apply_id", "by", "at")}
    return data


def report_plan(plan: Mapping[str, Any]) -> dict[str, Any]:
    """What a report says of its host's plan (outside the fingerprint): enough for the fleet
    view to show what waits, and for a person to approve it from anywhere."""
    approval = plan.get("approval") or {}
    return {"id": plan["plan_id"], "action": plan["action"], "reason": plan["reason"],
            "mode": plan.get("mode"), "rule": plan.get("rule") or None,
            "approved_by": approval.get("approver")}


def render_report(data: Mapping[str, Any]) -> str:
    """Return the report file: a short human summary in comments, then the YAML."""
    lines = [f"# {summary_line(data)}",
             f"# source {str(data['source_sha'])[:12]}, run {data['run_id']}, "
             f"checked {data['checked_at']} by {data['checked_by']}"]
    if data.get("message"):
        lines.append(f"# {_one_line(str(data['message']))}")
    if data.get("trigger"):
        lines.append(f"# {_one_line(str(data['trigger']))}")
    if refused := data.get("source_refused"):
        lines.append(f"# newest source refused, this is the last good one: {_one_line(refused)}")
    if pause := data.get("paused"):
        lines.append(f"# paused by {pause['by']} since {pause['at']}: "
                     f"{_one_line(str(pause['reason']))}; nothing is applied until "
                     "petkeeper resume")
    if (plan := data.get("plan")) and plan["action"] != "nothing":
        lines.append(f"# plan {plan['id']} [{plan['action']}] {_one_line(str(plan['reason']))}")
    if hold := data.get("held"):
        lines.append(f"# held by undo of {hold['apply_id']} ({hold['by']}, {hold['at']}): "
                     "nothing is corrected until petkeeper release or a new commit")
    for c in data.get("changes") or []:
        mark = "?" if c["check_blind"] else "~"
        lines.append(f"#   {mark} {_one_line(task_title(c.get('role'), c['task']))} "
                     f"({c['module']})")
    body = yaml.dump(dict(data), Dumper=_BlockDumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=100)
    return "\n".join(lines) + "\n" + body


def summary_line(data: Mapping[str, Any]) -> str:
    changes = data.get("changes") or []
    blind = sum(1 for c in changes if c["check_blind"])
    partial = ", partial" if data.get("partial") else ""
    return f"{data['host']}: {data['status']} ({change_counts(len(changes) - blind, blind)}" \
           f"{partial})"


def commit_reason(previous: Mapping[str, Any] | None, current: Mapping[str, Any],
                  heartbeat: float) -> str | None:
    """Why CURRENT must be committed over PREVIOUS (None: it need not be)."""
    if previous is None:
        return "first report"
    for key in ("status", "fingerprint", "source_sha"):
        if previous.get(key) != current.get(key):
            return f"{key} changed"
    if previous.get("paused") != current.get("paused"):
        return "resumed" if current.get("paused") is None else "paused"
    if previous.get("source_refused") != current.get("source_refused"):
        return "source refused" if current.get("source_refused") else "source accepted"
    before, now = previous.get("plan") or {}, current.get("plan") or {}
    if (before.get("action"), before.get("reason")) != (now.get("action"), now.get("reason")):
        return "plan changed"  # a window opened, an approval came, an apply was refused
    if previous.get("held") != current.get("held"):
        return "released" if current.get("held") is None else "held by an undo"
    try:
        age = (datetime.fromisoformat(current["checked_at"]) -
               datetime.fromisoformat(str(previous["checked_at"]))).total_seconds()
    except (KeyError, ValueError, TypeError):
        return "previous report unreadable"
    return "heartbeat" if age >= heartbeat else None


def build_message(data: Mapping[str, Any], reason: str) -> str:
    return format_message(
        summary_line(data),
        f"Check of {str(data['source_sha'])[:12]} by {data['checked_by']} ({reason})." +
        (f"\n{_sentence(str(data['trigger']))}" if data.get("trigger") else ""),
        {"Source": data["source_sha"], "Run": data["run_id"], "Host": data["host"],
         "Status": data["status"],
         **({"Paused": data["paused"]["reason"]} if data.get("paused") else {}),
         **({"Source-Refused": data["source_refused"]} if data.get("source_refused") else {})})


@dataclass(frozen=True)
class Record:
    """One file to commit to the reports branch, with its commit message."""

    host: str
    path: str
    content: str
    message: str
    when: str


Base = Callable[[str], str | None]  # a host's queue tip: the commit its next record goes on


def drift_records(mirror: Mirror, base: Base, reports: Mapping[str, HostReport],
                  run: RunInfo, heartbeat: float) -> list[Record]:
    """The host reports that must be committed over what BASE holds (changed or heartbeat)."""
    records = []
    for host, report in reports.items():
        data = build_report(report, run)
        reason = commit_reason(_read_report(mirror, base(host), host), data, heartbeat)
        if reason is not None:
            records.append(Record(host, report_path(host), render_report(data),
                                  build_message(data, reason), _iso(run.checked_at)))
    return records


def new_records(mirror: Mirror, base: Base, records: list[Record]) -> list[Record]:
    """RECORDS less those BASE already holds (committed before a crash cut a cycle short)."""
    def held(r: Record) -> bool:  # GitPython drops a blob's last newline
        return (mirror.read_blob(base(r.host), r.path) or b"").rstrip(b"\n") == \
            r.content.encode().rstrip(b"\n")

    return [r for r in records if not held(r)]


def layout_of(config: Config) -> Layout:
    return Layout(config.reports.host_branches, config.reports.branch)


def publish(mirror: Mirror, config: Config, hosts: Iterable[str],
            make_records: Callable[[Base], list[Record]]) -> PublishResult:
    """Fetch HOSTS' report branches and bring their queues onto them, commit the records
    MAKE_RECORDS returns (one commit each, on its host's queue), then push every queue."""
    r = config.reports
    queues = HostQueues(mirror, config.reports_url, layout_of(config),
                        Author(r.author_name, r.author_email, r.signing_key))
    queues.sync(hosts)
    committed, reports = [], []
    for record in make_records(queues.base):
        new = queues.commit(record.host, record.path, record.content.encode(), record.message,
                            record.when)
        committed.append((record.host, record.path))
        if record.path == report_path(record.host):
            reports.append((record.host, new))
        log.info("%s", record.message.splitlines()[0])
    pushed = queues.push(r.push)
    return PublishResult(tuple(committed), pushed.queued, pushed.pushed, pushed.error,
                         tuple(reports), pushed.push)


def publish_reports(mirror: Mirror, config: Config, reports: Mapping[str, HostReport],
                    run: RunInfo) -> PublishResult:
    """Commit the reports that changed onto the local queues, then push them."""
    return publish(mirror, config, reports, lambda base: drift_records(
        mirror, base, reports, run, config.reports.heartbeat))


def report_history(mirror: Mirror, config: Config, host: str | None = None,
                   since: str | None = None, fetch: bool = True) -> list[dict[str, Any]]:
    """The reports' commits (ours queued included), newest first, for HOST or all, since
    SINCE: fetched in full into the agent's mirror (history only, nothing else); without
    FETCH, or when the remote does not answer, what the mirror has."""
    reader = ReportReader(mirror, config.reports_url, layout_of(config), shallow=False)
    try:
        return reader.history(host, since, fetch=fetch)
    except FetchError as e:
        log.warning("%s; showing the reports as this mirror last fetched them", e)
        return reader.history(host, since, fetch=False)


def probe_reports_push(mirror: Mirror, config: Config, hosts: Iterable[str]) -> dict[str, str]:
    """Dry-run the push the agent of HOSTS makes (each host's own branch of the reports
    remote, in one push), sending nothing; git's word for each branch. It proves
    authentication, not what server-side hooks (or a rule holding each key to its own branch)
    would say."""
    layout = layout_of(config)
    return mirror.probe_push(config.reports_url, sorted({layout.branch(h) for h in hosts}))


def _read_report(mirror: Mirror, commit: str | None, host: str) -> dict[str, Any] | None:
    blob = mirror.read_blob(commit, report_path(host))
    if blob is None:
        return None
    try:
        data = load_yaml(blob)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds")


def _sentence(text: str) -> str:
    line = _one_line(text)
    return f"{line[:1].upper()}{line[1:]}."


def _one_line(text: str) -> str:
    """Host text on one comment line: YAML refuses control characters even in a comment."""
    return "".join(ch if ch.isprintable() else " " for ch in " ".join(text.split()))[:300]


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (diffs) as literal blocks, so the file reads like a patch."""

    def analyze_scalar(self, scalar: str) -> yaml.emitter.ScalarAnalysis:
        analysis = super().analyze_scalar(scalar)
        # PyYAML refuses block style when a line ends in a space, as a diff's empty context
        # line does; a literal block keeps such spaces, so it reads back the same.
        if _block_friendly(scalar):
            analysis.allow_block = True
        return analysis


def _block_friendly(value: str) -> bool:
    return "\n" in value and not value.endswith(" ") and \
        not any(ord(ch) < 32 and ch not in "\n\t" for ch in value)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if _block_friendly(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)
