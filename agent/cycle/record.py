"""Record: write host reports to the reports branch as commits, and push them.

A host's report is ``hosts/<host>.yml`` on the reports branch: a comment block for people, then
machine-readable YAML. A commit is made only when a host's status, fingerprint or source commit
changed, or when the heartbeat period has passed. Commits wait in a local queue until the remote
accepts them; a rejected push is rebased and pushed by a later cycle, never forced.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import yaml

from agent.adapters.gitrepo import QUEUE_REF, Author, Mirror
from agent.core.drift import HostReport
from agent.core.schema import load_yaml
from agent.core.wording import change_counts, task_title
from agent.errors import FetchError

log = logging.getLogger(__name__)

REPORT_SCHEMA = 1
UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    source_sha: str
    checked_at: datetime
    agent: str  # the machine that ran the check
    paused: Mapping[str, Any] | None = None  # `petkeeper pause` in force: by, at, reason, checks


PUSHED, NOTHING_TO_PUSH, PUSH_OFF, PUSH_FAILED, PUSH_REJECTED = (
    "pushed", "nothing to push", "off", "failed", "rejected")


@dataclass(frozen=True)
class PublishResult:
    committed: tuple[tuple[str, str], ...]  # (host, file) of each commit made this cycle
    queued: int  # report commits the remote does not have yet
    pushed: bool
    error: str | None = None
    # (host, commit) of each host report committed: a later rebase onto a moved remote
    # (sync_queue) makes a new commit of the same report
    report_commits: tuple[tuple[str, str], ...] = ()
    push: str = NOTHING_TO_PUSH  # PUSHED, NOTHING_TO_PUSH, PUSH_OFF (reports.push: false),
    # PUSH_FAILED (the remote could not be reached) or PUSH_REJECTED (it moved meanwhile)

    def committed_by_host(self) -> dict[str, list[str]]:
        """Each host once, with the files committed for it."""
        found: dict[str, list[str]] = {}
        for host, path in self.committed:
            found.setdefault(host, []).append(path)
        return found


def report_path(host: str) -> str:
    return f"hosts/{UNSAFE.sub('_', host)}.yml"


def build_report(report: HostReport, run: RunInfo) -> dict[str, Any]:
    """Return the machine-readable report of one host."""
    data = {"schema": REPORT_SCHEMA, "host": report.name, **report.as_dict(),
            "source_sha": run.source_sha, "run_id": run.run_id,
            "checked_at": _iso(run.checked_at), "checked_by": run.agent}
    if run.paused:  # only while paused: reports of an agent never paused keep their shape
        data["paused"] = {k: run.paused[k] for k in ("by", "at", "reason", "checks")}
    return data


def render_report(data: Mapping[str, Any]) -> str:
    """Return the report file: a short human summary in comments, then the YAML."""
    lines = [f"# {summary_line(data)}",
             f"# source {str(data['source_sha'])[:12]}, run {data['run_id']}, "
             f"checked {data['checked_at']} by {data['checked_by']}"]
    if data.get("message"):
        lines.append(f"# {_one_line(str(data['message']))}")
    if pause := data.get("paused"):
        lines.append(f"# paused by {pause['by']} since {pause['at']}: "
                     f"{_one_line(str(pause['reason']))}; nothing is applied until "
                     "petkeeper resume")
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
    try:
        age = (datetime.fromisoformat(current["checked_at"]) -
               datetime.fromisoformat(str(previous["checked_at"]))).total_seconds()
    except (KeyError, ValueError, TypeError):
        return "previous report unreadable"
    return "heartbeat" if age >= heartbeat else None


def build_message(data: Mapping[str, Any], reason: str) -> str:
    return format_message(
        summary_line(data),
        f"Check of {str(data['source_sha'])[:12]} by {data['checked_by']} ({reason}).",
        {"Source": data["source_sha"], "Run": data["run_id"], "Host": data["host"],
         "Status": data["status"],
         **({"Paused": data["paused"]["reason"]} if data.get("paused") else {})})


def format_message(subject: str, body: str, trailers: Mapping[str, Any]) -> str:
    """A commit message whose TRAILERS become `Petkeeper-<Key>: value` lines."""
    # A value with a line break would end the trailer block: Git would then read none.
    lines = "".join(f"Petkeeper-{key}: {' '.join(str(value).split())}\n"
                    for key, value in trailers.items())
    return f"{subject}\n\n{body}\n\n{lines}"


@dataclass(frozen=True)
class Record:
    """One file to commit to the reports branch, with its commit message."""

    host: str
    path: str
    content: str
    message: str
    when: str


def drift_records(mirror: Mirror, base: str | None, reports: Mapping[str, HostReport],
                  run: RunInfo, heartbeat: float) -> list[Record]:
    """The host reports that must be committed over what BASE holds (changed or heartbeat)."""
    records = []
    for host, report in reports.items():
        data = build_report(report, run)
        reason = commit_reason(_read_report(mirror, base, host), data, heartbeat)
        if reason is not None:
            records.append(Record(host, report_path(host), render_report(data),
                                  build_message(data, reason), _iso(run.checked_at)))
    return records


def new_records(mirror: Mirror, base: str | None, records: list[Record]) -> list[Record]:
    """RECORDS less those BASE already holds (committed before a crash cut a cycle short)."""
    def held(r: Record) -> bool:  # GitPython drops a blob's last newline
        return (mirror.read_blob(base, r.path) or b"").rstrip(b"\n") == \
            r.content.encode().rstrip(b"\n")

    return [r for r in records if not held(r)]


def publish(mirror: Mirror, make_records: Callable[[str | None], list[Record]], *, url: str,
            branch: str, author: Author, push: bool = True) -> PublishResult:
    """Sync the local queue with the remote, commit the records MAKE_RECORDS returns for the
    queue's tip, one commit each, then push the queue."""
    remote = sync_queue(mirror, branch, author)
    base = mirror.queued_reports()
    committed, reports = [], []
    for record in make_records(base):
        new = mirror.commit_files(base, {record.path: record.content.encode()}, record.message,
                                  author, record.when)
        mirror.set_queue(new, base)
        base = new
        committed.append((record.host, record.path))
        if record.path == report_path(record.host):
            reports.append((record.host, new))
        log.info("%s", record.message.splitlines()[0])
    result = push_queue(mirror, url, branch, remote, tuple(committed), push)
    return replace(result, report_commits=tuple(reports))


def publish_reports(mirror: Mirror, reports: Mapping[str, HostReport], run: RunInfo, *,
                    url: str, branch: str, author: Author, heartbeat: float,
                    push: bool = True) -> PublishResult:
    """Commit the reports that changed onto the local queue, then push the queue."""
    return publish(mirror, lambda base: drift_records(mirror, base, reports, run, heartbeat),
                   url=url, branch=branch, author=author, push=push)


def push_queue(mirror: Mirror, url: str, branch: str, remote: str | None,
               committed: tuple[tuple[str, str], ...], push: bool) -> PublishResult:
    queued = len(mirror.queued_commits(remote))
    if not queued or not push:
        return PublishResult(committed, queued, pushed=False,
                             push=PUSH_OFF if queued else NOTHING_TO_PUSH)
    try:
        pushed = mirror.push_reports(url, branch)
    except FetchError as e:
        log.warning("%s; %d report commit(s) stay queued for the next cycle", e, queued)
        return PublishResult(committed, queued, pushed=False, error=str(e), push=PUSH_FAILED)
    if not pushed:
        msg = f"push to {branch} rejected (the remote moved); {queued} report commit(s) " \
              "stay queued and will be rebased and pushed next cycle"
        log.warning("%s", msg)
        return PublishResult(committed, queued, pushed=False, error=msg, push=PUSH_REJECTED)
    log.info("pushed %d report commit(s) to %s", queued, branch)
    return PublishResult(committed, 0, pushed=True, push=PUSHED)


def probe_reports_push(mirror: Mirror, url: str, branch: str) -> str:
    """Dry-run the push push_queue makes (the same ref of URL), sending nothing; git's word
    for the ref. It proves authentication, not what server-side hooks would say."""
    return mirror.probe_push(url, branch)


def sync_queue(mirror: Mirror, branch: str, author: Author) -> str | None:
    """Bring the local queue onto the remote's tip (fast-forward, or rebase our commits);
    return the remote tip. Nothing queued is ever dropped."""
    remote = mirror.remote_reports(branch)
    local = mirror.queued_reports()
    if local is None or remote is None or local == remote:
        if local is None and remote is not None:
            mirror.set_queue(remote, None)
        return remote
    if mirror.is_ancestor(remote, local):
        return remote  # we are ahead: our commits wait to be pushed
    if mirror.is_ancestor(local, remote):
        mirror.set_queue(remote, local)
        return remote
    base = remote
    for commit in mirror.queued_commits(remote):
        message, when = mirror.commit_message(commit)
        base = mirror.commit_files(base, mirror.commit_changes(commit), message, author, when)
    mirror.set_queue(base, local)
    log.info("rebased queued report commits onto the remote's %s", remote[:12])
    return remote


def report_history(mirror: Mirror, branch: str, host: str | None = None) -> list[dict[str, Any]]:
    """The reports branch's commits (ours queued included), newest first, for HOST or all."""
    ref = QUEUE_REF if mirror.queued_reports() else f"refs/remotes/origin/{branch}"
    entries = mirror.history(ref)
    if host:
        entries = [e for e in entries if e["trailers"].get("Petkeeper-Host") == host]
    return entries


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


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


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
