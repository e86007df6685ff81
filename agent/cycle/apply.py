"""Apply: correct only what policy or an approval allows, re-checking before and after.

Each apply is journaled before it starts (and its approval marked used), so a crash or reboot
mid-apply is found by the next cycle, recorded as ``interrupted``, and never re-applied
without a new, valid approval. A finished apply stays in the journal, as its result, until its
record is committed to the reports queue: a crash in between loses no record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

import yaml

from agent.adapters.runner import Watcher
from agent.adapters.snapshots import apply_id, write_manifest
from agent.adapters.state import (
    StateDir,
    note_applying,
    read_json,
    read_pause,
    write_atomic,
    write_json,
)
from agent.adapters.verify import run_host_tests
from agent.config import Config
from agent.core.applied import parse_applied
from agent.core.approval import Approval
from agent.core.drift import CLEAN, DRIFTED, HostReport, build_host_reports
from agent.core.ledger import record_apply
from agent.core.wording import task_title
from agent.cycle.decide import Plan, mark_used, pause_reason
from agent.cycle.detect import Targets, playbook_run
from agent.cycle.record import Record, format_message, host_path
from agent.cycle.snapshot import check_and_read_after, check_and_snapshot
from agent.cycle.source import Source, resolve_folder
from agent.cycle.trust import mark_applied

log = logging.getLogger(__name__)

CONVERGED, NOT_CONVERGED, INTERRUPTED = "converged", "not converged", "interrupted"
DRIFT_CHANGED, FAILED_APPLY = "drift changed since approval", "apply failed"


@dataclass(frozen=True)
class ApplyResult:
    host: str
    plan_id: str
    source_sha: str
    result: str  # CONVERGED, NOT_CONVERGED, INTERRUPTED, DRIFT_CHANGED, FAILED_APPLY
    approved_by: str  # the approver, or "policy: auto (<rule>)"
    approval: dict[str, Any] | None
    before_status: str
    after_status: str
    leftovers: tuple[str, ...] = ()  # tasks still changing after the apply
    started: str = ""
    finished: str = ""
    run_id: str = ""
    message: str = ""
    tests: dict[str, Any] | None = None  # the repo's post-apply tests (agent.adapters.verify)
    changed: tuple[dict[str, Any], ...] = ()  # the tasks the apply changed (agent.core.applied)
    apply_id: str = ""  # <run id>/<host>: what `petkeeper undo` takes
    snapshot: dict[str, Any] | None = None  # files' hashes and metadata, irreversible changes
    undo_of: str = ""  # an undo: the apply id it undoes

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "leftovers": list(self.leftovers), "changed": list(self.changed)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ApplyResult:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "leftovers": tuple(known.get("leftovers") or ()),
                      "changed": tuple(known.get("changed") or ())})


def apply_plans(config: Config, source: Source, targets: Targets, state: StateDir,
                plans: Sequence[Plan], run_id: str, now: Callable[[], datetime],
                cancel: Callable[[], bool] | None = None,
                watch: Watcher | None = None) -> list[tuple[ApplyResult, HostReport]]:
    """Re-check the hosts of PLANS together, apply in one run those whose drift is still the
    planned one (each judged on its own fingerprint), re-check them together; return each
    result and its host's report after it, in PLANS' order. Paused when a pause is in force
    before the re-check, after it (and the snapshots its run took) or where the apply starts:
    then no apply runs (the results already journaled are in Paused.done)."""
    hosts = [plan.host for plan in plans]
    tag = _tag(hosts)
    started = now().isoformat(timespec="seconds")
    common = {plan.host: _common(plan, run_id, started) for plan in plans}
    done: dict[str, tuple[ApplyResult, HostReport]] = {}
    unless_paused(state)  # a pause: not even the re-check runs
    # The re-check and, in its run, the snapshot of what each plan's changes would change: a
    # host whose drift is no longer its plan's is not applied, and its snapshot is dropped.
    before, snapshots, unread = check_and_snapshot(
        config, source, targets.only(hosts), state,
        {p.host: (p.plan_id, p.fingerprint, p.changes) for p in plans},
        f"{run_id}-before-{tag}", f"{run_id}-snapshot-{tag}", cancel, watch)
    for plan in plans:
        report = before[plan.host]
        if report.fingerprint == plan.fingerprint:
            continue
        log.warning("%s: drift changed since it was planned; not applied", plan.host)
        done[plan.host] = journal_done(state, ApplyResult(
            **common[plan.host], result=DRIFT_CHANGED, after_status=report.status,
            finished=started, message="the re-check found other drift than the plan's: plan "
                                      "and approve again")), report
    done.update(_snapshots(state, source, snapshots, unread, common, before))
    unless_paused(state, done.values())  # a pause: no apply
    go = [plan for plan in plans if plan.host not in done]
    if go and not (cancel is not None and cancel()):  # stopping: no apply starts
        done.update(_apply_batch(config, source, targets, state, go, common, before, run_id,
                                 now, cancel, watch, done.values()))
    return [done[host] for host in hosts if host in done]


def _apply_batch(config: Config, source: Source, targets: Targets, state: StateDir,
                 go: Sequence[Plan], common: Mapping[str, dict[str, Any]],
                 before: Mapping[str, HostReport], run_id: str, now: Callable[[], datetime],
                 cancel: Callable[[], bool] | None, watch: Watcher | None,
                 done: Iterable[tuple[ApplyResult, HostReport]]
                 ) -> dict[str, tuple[ApplyResult, HostReport]]:
    """Apply GO's plans in one run, their re-check after it together; each host's result."""
    hosts = [plan.host for plan in go]
    tag = _tag(hosts)
    # Where the apply starts: said first, then the pause read again (see pause_applies).
    note_applying(state, ", ".join(hosts))
    try:
        unless_paused(state, done)
        mark_applied(state, source.sha)  # before: an apply cut short counts too
        for plan in go:  # each journaled before the run: a kill mid-run is an interruption
            mine = common[plan.host]
            write_json(state.journal / f"{plan.plan_id}.json", {**mine, "state": "applying"})
            _manifest(state, mine, "applying")
            if plan.approval is not None:
                mark_used(state, plan.approval)
        failed, changed = _run_apply(config, source, targets.only(hosts), state,
                                     f"{run_id}-apply-{tag}", cancel, watch)
    finally:
        note_applying(state, None)
    if cancel is not None and cancel():  # shutting down: what ran is unknown, not failed
        return {plan.host: _interrupted(state, common[plan.host], before[plan.host],
                                        changed[plan.host], now) for plan in go}
    after = _check_and_read_after(config, source, targets.only(hosts), state, go, common,
                                  f"{run_id}-after-{tag}", f"{run_id}-snapshot-after-{tag}",
                                  cancel, watch)
    return {plan.host: _conclude(config, source, targets, state, plan, common[plan.host],
                                 after[plan.host], failed.get(plan.host, ""),
                                 changed[plan.host], now, cancel) for plan in go}


def _common(plan: Plan, run_id: str, started: str) -> dict[str, Any]:
    """The fields every result of PLAN's apply has."""
    approved_by = plan.approval.approver if plan.approval else f"policy: auto ({plan.rule})"
    return dict(host=plan.host, plan_id=plan.plan_id, source_sha=plan.source_sha,
                approved_by=approved_by, run_id=run_id, started=started,
                approval=plan.approval.as_dict() if plan.approval else None,
                before_status=plan.status, apply_id=apply_id(run_id, plan.host))


def _tag(hosts: Sequence[str]) -> str:
    """The hosts of a batch as its runs' idents name them."""
    return hosts[0] if len(hosts) == 1 else f"{len(hosts)}-hosts"


def _manifest(state: StateDir, common: Mapping[str, Any], stage: str) -> None:
    """Write the undo manifest of COMMON's apply at STAGE (taken, applying, applied)."""
    write_manifest(state, {"apply_id": common["apply_id"], "host": common["host"],
                           "state": stage, "plan_id": common["plan_id"],
                           "taken": common["started"], **common["snapshot"]})


def _snapshots(state: StateDir, source: Source, snapshots: Mapping[str, dict[str, Any]],
               unread: Mapping[str, str], common: Mapping[str, dict[str, Any]],
               before: Mapping[str, HostReport]) -> dict[str, tuple[ApplyResult, HostReport]]:
    """Keep each snapshot taken before an apply in its host's COMMON and manifest; the
    journaled failure of each host that could not be read (UNREAD: not applied)."""
    done = {}
    for host, why in unread.items():
        log.warning("%s: not applied: %s", host, why)
        done[host] = journal_done(state, ApplyResult(
            **common[host], result=FAILED_APPLY, after_status=before[host].status,
            finished=common[host]["started"], message=source.mask(why))), before[host]
    for host, snapshot in snapshots.items():
        mine = common[host]
        mine["snapshot"] = snapshot
        _manifest(state, mine, "taken")
    return done


def _interrupted(state: StateDir, common: dict[str, Any], report: HostReport,
                 changed: list[dict[str, Any]], now: Callable[[], datetime]
                 ) -> tuple[ApplyResult, HostReport]:
    return journal_done(state, ApplyResult(
        **common, result=INTERRUPTED, after_status="unknown",
        finished=now().isoformat(timespec="seconds"),
        message="the agent was stopped during this apply; it will not be re-applied "
                "without a new approval", changed=tuple(changed))), \
        replace(report, status="unknown", message="apply interrupted")


def _conclude(config: Config, source: Source, targets: Targets, state: StateDir, plan: Plan,
              common: dict[str, Any], after: HostReport, failed: str,
              changed: list[dict[str, Any]], now: Callable[[], datetime],
              cancel: Callable[[], bool] | None) -> tuple[ApplyResult, HostReport]:
    """One host's result after the apply and its re-check: converged or not, its tests, the
    ledger."""
    leftovers = tuple(c.task for c in after.changes if not c.check_blind)
    converged = after.status == CLEAN and not failed
    tests = _post_apply_tests(config, source, targets.only([plan.host]), plan.host, cancel)
    ledger = read_json(state.ledger_file, {})
    ledger[plan.host] = record_apply(ledger.get(plan.host), plan.source_sha, converged,
                                     [c for c in after.changes if not c.check_blind])
    write_json(state.ledger_file, ledger)
    result = ApplyResult(**common, result=CONVERGED if converged else (
        FAILED_APPLY if failed else NOT_CONVERGED), after_status=after.status,
        leftovers=leftovers, finished=now().isoformat(timespec="seconds"),
        message=failed and source.mask(failed), tests=tests, changed=tuple(changed))
    journal_done(state, result)
    log.info("%s: apply of plan %s: %s", plan.host, plan.plan_id, result.result)
    return result, after


class Paused(Exception):
    """`petkeeper pause` was found where an apply would start: it does not start. DONE: the
    results of a batch's hosts that were settled before (drift changed, host unreadable)."""

    def __init__(self, pause: dict[str, Any],
                 done: Iterable[tuple[ApplyResult, HostReport]] = ()) -> None:
        super().__init__(pause_reason(pause))
        self.pause = pause
        self.done = list(done)


def unless_paused(state: StateDir, done: Iterable[tuple[ApplyResult, HostReport]] = ()
                  ) -> None:
    """Raise Paused when a pause is in force: read afresh, as a pause may come mid-cycle."""
    pause = read_pause(state)
    if pause is not None:
        raise Paused(pause, done)


def recover_interrupted(state: StateDir, now: datetime) -> list[ApplyResult]:
    """The journal's applies whose record was not committed: those a crash cut short, now
    interrupted (their approval spent), and those that finished before it."""
    if not state.journal.is_dir():
        return []
    found = []
    for path in sorted(state.journal.glob("*.json")):
        entry = read_json(path, {})
        if entry.get("state") == "done":
            found.append(ApplyResult.from_dict(entry.get("result") or {}))
            continue
        fields = {k: entry.get(k) for k in ("host", "plan_id", "source_sha", "approved_by",
                                             "approval", "before_status", "started", "run_id",
                                             "snapshot")}
        fields.update({k: str(entry.get(k) or "") for k in ("apply_id", "undo_of")})
        if entry.get("approval"):  # the crash may have come before it was marked used
            mark_used(state, Approval.from_dict(entry["approval"]))
        found.append(journal_done(state, ApplyResult(
            **{**fields, "plan_id": path.stem}, result=INTERRUPTED, after_status="unknown",
            finished=now.isoformat(timespec="seconds"),
            message="the agent stopped during this apply; it was not resumed and will not be "
                    "re-applied without a new approval")))
        log.warning("%s: apply of plan %s was interrupted", entry.get("host"),
                    entry.get("plan_id"))
    return found


def clear_journal(state: StateDir, results: Iterable[ApplyResult]) -> None:
    """RESULTS' records are committed to the reports queue: their journal entries go."""
    for result in results:
        (state.journal / f"{result.plan_id}.json").unlink(missing_ok=True)


def journal_done(state: StateDir, result: ApplyResult) -> ApplyResult:
    """Keep RESULT in the journal until its record is committed (clear_journal); in its own
    key order, so that the record made from it again is the very same."""
    state.journal.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(state.journal / f"{result.plan_id}.json",
                 json.dumps({"state": "done", "result": result.as_dict()}).encode())
    return result


def apply_record(result: ApplyResult) -> Record:
    """The reports-branch record of one apply: applies/<host>.yml and its commit."""
    data = result.as_dict()
    subject = f"{result.host}: apply of plan {result.plan_id}: {result.result}"
    if result.undo_of:
        subject = f"{result.host}: undo of {result.undo_of} (plan {result.plan_id}): " \
                  f"{result.result}"
    body = (f"Approved by {result.approved_by}. Before: {result.before_status}, after: "
            f"{result.after_status}.")
    if result.tests is not None:
        t = result.tests
        body += (f"\nPost-apply tests: {'passed' if t['passed'] else 'FAILED'} ({t['tests']} "
                 f"run, {t['failures'] + t['errors']} failed)")
    if result.changed:
        body += "\nChanged: " + "; ".join(
            task_title(c.get("role"), str(c.get("task"))) + (
                f" ({len(c['items'])} item(s))" if c.get("items") else "")
            for c in result.changed)
    if result.leftovers:
        body += "\nStill changing: " + ", ".join(result.leftovers)
    gone = [i["reason"] if not i["task"] else f"{i['task']} ({i['reason']})"
            for i in (result.snapshot or {}).get("irreversible") or ()]
    if gone:
        body += "\nIrreversible (an undo cannot put back): " + "; ".join(gone)
    message = format_message(subject, body, {
        "Source": result.source_sha, "Run": result.run_id, "Host": result.host,
        "Status": result.after_status, "Plan": result.plan_id,
        "Approved-By": result.approved_by,
        **({"Apply": result.apply_id} if result.apply_id else {}),
        **({"Undo": result.undo_of} if result.undo_of else {})})
    content = f"# {subject}\n" + yaml.safe_dump(data, sort_keys=False)
    return Record(result.host, host_path("applies", result.host), content,
                  message, result.finished)


def approval_record(approval: Approval) -> Record:
    """The reports-branch record of an approval given on the host."""
    subject = f"{approval.host}: plan {approval.plan_id} approved by {approval.approver}"
    body = f"Expires {approval.expires_at}." + (f"\n{approval.comment}" if approval.comment
                                                 else "")
    message = format_message(subject, body, {
        "Source": approval.source_sha, "Host": approval.host, "Plan": approval.plan_id,
        "Approved-By": approval.approver})
    content = f"# {subject}\n" + yaml.safe_dump(approval.as_dict(), sort_keys=False)
    return Record(approval.host, host_path("approvals", approval.host), content,
                  message, approval.approved_at)


def _check_and_read_after(config: Config, source: Source, targets: Targets, state: StateDir,
                          go: Sequence[Plan], common: Mapping[str, dict[str, Any]],
                          run_id: str, ident: str, cancel: Callable[[], bool] | None,
                          watch: Watcher | None) -> dict[str, HostReport]:
    """The re-check after the apply, its reports; in the same run, keep in each COMMON's
    snapshot and manifest the state the apply left each file in, for an undo; when a host
    cannot be read, its snapshot as it was (an undo then asks about every changed file)."""
    after, files, failed = check_and_read_after(config, source, targets, state, {
        p.host: (p.plan_id, common[p.host]["snapshot"]) for p in go}, run_id, ident, cancel,
        watch)
    for plan in go:
        mine = common[plan.host]
        if plan.host in failed:
            log.warning("%s: the files as the apply left them could not be read (%s); an undo "
                        "of this apply will treat each changed file as a conflict", plan.host,
                        failed[plan.host])
        else:
            mine["snapshot"] = {**mine["snapshot"], "files": files[plan.host]}
        _manifest(state, mine, "applied")
    return after


def _post_apply_tests(config: Config, source: Source, targets: Targets, host: str,
                      cancel: Callable[[], bool] | None) -> dict[str, Any] | None:
    """Run the repo's testinfra tests against HOST when the repo has them."""
    if not config.post_apply_tests or not (source.tree / config.post_apply_tests).is_dir():
        return None
    folder = resolve_folder(source.tree, config.post_apply_tests,
                            f"{config.path}: post_apply_tests")
    run = playbook_run(config, source, targets, targets.playbooks[0], "tests", check=False)
    return run_host_tests(run, folder, host, cancel,
                          f"post_apply_tests in {config.path}").as_dict()


def _run_apply(config: Config, source: Source, targets: Targets, state: StateDir, ident: str,
               cancel: Callable[[], bool] | None, watch: Watcher | None = None
               ) -> tuple[dict[str, str], dict[str, list[dict[str, Any]]]]:
    """Apply every playbook to the hosts together; return why each host failed (only those
    that did) and the tasks that changed each (masked), also those before a failure. A host
    that failed gets no later playbook; the others go on."""
    failed: dict[str, str] = {}
    changed: dict[str, list[dict[str, Any]]] = {host: [] for host in targets.hosts}
    for i, playbook in enumerate(targets.playbooks):
        going = [host for host in targets.hosts if host not in failed]
        if not going:
            break
        run = playbook_run(config, source, targets.only(going), playbook, f"{ident}-{i}",
                           check=False)
        result = targets.run(run, state.runner, config.ansible.artifacts_keep, cancel, watch)
        for host in going:
            changed[host] += parse_applied(result.events, host, str(source.tree),
                                           result.facts, source.mask)
        if result.status != "successful":
            reports = build_host_reports(result.events, going, str(source.tree), result.facts)
            why = {h: r.message for h, r in reports.items()
                   if r.status not in (CLEAN, DRIFTED) and r.message}
            if not why and not result.finished:
                why = dict.fromkeys(going, result.error)  # Ansible stopped before its recap
            for host in why or going:  # no host named: the run itself failed
                failed[host] = f"{playbook}: " + (why.get(host) or (
                    f"ansible-playbook {result.status} (rc {result.rc})"))
    return failed, changed
