"""Undo an apply: put the files it changed back as its snapshot holds them, through a plan,
an approval and a record like every change.

`petkeeper undo APPLY_ID` surveys the host (each file: restore, already as the snapshot, or a
conflict: changed again since the apply) and runs a restore play of Petkeeper's own in check
+ diff mode: its diffs, from what the host has now to the snapshot, masked like every diff,
make the undo plan and its fingerprint. `run` applies an approved undo plan (never by policy
alone), re-checking before and after, and the undo then holds the host: its plans wait until a
new commit changes its drift or `petkeeper release HOST`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from agent.adapters.runner import run_playbook
from agent.adapters.snapshots import (
    apply_id,
    blob_path,
    list_manifests,
    read_holds,
    read_manifest,
    read_undo_plans,
    write_holds,
    write_undo_plans,
)
from agent.adapters.state import StateDir, note_applying, read_json, write_atomic, write_json
from agent.config import Config
from agent.core.approval import Approval, parse_host_approval, plan_id, void_reason
from agent.core.drift import CLEAN, HostReport, build_host_reports, mask_reports
from agent.core.undo import (
    ALREADY,
    CONFLICT,
    LOST,
    RESTORE,
    FileState,
    classify_file,
)
from agent.cycle.apply import (
    DRIFT_CHANGED,
    FAILED_APPLY,
    INTERRUPTED,
    NOT_CONVERGED,
    ApplyResult,
    journal_done,
    unless_paused,
)
from agent.cycle.decide import approval_key, mark_used, used_approvals
from agent.cycle.detect import Targets, playbook_run
from agent.cycle.snapshot import incoming, read_files
from agent.cycle.source import Source
from agent.errors import RepoError

log = logging.getLogger(__name__)

UNDONE, CONFLICTED = "undone", "conflict"
UNDO_SOURCE = "undo "  # an undo plan binds "undo <apply id>" where a plan binds its commit


def find_apply(state: StateDir, aid: str | None, host: str | None) -> dict[str, Any]:
    """The snapshot of apply AID, or of HOST's last apply; RepoError when there is none or
    the apply never started."""
    if aid is None:
        mine = [m for m in list_manifests(state) if m.get("host") == host and
                m.get("state") != "taken"]
        if not mine:
            raise RepoError(f"undo --host {host}: no apply of {host} has a snapshot in "
                            f"{state.undo}; petkeeper history {host} shows its applies")
        return mine[-1]
    manifest = read_manifest(state, aid)
    if manifest.get("state") == "taken":
        raise RepoError(f"undo {aid}: that apply never started (the agent stopped after its "
                        "snapshot): there is nothing to undo")
    return manifest


def survey(config: Config, source: Source, targets: Targets, state: StateDir,
           manifest: Mapping[str, Any], ident: str, cancel: Callable[[], bool] | None,
           force: bool = False) -> tuple[list[dict[str, Any]], HostReport]:
    """What an undo of MANIFEST's apply would do now: per file its action (restore, already
    restored, conflict, not snapshotted), and the masked check report of the restore play
    (conflicts included: a plan shows them; FORCE or not, the plan is the same)."""
    host = str(manifest["host"])
    entries = [f for f in manifest.get("files") or () if not f.get("skipped")]
    states, _ = read_files(config, source, targets, state, host,
                           [f["path"] for f in entries], f"{ident}-read", fetch=False,
                           cancel=cancel) if entries else ({}, {})
    files = [{"path": f["path"], "hidden": bool(f.get("hidden")),
              "action": classify_file(f, states[f["path"]]) if not f.get("skipped") else LOST,
              "why": f.get("skipped") or ""} for f in manifest.get("files") or ()]
    todo = [f for f in entries if _action(files, f["path"]) in (RESTORE, CONFLICT)]
    report = run_restore(config, source, targets, state, host, todo, ident, True, cancel)
    return files, report


def _action(files: Sequence[Mapping[str, Any]], path: str) -> str:
    return next(str(f["action"]) for f in files if f["path"] == path)


def run_restore(config: Config, source: Source, targets: Targets, state: StateDir, host: str,
                entries: Sequence[Mapping[str, Any]], ident: str, check: bool,
                cancel: Callable[[], bool] | None) -> HostReport:
    """Run the restore play of ENTRIES on HOST (CHECK: in check + diff mode); its report."""
    if not entries:
        return HostReport(host, CLEAN)
    one = targets.only([host])
    with tempfile.TemporaryDirectory(dir=incoming(state)) as work:
        play = Path(work) / "restore.yml"
        write_atomic(play, yaml.safe_dump(build_restore_play(state, entries),
                                          sort_keys=False).encode())
        run = replace(playbook_run(config, source, one, str(play), ident, check=check),
                      tags=(), skip_tags=())
        result = run_playbook(run, state.runner, config.ansible.artifacts_keep, cancel)
    reports = build_host_reports(result.events, (host,), "", result.facts)
    return mask_reports(reports, source.mask)[host]


def build_restore_play(state: StateDir, entries: Sequence[Mapping[str, Any]]
                       ) -> list[dict[str, Any]]:
    """A play that puts each entry's file back as its snapshot holds it; a file a no_log
    task wrote is restored by a no_log task, so no diff shows its content."""
    tasks = []
    for f in entries:
        before = FileState.from_dict(f["before"])
        owners = {k: v for k, v in (("mode", before.mode), ("owner", before.owner),
                                    ("group", before.group)) if v}
        task: dict[str, Any]
        if not before.exists:
            task = {"name": f"remove {f['path']}",
                    "ansible.builtin.file": {"path": f["path"], "state": "absent"}}
        elif before.kind == "directory":
            task = {"name": f"restore {f['path']}", "ansible.builtin.file": {
                "path": f["path"], "state": "directory", **owners}}
        else:
            task = {"name": f"restore {f['path']}", "ansible.builtin.copy": {
                "src": str(blob_path(state, before.sha256)), "dest": f["path"], **owners}}
        if f.get("hidden"):
            task["no_log"] = True
        tasks.append(task)
    return [{"name": "Petkeeper undo", "hosts": "all", "gather_facts": False, "tasks": tasks}]


def make_undo_plan(config: Config, source: Source, targets: Targets, state: StateDir,
                   manifest: Mapping[str, Any], run_id: str, now: datetime,
                   cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
    """The undo plan of MANIFEST's apply, saved for approve and run: its own plan id, bound
    to the host, the apply and the exact diffs."""
    host, aid = str(manifest["host"]), str(manifest["apply_id"])
    if host not in targets.hosts:
        raise RepoError(f"undo {aid}: host {host} is not among the hosts of the inventory and "
                        f"limit ({', '.join(targets.hosts)}); run it with --limit {host}")
    files, report = survey(config, source, targets, state, manifest, f"{run_id}-undo-plan",
                           cancel)
    if report.status not in (CLEAN, "drifted"):
        raise RepoError(f"undo {aid}: {host} is {report.status}: {report.message}; the undo "
                        "plan could not be made")
    bound = UNDO_SOURCE + aid
    plan = {"plan_id": plan_id(host, bound, report.fingerprint), "host": host,
            "apply_id": aid, "source_sha": bound, "fingerprint": report.fingerprint,
            "made_at": now.isoformat(timespec="seconds"), "files": files,
            "conflicts": [f["path"] for f in files if f["action"] == CONFLICT],
            "irreversible": list(manifest.get("irreversible") or ()),
            "changes": report.as_dict()["changes"],
            "action": "nothing" if report.status == CLEAN else "wait"}
    plans = {k: v for k, v in read_undo_plans(state).items() if v.get("host") != host}
    write_undo_plans(state, {**plans, plan["plan_id"]: plan})
    return plan


def approve_undo(state: StateDir, plan: Mapping[str, Any], approver: str, now: datetime,
                 expires: datetime, comment: str, force_conflicts: bool) -> Approval:
    """Record APPROVER's yes to an undo PLAN (see check_undo_approval)."""
    check_undo_approval(plan, force_conflicts)
    approval = Approval(host=plan["host"], plan_id=plan["plan_id"],
                        source_sha=plan["source_sha"], fingerprint=plan["fingerprint"],
                        approver=approver, how="host",
                        approved_at=now.isoformat(timespec="seconds"),
                        expires_at=expires.isoformat(timespec="seconds"), comment=comment,
                        force_conflicts=force_conflicts)
    write_json(state.undo / "approvals" / f"{approval.plan_id}.json", approval.as_dict())
    return approval


def check_undo_approval(plan: Mapping[str, Any], force_conflicts: bool) -> None:
    """RepoError when the undo PLAN has nothing to do, or conflicts that FORCE_CONFLICTS does
    not let it overwrite."""
    if plan.get("action") != "wait":
        raise RepoError(f"plan {plan['plan_id']} (undo of {plan['apply_id']}): nothing to "
                        "undo, every file is as the snapshot holds it")
    if plan.get("conflicts") and not force_conflicts:
        raise RepoError(f"plan {plan['plan_id']} (undo of {plan['apply_id']}): "
                        f"{', '.join(plan['conflicts'])} changed again since the apply; "
                        "approve with --force-conflicts to overwrite them too")


def valid_approval(state: StateDir, plan: Mapping[str, Any], git: Sequence[Approval],
                   now: datetime) -> Approval | None:
    """An approval of the undo PLAN that counts now (given here, or GIT's), or None."""
    used = used_approvals(state)
    path = state.undo / "approvals" / f"{plan['plan_id']}.json"
    mine = [parse_host_approval(read_json(path, {}), str(path))] if path.exists() else []
    for approval in [*mine, *(a for a in git if a.plan_id == plan["plan_id"])]:
        if void_reason(approval, plan["host"], plan["source_sha"], plan["fingerprint"], now,
                       approval_key(approval) in used) is None:
            return approval
    return None


def apply_undo(config: Config, source: Source, targets: Targets, state: StateDir,
               plan: Mapping[str, Any], approval: Approval, run_id: str,
               now: Callable[[], datetime], cancel: Callable[[], bool] | None = None
               ) -> ApplyResult:
    """Re-survey, apply the approved undo PLAN, survey again; hold the host from the start."""
    host, aid = str(plan["host"]), str(plan["apply_id"])
    manifest = read_manifest(state, aid)
    started = now().isoformat(timespec="seconds")
    common: dict[str, Any] = dict(
        host=host, plan_id=plan["plan_id"], source_sha=source.sha, approved_by=approval.approver,
        run_id=run_id, started=started, approval=approval.as_dict(), before_status="drifted",
        apply_id=apply_id(run_id, host), undo_of=aid,
        # what the undone apply did that no undo puts back: listed again in the undo's record
        snapshot={"irreversible": list(manifest.get("irreversible") or ())})
    unless_paused(state)
    files, report = survey(config, source, targets, state, manifest, f"{run_id}-undo-before",
                           cancel)
    if report.fingerprint != plan["fingerprint"]:
        return journal_done(state, ApplyResult(
            **common, result=DRIFT_CHANGED, after_status=report.status, finished=started,
            message="the files changed since the undo plan was made: run petkeeper undo "
                    "again and approve the new plan"))
    conflicts = [f["path"] for f in files if f["action"] == CONFLICT]
    if conflicts and not approval.force_conflicts:
        return journal_done(state, ApplyResult(
            **common, result=CONFLICTED, after_status=report.status, finished=started,
            message=f"{', '.join(conflicts)} changed again since the apply; nothing was "
                    "restored: approve with --force-conflicts to overwrite them"))
    todo = [f for f in manifest["files"]
            if not f.get("skipped") and _action(files, f["path"]) in (RESTORE, CONFLICT)]
    note_applying(state, host)
    try:
        unless_paused(state)
        write_json(state.journal / f"{plan['plan_id']}.json", {**common, "state": "applying"})
        hold_host(state, host, aid, approval.approver, started)
        mark_used(state, approval)
        done = run_restore(config, source, targets, state, host, todo, f"{run_id}-undo", False,
                           cancel)
    finally:
        note_applying(state, None)
    if cancel is not None and cancel():
        return journal_done(state, ApplyResult(
            **common, result=INTERRUPTED, after_status="unknown", finished=started,
            message="the agent was stopped during this undo; the host stays held"))
    after, _ = survey(config, source, targets, state, manifest, f"{run_id}-undo-after", cancel)
    left = [f["path"] for f in after if f["action"] not in (ALREADY, LOST)]
    result = UNDONE if not left and done.status != "failed" else \
        FAILED_APPLY if done.status == "failed" else NOT_CONVERGED
    return journal_done(state, ApplyResult(
        **common, result=result, after_status="undone" if result == UNDONE else done.status,
        leftovers=tuple(left), finished=now().isoformat(timespec="seconds"),
        message=done.message or ""))


def hold_host(state: StateDir, host: str, aid: str, by: str, at: str) -> None:
    holds = read_holds(state)
    write_holds(state, {**holds, host: {"apply_id": aid, "by": by, "at": at, "seen": None}})


def release_host(state: StateDir, host: str) -> dict[str, Any]:
    """Lift the undo's hold on HOST; return it. RepoError when HOST is not held."""
    holds = read_holds(state)
    if host not in holds:
        held = ", ".join(sorted(holds)) or "none"
        raise RepoError(f"release {host}: not held by an undo (held hosts: {held})")
    hold = holds.pop(host)
    write_holds(state, holds)
    return hold


def apply_undos(config: Config, source: Source, targets: Targets, state: StateDir,
                git: Sequence[Approval], run_id: str, now: Callable[[], datetime],
                cancel: Callable[[], bool] | None = None) -> list[ApplyResult]:
    """Apply each undo plan of a targeted host that a valid approval (GIT's, or given here)
    allows; policy never does. A plan tried is spent: success or not, it is not tried again."""
    results = []
    for pid, plan in sorted(read_undo_plans(state).items()):
        if plan.get("action") != "wait" or plan.get("host") not in targets.hosts:
            continue
        approval = valid_approval(state, plan, git, now())
        if approval is None or (cancel is not None and cancel()):
            continue
        result = apply_undo(config, source, targets, state, plan, approval, run_id, now,
                            cancel)
        if result.result != DRIFT_CHANGED:
            write_undo_plans(state, {k: v for k, v in read_undo_plans(state).items()
                                     if k != pid})
        log.info("%s: undo of %s (plan %s): %s", plan["host"], plan["apply_id"], pid,
                 result.result)
        results.append(result)
    return results


def undo_index(state: StateDir) -> dict[str, tuple[str, str, str]]:
    """The undo plans as Git approvals bind them: plan id -> (host, source, fingerprint)."""
    return {pid: (str(p.get("host")), str(p.get("source_sha")), str(p.get("fingerprint")))
            for pid, p in read_undo_plans(state).items()}

