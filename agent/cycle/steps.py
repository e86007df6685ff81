"""One reconcile cycle: an ordered list of small steps sharing one signature.

Each step reads and fills the Cycle record and may raise AgentError, which ends the cycle at
that step. The stage only moves forward. ``check`` and ``plan`` detect, decide and record;
``run`` (and ``apply``) also recover interrupted applies first and apply what may be applied.
"""

from __future__ import annotations

import enum
import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from agent.adapters.galaxy import install_requirements
from agent.adapters.gitrepo import Mirror
from agent.adapters.masters import close_departed, daemon_folder
from agent.adapters.process import stop_strays
from agent.adapters.runner import Watcher
from agent.adapters.snapshots import prune_snapshots, read_holds
from agent.adapters.state import (
    StateDir,
    clear_cycle_note,
    cycle_lock,
    note_cycle,
    read_json,
    read_pause,
    read_status,
    write_status,
)
from agent.config import Config
from agent.core.drift import CLEAN, DRIFTED, HostReport
from agent.core.redact import redact_text
from agent.core.ssh_masters import Masters
from agent.cycle.apply import (
    FAILED_APPLY,
    INTERRUPTED,
    NOT_CONVERGED,
    ApplyResult,
    Paused,
    apply_plans,
    apply_record,
    clear_journal,
    recover_interrupted,
)
from agent.cycle.decide import (
    APPLY,
    WAIT,
    Plan,
    classify_report,
    decide_plans,
    git_approvals,
    hold_paused,
    pause_reason,
    require_known_plan,
)
from agent.cycle.detect import Targets, check_drift, select_targets
from agent.cycle.outcome import build_status, result_line
from agent.cycle.record import PublishResult, Record, RunInfo, drift_records, new_records, publish
from agent.cycle.source import (
    Refusal,
    Source,
    last_good,
    mark_content_ok,
    open_mirror,
    secret_masker,
    sync_source,
)
from agent.cycle.undo import CONFLICTED, apply_undos, undo_index
from agent.errors import AgentError, RepoError, StalledError

log = logging.getLogger(__name__)

EXIT_CLEAN, EXIT_ERROR, EXIT_DRIFT = 0, 1, 2


class Stage(enum.IntEnum):
    STARTED = 0
    FETCHED = 1
    TARGETED = 2
    RECOVERED = 3
    CHECKED = 4
    DECIDED = 5
    RECORDED = 6
    APPLIED = 7
    APPLIES_RECORDED = 8
    SAVED = 9


@dataclass
class Cycle:
    config: Config
    state: StateDir
    run_id: str
    started: datetime
    stage: Stage = Stage.STARTED
    mirror: Mirror | None = None
    source: Source | None = None
    targets: Targets | None = None
    hosts: dict[str, HostReport] = field(default_factory=dict)
    plans: dict[str, Plan] = field(default_factory=dict)
    applies: list[ApplyResult] = field(default_factory=list)
    pending: list[Record] = field(default_factory=list)  # apply records not committed yet
    publish: PublishResult | None = None
    only_plan: str | None = None  # `petkeeper apply PLAN_ID`: apply that plan alone
    pause: dict[str, Any] | None = None  # `petkeeper pause`, as last read by decide or apply
    cancel: Callable[[], bool] | None = None
    watch: Watcher | None = None  # sees each Ansible event: a progress line, say
    checked: dict[str, str] = field(default_factory=dict)  # host -> when its last check ended
    clock: Callable[[], datetime] = field(default=lambda: _now())
    command: str = ""  # what ran it: check, plan, run, apply, "daemon run", ...
    trigger: str | None = None  # what made the daemon check: "check triggered by a change of X"
    # Hosts checked but never recorded: their reports are another agent's (run --state-dir)
    unrecorded: frozenset[str] = frozenset()
    refused: Refusal | None = None  # a second pass: the head's content was refused, and why
    began: float = field(default_factory=time.monotonic)
    masters: Masters | None = None  # the daemon's kept SSH masters; None: each run its own

    def advance(self, stage: Stage) -> None:
        if stage < self.stage:
            raise RuntimeError(f"cycle stage cannot go backwards: {self.stage.name} -> "
                               f"{stage.name}")
        self.stage = stage

    @property
    def exit_code(self) -> int:
        """0 all clean, 2 drift, 1 any host failed, unreachable or unknown (terraform-like)."""
        statuses = {r.status for r in self.hosts.values()}
        if not statuses or statuses - {CLEAN, DRIFTED}:
            return EXIT_ERROR
        if self.source is not None and (self.source.fetch_error or self.source.rejected):
            return EXIT_ERROR
        if any(a.result in (INTERRUPTED, NOT_CONVERGED, FAILED_APPLY, CONFLICTED) or
               (a.tests is not None and not a.tests["passed"]) for a in self.applies):
            return EXIT_ERROR
        return EXIT_DRIFT if DRIFTED in statuses else EXIT_CLEAN

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "source_sha": self.source.sha if self.source else None,
            "started": self.started.isoformat(timespec="seconds"),
            "fetch_error": self.source.fetch_error if self.source else None,
            "source_rejected": self.source.rejected if self.source else None,
            "applies_held": self.source.hold if self.source else None,
            "hosts": {name: r.as_dict() for name, r in self.hosts.items()},
            "plans": {name: p.as_dict() for name, p in self.plans.items()},
            "applies": [a.as_dict() for a in self.applies],
            "paused": self.pause,
            "accelerator": self.targets.accelerator.choice.as_dict()
            if self.targets and self.targets.accelerator else None,
            "reports": None if self.publish is None else {
                "committed": self.publish.committed_by_host(), "queued": self.publish.queued,
                "pushed": self.publish.pushed, "push": self.publish.push,
                "error": self.publish.error},
        }


def fetch_step(c: Cycle) -> None:
    """Pull: fetch, pin the commit, materialise it, install its Galaxy requirements."""
    c.mirror = open_mirror(c.config, c.state, cancel=c.cancel)
    source = sync_source(c.config, c.state, c.mirror, c.refused)
    c.source = replace(source, mask=secret_masker(c.config, c.state, source.tree))
    env = install_requirements(source.tree, c.config.requirements, c.state.root / "galaxy",
                               c.config.ansible.timeout, c.cancel)
    c.source = replace(c.source, env=env)
    c.advance(Stage.FETCHED)


def target_step(c: Cycle) -> None:
    assert c.source is not None
    c.targets = select_targets(c.config, c.source, c.state, c.cancel, c.masters)
    if c.masters is not None:  # the daemon's: a host no longer targeted loses its master
        close_departed(c.masters, c.targets.hosts)
    c.advance(Stage.TARGETED)


def recover_step(c: Cycle) -> None:
    """Applies a crash cut short are recorded as interrupted, never resumed; what their
    Ansible left running is stopped first."""
    stop_strays(c.state.trees, spare=daemon_folder(c.state.root)[0])
    for result in recover_interrupted(c.state, c.clock()):
        c.applies.append(result)
        c.pending.append(apply_record(result))
    c.advance(Stage.RECOVERED)


def check_step(c: Cycle) -> None:
    assert c.source is not None and c.targets is not None
    c.hosts = check_drift(c.config, c.source, c.targets, c.state, c.run_id, c.cancel, c.watch)
    ended = c.clock().isoformat(timespec="seconds")
    c.checked = {host: ended for host in c.hosts}
    c.advance(Stage.CHECKED)


def decide_step(c: Cycle) -> None:
    assert c.mirror is not None and c.source is not None and c.targets is not None
    c.pause = read_pause(c.state)  # under the cycle's lock: one place decides
    c.plans, c.hosts = decide_plans(c.config, c.state, c.mirror, c.source, c.hosts,
                                    c.targets.groups, c.clock(), pause=c.pause)
    if c.only_plan and c.only_plan not in {p.plan_id for p in c.plans.values()}:
        raise RepoError(f"plan {c.only_plan}: not a current plan (the drift or the source "
                        "changed since); run petkeeper plan and approve the new plan id")
    mark_content_ok(c.state, c.source)  # read, listed, run by Ansible and decided on: good
    c.advance(Stage.DECIDED)


def record_step(c: Cycle) -> None:
    _publish(c)
    assert c.mirror is not None  # fetch_step opened it; _publish used it
    _tidy(c.mirror)
    c.advance(Stage.RECORDED)


def undo_step(c: Cycle) -> None:
    """Apply the undo plans a person approved (policy never does); each undone host is held:
    its plan waits, in this cycle too."""
    assert c.source is not None and c.targets is not None and c.mirror is not None
    if c.only_plan:
        return
    prune_snapshots(c.state, c.clock(), c.config.undo.keep, c.config.undo.max_bytes)
    git = [a for a, problem in git_approvals(c.config, c.mirror, c.source.sha,
                                             undo_index(c.state)) if problem is None]
    try:
        results = apply_undos(c.config, c.source, c.targets, c.state, git, c.run_id, c.clock,
                              c.cancel)
    except Paused as p:
        log.warning("undo not applied, %s", pause_reason(p.pause))
        c.pause, c.plans = p.pause, hold_paused(c.plans, p.pause)
        return
    for result in results:
        c.applies.append(result)
        c.pending.append(apply_record(result))
        plan = c.plans.get(result.host)
        if plan is not None and plan.action == APPLY:
            c.plans[result.host] = replace(plan, action=WAIT, reason=f"held by undo of "
                                           f"{result.undo_of} ({result.approved_by}, "
                                           f"{result.started})")


def apply_step(c: Cycle) -> None:
    """Apply the plans that policy or a valid approval allows, all their hosts in one run
    (each still judged on its own fingerprint); a pause written meanwhile (read again before
    the re-check, the snapshot and where the apply starts) stops what has not started."""
    assert c.source is not None and c.targets is not None
    plans = [plan for plan in c.plans.values() if plan.action == APPLY and
             (not c.only_plan or plan.plan_id == c.only_plan)]
    if not plans or (c.cancel is not None and c.cancel()):  # stopping: no apply starts
        c.advance(Stage.APPLIED)
        return
    try:
        done = apply_plans(c.config, c.source, c.targets, c.state, plans, c.run_id, c.clock,
                           c.cancel, c.watch)
    except Paused as p:
        done = p.done
        settled = {result.host for result, _ in done}
        for plan in plans:
            if plan.host not in settled:
                log.warning("%s: not applied, %s", plan.host, pause_reason(p.pause))
        c.pause, c.plans = p.pause, hold_paused(c.plans, p.pause)
    ledger = read_json(c.state.ledger_file, {})
    for result, after in done:
        c.hosts[result.host] = classify_report(after, ledger.get(result.host),
                                               result.source_sha)
        c.checked[result.host] = result.finished or c.clock().isoformat(timespec="seconds")
        c.applies.append(result)
        c.pending.append(apply_record(result))
    c.advance(Stage.APPLIED)


def record_applies_step(c: Cycle) -> None:
    if c.pending:
        _publish(c)
    c.advance(Stage.APPLIES_RECORDED)


def save_step(c: Cycle) -> None:
    write_status(c.state, build_status(c, _saved_hosts(c.state), _now()))
    c.advance(Stage.SAVED)


def _saved_hosts(state: StateDir) -> dict[str, Any]:
    """The hosts the last status.json holds; {} when it is missing or unreadable (this cycle
    writes a sound one)."""
    try:
        status = read_status(state)
    except AgentError:
        return {}
    hosts = (status or {}).get("hosts")
    return {k: v for k, v in hosts.items() if isinstance(v, dict)} \
        if isinstance(hosts, dict) else {}


Step = Callable[[Cycle], None]
CHECK_STEPS: tuple[Step, ...] = (fetch_step, target_step, check_step, decide_step, record_step,
                                 save_step)
RUN_STEPS: tuple[Step, ...] = (fetch_step, target_step, recover_step, check_step, decide_step,
                               record_step, undo_step, apply_step, record_applies_step,
                               save_step)


def run_check(config: Config, *, wait: float = 0.0, now: datetime | None = None,
              cancel: Callable[[], bool] | None = None, watch: Watcher | None = None) -> Cycle:
    """Run one detect-only cycle under the state directory's lock; return its record."""
    return run_cycle(config, CHECK_STEPS, "check", wait=wait, now=now, cancel=cancel,
                     watch=watch)


Finish = Callable[[Cycle, BaseException | None], None]


def run_cycle(config: Config, steps: tuple[Step, ...], command: str, *, wait: float = 0.0,
              now: datetime | None = None, only_plan: str | None = None,
              cancel: Callable[[], bool] | None = None, finish: Finish | None = None,
              watch: Watcher | None = None, trigger: str | None = None,
              masters: Masters | None = None) -> Cycle:
    """Run STEPS under the state directory's lock; return the cycle's record. With NOW, the
    clock is frozen there (tests control time); WATCH sees each Ansible event. FINISH runs
    last, under the lock, also after a step failed (with the error), and must not raise:
    notifications and metrics (agent.operate.tell)."""
    state = StateDir(config.state_dir)
    state.ensure()
    if only_plan and (pause := read_pause(state)):
        raise StalledError(f"apply {only_plan}: {pause_reason(pause)}; nothing is applied "
                           "until petkeeper resume")
    if only_plan:
        require_known_plan(state, only_plan)  # at once: not after a check of many seconds
    started = now or _now()
    cycle = Cycle(config, state, new_run_id(started), started, only_plan=only_plan,
                  cancel=cancel, watch=watch, clock=(lambda: now) if now else _now,
                  command=command, trigger=trigger, masters=masters)
    with cycle_lock(state, f"petkeeper {command}, run {cycle.run_id}", wait):
        note_cycle(state, cycle.run_id, f"petkeeper {command}")
        error: BaseException | None = None
        try:
            log.info("cycle %s: %s of %s of %s", cycle.run_id, command, config.repo.branch,
                     redact_text(config.repo.url))
            cycle = _run_steps(cycle, steps)
            log.log(logging.WARNING if cycle.exit_code == EXIT_ERROR else logging.INFO, "%s",
                    result_line(cycle, command))
        except BaseException as e:
            error = e
            raise
        finally:
            clear_cycle_note(state)
            if finish is not None:
                finish(cycle, error)
            if cycle.mirror is not None:
                cycle.mirror.close()
    return cycle


def _run_steps(cycle: Cycle, steps: tuple[Step, ...]) -> Cycle:
    """Run STEPS on CYCLE. When a step up to the decision refuses the head's content (a
    RepoError: playbooks, inventory, requirements, policy, Ansible's reading of them), run them
    again, as a new cycle, on the last good commit (issue 22, item 6): the reports, status and
    notifications then say the head was refused and why. Without a last good commit, or when
    it fails too, the head's error."""
    try:
        for step in steps:
            step(cycle)
        return cycle
    except RepoError as e:
        again = _on_last_good(cycle, e)
        if again is None:
            raise
        refused = e
    try:
        for step in steps:
            step(again)
    except BaseException as e:
        if again.mirror is not None:  # run_cycle closes the mirror of the cycle it returns
            again.mirror.close()
        if isinstance(e, RepoError):
            raise refused from None
        raise
    return again


def _on_last_good(c: Cycle, error: RepoError) -> Cycle | None:
    """The cycle that checks the last good commit instead of C's refused head (None: C's
    ERROR stands: no good commit, not the head's content, or `apply PLAN_ID`)."""
    if c.only_plan or c.refused or c.source is None or c.source.rejected or \
            c.stage >= Stage.DECIDED or c.mirror is None or \
            last_good(c.state, c.mirror, c.source.sha) is None:
        return None
    c.mirror.close()
    c.mirror = None
    again = Cycle(c.config, c.state, new_run_id(c.clock()), c.started, cancel=c.cancel,
                  watch=c.watch, clock=c.clock, command=c.command, trigger=c.trigger,
                  masters=c.masters, refused=Refusal(c.source.sha, error, c.source.fetch_error))
    note_cycle(c.state, again.run_id, f"petkeeper {c.command}")
    log.info("cycle %s: the head's content was refused; cycle %s checks the last good commit",
             c.run_id, again.run_id)
    return again


def new_run_id(when: datetime) -> str:
    return f"{when.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def _publish(c: Cycle) -> None:
    assert c.mirror is not None and c.source is not None
    run = RunInfo(c.run_id, c.source.sha, c.clock(), socket.gethostname(), read_pause(c.state),
                  c.trigger, c.source.rejected and c.source.mask(c.source.rejected),
                  plans={h: p.as_dict() for h, p in c.plans.items()}, held=read_holds(c.state))
    pending, c.pending = c.pending, []
    hosts = {h: r for h, r in c.hosts.items() if h not in c.unrecorded}
    mirror, heartbeat = c.mirror, c.config.reports.heartbeat
    result = publish(mirror, c.config, [*hosts, *(r.host for r in pending)],
                     lambda base: new_records(mirror, base, pending) + drift_records(
                         mirror, base, hosts, run, heartbeat))
    clear_journal(c.state, c.applies)  # their records are committed: queued, if not pushed
    earlier = c.publish.committed if c.publish else ()
    commits = c.publish.report_commits if c.publish else ()
    c.publish = replace(result, committed=earlier + result.committed,
                        report_commits=commits + result.report_commits)


def _tidy(mirror: Mirror) -> None:
    """Pack the mirror's loose objects when they piled up. Packing is housekeeping on objects
    that are already safe, so a failure is a warning and the cycle goes on."""
    try:
        if mirror.tidy():
            log.info("mirror packed: its loose objects are one pack now")
    except AgentError as e:
        log.warning("mirror not packed (the next cycle tries again): %s", e)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
