"""Decide: what to do about each host's drift, by policy, windows and approvals.

Reads the policy from the repo, the approvals given on this host (``petkeeper approve``) and
those committed under ``approvals/``, and turns each host report into a Plan: apply, wait
(for an approval or a window), report only, or nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from agent.adapters.gitrepo import Mirror
from agent.adapters.snapshots import read_holds, write_holds
from agent.adapters.state import StateDir, read_json, write_json
from agent.config import Config
from agent.core.approval import (
    APPROVALS_DIR,
    Approval,
    parse_git_approval,
    parse_host_approval,
    plan_id,
    void_reason,
)
from agent.core.drift import CLEAN, DRIFTED, Change, HostReport
from agent.core.ledger import classify, record_check
from agent.core.policy import Gate, Policy, decide_change, decide_host, parse_policy, window_gate
from agent.core.schema import load_yaml, printable_key, yaml_problem
from agent.core.undo import hold_lifted, hold_reason
from agent.cycle.source import Source, resolve_in_tree
from agent.errors import RepoError, StalledError

log = logging.getLogger(__name__)

APPLY, WAIT, REPORT_ONLY, NOTHING = "apply", "wait", "report-only", "nothing"
PLAN_KEYS = ("plan_id", "source_sha", "fingerprint")  # what approving a plan reads of it


@dataclass(frozen=True)
class Plan:
    """What the cycle will do about one host's drift, and why."""

    host: str
    plan_id: str
    source_sha: str
    fingerprint: str
    status: str
    action: str
    reason: str
    mode: str | None = None
    rule: str = ""
    decisions: tuple[tuple[str, str], ...] = ()  # per change: (mode, rule)
    gate: Gate | None = None
    approval: Approval | None = None
    partial: bool = False  # the check stopped early: never auto, approved only knowingly
    # The drift planned for (masked): the files they name are read before an apply, in the
    # re-check's run. Not part of as_dict: the fingerprint stands for them.
    changes: tuple[Change, ...] = field(default=(), compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"plan_id": self.plan_id, "source_sha": self.source_sha,
                "fingerprint": self.fingerprint, "status": self.status, "action": self.action,
                "reason": self.reason, "mode": self.mode, "rule": self.rule,
                "partial": self.partial,
                "decisions": [{"mode": mode, "rule": rule} for mode, rule in self.decisions],
                "approval": self.approval.as_dict() if self.approval else None}


def build_plan(report: HostReport, groups: Sequence[str], policy: Policy, source_sha: str,
               plan_id: str, approvals: Iterable[tuple[Approval, str | None]],
               now: datetime) -> Plan:
    """Decide what to do about REPORT's host. APPROVALS pairs each approval found for it with
    a reason it cannot count (bad signature, already used) or None."""
    base: dict[str, Any] = dict(host=report.name, plan_id=plan_id, source_sha=source_sha,
                                fingerprint=report.fingerprint, status=report.status,
                                partial=report.partial, changes=report.changes)
    if report.status != DRIFTED:
        why = "nothing to correct" if report.status == CLEAN else \
            f"not corrected while {report.status}"
        return Plan(**base, action=NOTHING, reason=why)
    decisions = [decide_change(policy, report.name, groups, c.tags) for c in report.changes]
    # Drifted by the stats alone (a hidden change): the host's own rule decides.
    host_decision = decide_host(decisions) or decide_change(policy, report.name, groups, ())
    mode, rule = host_decision.mode, host_decision.rule
    gate = window_gate(policy, report.name, groups, now)
    base.update(mode=mode, rule=rule, gate=gate,
                decisions=tuple((d.mode, d.rule) for d in decisions))
    if mode == "report":
        return Plan(**base, action=REPORT_ONLY, reason=f"policy {rule}: report only, never "
                                                       "applied, even when approved")
    if mode == "auto" and not report.partial:
        if not gate.open:
            return Plan(**base, action=WAIT, reason=f"policy {rule}: auto; {gate.reason}")
        return Plan(**base, action=APPLY, reason=f"policy {rule}: auto")
    valid: Approval | None = None
    voids: list[str] = []
    for approval, problem in approvals:
        void = problem or void_reason(approval, report.name, source_sha, report.fingerprint,
                                      now, partial=report.partial)
        if void is None and valid is None:
            valid = approval
        elif void is not None:
            voids.append(f"{approval.how} approval by {approval.approver}: {void}")
    if valid is None:
        asked = f"awaiting approval: petkeeper approve {plan_id}"
        if report.partial:
            asked = (f"{f'policy {rule}: auto, but ' if mode == 'auto' else ''}the check was "
                     "partial (tasks after a check-mode failure were not checked); awaiting "
                     f"approval: petkeeper approve --partial {plan_id}")
        return Plan(**base, action=WAIT, reason="; ".join([asked, *voids]))
    if not gate.open:
        return Plan(**base, action=WAIT, approval=valid,
                    reason=f"approved by {valid.approver}; {gate.reason}")
    return Plan(**base, action=APPLY, approval=valid,
                reason=f"approved by {valid.approver} ({valid.how})")


def load_policy(config: Config, source: Source) -> Policy:
    """The repo's policy file, or the default (every correction waits for approval)."""
    if not (source.tree / config.policy).exists() and \
            not (source.tree / config.policy).is_symlink():
        return Policy()
    path = resolve_in_tree(source.tree, config.policy, f"{config.path}: policy")
    try:
        data = load_yaml(path.read_bytes())
    except yaml.YAMLError as e:
        raise RepoError(f"{config.policy}: {yaml_problem(e)}; fix the policy file") from None
    return parse_policy(data, config.policy)


def plan_source(mirror: Mirror, head: str) -> str:
    """The commit a plan binds: the newest one that changed anything outside approvals/."""
    return mirror.last_commit_outside(head, APPROVALS_DIR)


def git_approvals(config: Config, mirror: Mirror, head: str,
                  plans: Mapping[str, tuple[str, str, str]]
                  ) -> list[tuple[Approval, str | None]]:
    """Approvals committed under approvals/ at HEAD, each with why it cannot count (or None)."""
    found = []
    for path, blob in sorted(mirror.files_under(head, APPROVALS_DIR).items()):
        if not path.endswith((".yml", ".yaml")):
            continue
        commit = mirror.last_commit_touching(head, path)
        _, when = mirror.commit_message(commit)
        try:
            data = load_yaml(blob)
        except yaml.YAMLError as e:
            raise RepoError(f"{printable_key(path)} (commit {commit[:12]}): {yaml_problem(e)}; "
                            "fix or remove the approval file") from None
        approval = parse_git_approval(data, path, commit, mirror.commit_author(commit),
                                      datetime.fromisoformat(when), plans)
        problem = None
        if config.approvals.verify:
            ok, why = mirror.verify_commit(commit, _path(config.approvals.allowed_signers),
                                           _path(config.approvals.gpg_home))
            if not ok:
                problem = f"{path}: commit {commit[:12]} is not signed by an allowed " \
                          f"approver ({why})"
                log.warning("%s", problem)
        found.append((approval, problem))
    return found


def pause_reason(pause: Mapping[str, Any]) -> str:
    """The reason a paused plan gives: who paused, since when, why."""
    return f"paused by {pause['by']} since {pause['at']}: {pause['reason']}"


def hold_paused(plans: Mapping[str, Plan], pause: Mapping[str, Any] | None) -> dict[str, Plan]:
    """PLANS with every apply turned into a wait that names PAUSE (unchanged when None)."""
    if pause is None:
        return dict(plans)
    return {host: replace(plan, action=WAIT, reason=pause_reason(pause))
            if plan.action == APPLY else plan for host, plan in plans.items()}


def decide_plans(config: Config, state: StateDir, mirror: Mirror, source: Source,
                 reports: Mapping[str, HostReport], groups: Mapping[str, Sequence[str]],
                 now: datetime, *, pause: Mapping[str, Any] | None
                 ) -> tuple[dict[str, Plan], dict[str, HostReport]]:
    """Plans per host, and the reports with each change's drift class; plans.json is saved.
    PAUSE is `petkeeper pause` as read under the cycle's lock: while it lasts, nothing is
    planned to apply."""
    policy = load_policy(config, source)
    bound = plan_source(mirror, source.sha)
    ledger = read_json(state.ledger_file, {})
    classified = {h: classify_report(r, ledger.get(h), bound) for h, r in reports.items()}
    record_clean_checks(state, ledger, reports, bound, now)
    ids = {h: plan_id(h, bound, r.fingerprint) for h, r in reports.items()}
    index = {pid: (h, bound, reports[h].fingerprint) for h, pid in ids.items()}
    from_git = git_approvals(config, mirror, source.sha, index)
    used = used_approvals(state)
    holds = read_holds(state)
    plans = {}
    for host, report in reports.items():
        mine = [(a, "already used once" if approval_key(a) in used else None)
                for a in host_approvals(state, host)]
        mine += [(a, p or ("already used once" if approval_key(a) in used else None))
                 for a, p in from_git if a.host == host]
        plan = build_plan(report, groups.get(host, ()), policy, bound, ids[host], mine, now)
        if source.hold and plan.action == APPLY:
            plan = replace(plan, action=WAIT, reason=f"{source.hold} ({plan.reason})")
        held = hold_plan(state, host, bound, report.fingerprint, holds) \
            if report.status == DRIFTED else None
        if held and plan.action in (APPLY, WAIT):
            plan = replace(plan, action=WAIT, reason=f"{held}; petkeeper release {host} lets "
                                                     f"it be corrected ({plan.reason})")
        plans[host] = plan
    plans = hold_paused(plans, pause)
    write_json(state.plans_file, {h: p.as_dict() for h, p in plans.items()})
    return plans, classified


def record_clean_checks(state: StateDir, ledger: Mapping[str, Any],
                        reports: Mapping[str, HostReport], source_sha: str,
                        now: datetime) -> None:
    """Keep each clean host's check at SOURCE_SHA in the ledger: a later hand edit at the same
    commit is then corrective, whether or not Petkeeper ever applied to that host."""
    at = now.isoformat(timespec="seconds")
    new = {**ledger, **{h: record_check(ledger.get(h), source_sha, r.status, at)
                        for h, r in reports.items() if r.status == CLEAN}}
    if new != ledger:
        write_json(state.ledger_file, new)


def classify_report(report: HostReport, entry: Mapping[str, Any] | None,
                    source_sha: str) -> HostReport:
    return replace(report, classes=tuple(classify(c, entry, source_sha)
                                         for c in report.changes))


def approval_key(approval: Approval) -> str:
    return f"{approval.how}:{approval.plan_id}:{approval.approved_at}:{approval.origin}"


def used_approvals(state: StateDir) -> set[str]:
    used = read_json(state.used_approvals_file, [])
    if not isinstance(used, list) or not all(isinstance(key, str) for key in used):
        raise StalledError(f"{state.used_approvals_file}: not a list of used approvals; restore "
                           "it from a backup (without it, used approvals would count again)")
    return set(used)


def mark_used(state: StateDir, approval: Approval) -> None:
    used = used_approvals(state) | {approval_key(approval)}
    write_json(state.used_approvals_file, sorted(used))


def host_approvals(state: StateDir, host: str) -> list[Approval]:
    """Approvals given on this machine with `petkeeper approve`, newest first."""
    if not state.approvals.is_dir():
        return []
    found = [parse_host_approval(read_json(p, {}), str(p))
             for p in state.approvals.glob("*.json")]
    return sorted((a for a in found if a.host == host), key=lambda a: a.approved_at,
                  reverse=True)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def require_known_plan(state: StateDir, pid: str) -> None:
    """`petkeeper apply PID`: RepoError at once, before a check is run, when the last check
    made no plan PID (so it cannot be current); the error lists the plans waiting."""
    plans = read_json(state.plans_file, None)
    if plans is None:
        raise RepoError(f"apply {printable_key(pid)}: no check has run on {state.root} yet; run "
                        "petkeeper plan, approve a plan it shows, then apply it")
    if not isinstance(plans, dict) or any(isinstance(p, dict) and p.get("plan_id") == pid
                                          for p in plans.values()):
        return  # known (or unreadable: the cycle's own reading says so)
    waiting = [f"{printable_key(host)} {p.get('plan_id')} ({p.get('action')})"
               for host, p in sorted(plans.items())
               if isinstance(p, dict) and p.get("action") in (APPLY, WAIT)]
    raise RepoError(f"apply {printable_key(pid)}: not a plan of the last check; "
                    + (f"plans waiting: {', '.join(waiting)}" if waiting else "no plan waits")
                    + "; run petkeeper plan to see the current ones")


def approve_plan(config: Config, state: StateDir, mirror: Mirror, pid: str, approver: str,
                 now: datetime, expires: datetime, comment: str,
                 partial: bool = False) -> Approval:
    """Record APPROVER's yes to plan PID of the last check; return the approval.

    The approval binds the plan's host, source commit and fingerprint; RepoError when PID is
    not a plan of the last check that waits for an approval, or is partial and PARTIAL (the
    approver acknowledges that the check stopped early) is not given."""
    return approve_plans(config, state, mirror, [pid], approver, now, expires, comment,
                         partial)[0]


def approve_plans(config: Config, state: StateDir, mirror: Mirror, pids: Sequence[str],
                  approver: str, now: datetime, expires: datetime,
                  comment: str, partial: bool = False) -> list[Approval]:
    """Record APPROVER's yes to each plan of PIDS (one approval each); all or none: the
    first that cannot be approved is a RepoError, and nothing is written. A partial plan
    needs PARTIAL."""
    plans = read_json(state.plans_file, {})
    if not isinstance(plans, dict) or not all(
            isinstance(p, dict) and all(isinstance(p.get(k), str) for k in PLAN_KEYS)
            for p in plans.values()):
        raise StalledError(f"{state.plans_file}: not the plans of a check; run petkeeper plan "
                           "again, then approve")
    approvals = [_approval(plans, pid, approver, now, expires, comment, partial)
                 for pid in dict.fromkeys(pids)]
    for approval in approvals:
        write_json(state.approvals / f"{approval.plan_id}.json", approval.as_dict())
    return approvals


def _approval(plans: Mapping[str, Any], pid: str, approver: str, now: datetime,
              expires: datetime, comment: str, partial: bool) -> Approval:
    match = [(host, p) for host, p in plans.items() if p.get("plan_id") == pid]
    if not match:
        raise RepoError(f"plan {printable_key(pid)}: not a plan of the last check; run "
                        "petkeeper plan and approve one of the plan ids it shows")
    host, plan = match[0]
    if plan.get("mode") == "report":
        raise RepoError(f"plan {pid} ({host}): the policy says report only "
                        f"({plan.get('rule')}); "
                        "an approval would never be applied: change the policy in Git instead")
    if plan.get("action") not in (APPLY, WAIT):
        raise RepoError(f"plan {pid} ({host}): nothing to approve ({plan.get('reason')})")
    if plan.get("partial") and not partial:
        raise RepoError(f"plan {pid} ({host}) is partial: its check stopped at a task that "
                        "failed in check mode, so the tasks after it were not checked; review "
                        f"it with petkeeper plan, then approve with --partial {pid}")
    return Approval(host=host, plan_id=pid, source_sha=plan["source_sha"],
                    fingerprint=plan["fingerprint"], approver=approver, how="host",
                    approved_at=now.isoformat(timespec="seconds"),
                    expires_at=expires.isoformat(timespec="seconds"), comment=comment,
                    partial=bool(plan.get("partial")) and partial)


def hold_plan(state: StateDir, host: str, source_sha: str, fingerprint: str,
              holds: dict[str, dict[str, Any]]) -> str | None:
    """Why HOST's plan must wait for an undo's hold (None: not held). The hold first records
    the source commit and drift it saw, and lifts itself when a new commit changed both."""
    hold = holds.get(host)
    if hold is None:
        return None
    if hold_lifted(hold, source_sha, fingerprint):
        log.info("%s: the hold of the undo of %s is lifted: a new source commit changed its "
                 "drift", host, hold["apply_id"])
        del holds[host]
        write_holds(state, holds)
        return None
    if not hold.get("seen"):
        holds[host] = {**hold, "seen": {"source_sha": source_sha, "fingerprint": fingerprint}}
        write_holds(state, holds)
    return hold_reason(hold)
