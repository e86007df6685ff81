"""agent.cycle.decide's pure part: each host's plan from its report, the policy, the windows and the
approvals found for it; and `petkeeper plan`'s output of it (agent.operate.output.render_plan)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.adapters.state import StateDir, read_json, write_json
from agent.core.approval import GIT, HOST, Approval, plan_id
from agent.core.drift import (
    CLEAN,
    DRIFTED,
    FAILED,
    UNKNOWN,
    UNREACHABLE,
    Change,
    HostReport,
    build_host_reports,
    fingerprint,
)
from agent.core.ledger import CHECK_BLIND, CORRECTIVE, INTENTIONAL
from agent.core.policy import APPROVE, AUTO, REPORT, Gate, Policy, Rule, Window
from agent.cycle.apply import ApplyResult
from agent.cycle.decide import (
    APPLY,
    NOTHING,
    REPORT_ONLY,
    WAIT,
    Plan,
    approval_key,
    approve_plan,
    build_plan,
    classify_report,
    hold_paused,
    record_clean_checks,
)
from agent.errors import RepoError
from agent.operate.output import render_plan

SRC = "8f14e45fceea167a5a36dedd4bea2543b2c1e7c8"
NEW_SRC = "c9f0f895fb98ab9159f51fd0297e236d0f0d4c1a"
NOW = datetime(2026, 11, 25, 21, 0, tzinfo=UTC)  # the nightly window is closed
IN_WINDOW = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
MOTD = Change("Baseline", "motd", "Write motd", "ansible.builtin.copy",
              "--- before: /etc/motd\n+++ after: roles/motd/files/motd\n-Hi\n+Welcome\n",
              tags=("motd",))
CONF = Change("Baseline", None, "Write pet.conf", "ansible.builtin.copy", "-a\n+b\n",
              tags=("conf",))
PROBE = Change("Baseline", None, "Run a command", "ansible.builtin.command", "", True,
               tags=("conf",))

MOTD_HEALS = Rule(AUTO, "motd heals itself", tags=frozenset({"motd"}))
DB_HANDS_OFF = Rule(REPORT, "hands off the database", hosts=frozenset({"db1"}))
WEB_HEALS = Rule(AUTO, "web heals itself", groups=frozenset({"frontend"}))
NIGHTLY = Window("nightly", "0 2 * * *", 2 * 3600.0, "UTC")


def drifted(name: str = "web1", *changes: Change) -> HostReport:
    changes = changes or (MOTD,)
    return HostReport(name, DRIFTED, changes, fingerprint(DRIFTED, changes))


def pid_of(report: HostReport) -> str:
    return plan_id(report.name, SRC, report.fingerprint)


def approval_for(report: HostReport, **changes: Any) -> Approval:
    base = Approval(host=report.name, plan_id=pid_of(report), source_sha=SRC,
                    fingerprint=report.fingerprint, approver="alice", how=HOST,
                    approved_at="2026-11-25T20:00:00+00:00",
                    expires_at="2026-11-26T08:00:00+00:00")
    return dataclasses.replace(base, **changes)


def plan(report: HostReport, *rules: Rule, windows: Sequence[Window] = (),
         groups: Sequence[str] = ("frontend",), now: datetime = NOW,
         approvals: Sequence[tuple[Approval, str | None]] = ()) -> Plan:
    policy = Policy(APPROVE, tuple(rules), tuple(windows))
    return build_plan(report, groups, policy, SRC, pid_of(report), approvals, now)


# --- build_plan: hosts with nothing to correct -----------------------------------------------

def test_a_clean_host_has_nothing_to_do():
    clean = HostReport("web1", CLEAN, (), fingerprint(CLEAN, ()))

    p = plan(clean, WEB_HEALS)

    assert (p.action, p.reason, p.mode, p.decisions) == (NOTHING, "nothing to correct", None, ())
    assert (p.host, p.plan_id, p.source_sha, p.status) == ("web1", pid_of(clean), SRC, CLEAN)


@pytest.mark.parametrize("status", [FAILED, UNREACHABLE, UNKNOWN])
def test_a_host_that_could_not_be_checked_is_not_corrected_and_says_why(status: str):
    report = HostReport("web1", status, (MOTD,), fingerprint(status, (MOTD,)), "boom")

    p = plan(report, WEB_HEALS, now=IN_WINDOW)

    assert (p.action, p.reason) == (NOTHING, f"not corrected while {status}")


# --- build_plan: report and auto -------------------------------------------------------------

def test_report_mode_only_reports_even_with_a_valid_approval():
    db1 = drifted("db1")

    p = plan(db1, DB_HANDS_OFF, groups=("backend",), now=IN_WINDOW,
             approvals=[(approval_for(db1), None)])

    assert p.action == REPORT_ONLY and p.approval is None
    assert p.reason == "policy hands off the database: report only, never applied, even when " \
                       "approved"
    assert (p.mode, p.rule) == (REPORT, "hands off the database")


def test_auto_mode_with_an_open_gate_applies_without_approval():
    p = plan(drifted(), WEB_HEALS)

    assert (p.action, p.reason, p.approval) == (APPLY, "policy web heals itself: auto", None)
    assert p.gate == Gate(True, "no maintenance window applies")


def test_auto_mode_outside_its_window_waits_and_says_when_it_opens():
    p = plan(drifted(), WEB_HEALS, windows=[NIGHTLY])

    assert p.action == WAIT
    assert p.reason == "policy web heals itself: auto; outside maintenance windows; 'nightly' " \
                       "opens 2026-11-26T02:00:00+00:00"
    assert p.gate is not None and p.gate.opens_at == datetime(2026, 11, 26, 2, 0, tzinfo=UTC)


def test_auto_mode_inside_its_window_applies():
    p = plan(drifted(), WEB_HEALS, windows=[NIGHTLY], now=IN_WINDOW)

    assert p.action == APPLY
    assert p.gate == Gate(True, "window 'nightly' open until 2026-11-26T04:00:00+00:00")


# --- build_plan: approve ---------------------------------------------------------------------

def test_approve_mode_without_approvals_waits_and_says_how_to_approve():
    report = drifted()

    p = plan(report)

    assert p.action == WAIT and p.approval is None
    assert p.reason == f"awaiting approval: petkeeper approve {pid_of(report)}"
    assert (p.mode, p.rule) == (APPROVE, "default")


def test_approve_mode_with_a_valid_host_approval_applies_it():
    report = drifted()
    yes = approval_for(report)

    p = plan(report, approvals=[(yes, None)])

    assert (p.action, p.reason) == (APPLY, "approved by alice (host)")
    assert p.approval is yes


def test_a_valid_git_approval_applies_and_says_it_came_from_git():
    report = drifted()
    yes = approval_for(report, how=GIT, approver="Bob <bob@example.com>",
                       origin="approvals/web1.yml@5d41402abc4b2a76b9719d911017c592ae3f1c2d")

    p = plan(report, approvals=[(yes, None)])

    assert (p.action, p.reason, p.approval) == (APPLY, "approved by Bob <bob@example.com> (git)",
                                                yes)


@pytest.mark.parametrize("problem", [
    "already used once",
    "approvals/web1.yml: commit 5d41402abc4b is not signed by an allowed approver (no signature)",
])
def test_an_approval_with_a_problem_does_not_count_and_the_wait_says_why(problem: str):
    report = drifted()

    p = plan(report, approvals=[(approval_for(report), problem)])

    assert p.action == WAIT and p.approval is None
    assert p.reason == f"awaiting approval: petkeeper approve {pid_of(report)}; host approval " \
                       f"by alice: {problem}"


def test_a_void_approval_does_not_count_and_the_wait_says_why():
    report = drifted()
    stale = approval_for(report, source_sha=NEW_SRC)
    expired = approval_for(report, approver="bob", expires_at="2026-11-25T20:30:00+00:00")

    p = plan(report, approvals=[(stale, None), (expired, None)])

    assert p.action == WAIT and p.approval is None
    assert p.reason.startswith(f"awaiting approval: petkeeper approve {pid_of(report)}; ")
    assert "host approval by alice: approved for source commit" in p.reason
    assert "a new commit voids an approval" in p.reason
    assert "host approval by bob: approval by bob expired at 2026-11-25T20:30:00+00:00" \
        in p.reason


def test_one_valid_approval_among_void_ones_is_enough():
    report = drifted()
    used = approval_for(report, approver="bob")
    yes = approval_for(report)

    p = plan(report, approvals=[(used, "already used once"), (yes, None)])

    assert (p.action, p.approval) == (APPLY, yes)


def test_a_valid_approval_outside_the_window_waits_and_keeps_the_approval():
    report = drifted()
    yes = approval_for(report)

    p = plan(report, windows=[NIGHTLY], approvals=[(yes, None)])

    assert p.action == WAIT and p.approval is yes
    assert p.reason == "approved by alice; outside maintenance windows; 'nightly' opens " \
                       "2026-11-26T02:00:00+00:00"


def test_a_valid_approval_inside_the_window_applies():
    report = drifted()

    p = plan(report, windows=[NIGHTLY], now=IN_WINDOW, approvals=[(approval_for(report), None)])

    assert p.action == APPLY


def test_a_host_with_an_auto_change_and_an_approve_change_waits_for_approval():
    report = drifted("web1", MOTD, CONF)

    p = plan(report, MOTD_HEALS, groups=("backend",), now=IN_WINDOW)

    assert p.decisions == ((AUTO, "motd heals itself"), (APPROVE, "default"))
    assert (p.mode, p.rule) == (APPROVE, "default")
    assert (p.action, p.reason) == (WAIT, f"awaiting approval: petkeeper approve "
                                          f"{pid_of(report)}")


def test_each_changes_decision_is_listed_with_its_rule_in_the_plans_json():
    report = drifted("db1", MOTD, CONF)

    p = plan(report, MOTD_HEALS, DB_HANDS_OFF, groups=("backend",))

    assert p.decisions == ((REPORT, "hands off the database"), (REPORT, "hands off the database"))
    assert p.as_dict() == {
        "plan_id": pid_of(report), "source_sha": SRC, "fingerprint": report.fingerprint,
        "status": DRIFTED, "action": REPORT_ONLY, "reason": p.reason, "mode": REPORT,
        "rule": "hands off the database", "partial": False,
        "decisions": [{"mode": REPORT, "rule": "hands off the database"},
                      {"mode": REPORT, "rule": "hands off the database"}],
        "approval": None}


def test_a_host_drifted_by_its_stats_alone_waits_for_approval_instead_of_crashing():
    events = [{"event": "playbook_on_start", "runner_ident": "r1"},
              {"event": "playbook_on_stats", "runner_ident": "r1",
               "event_data": {"processed": {"web1": 1}, "changed": {"web1": 1}}}]
    unexplained = build_host_reports(events, ["web1"])["web1"]
    assert (unexplained.status, unexplained.changes) == (DRIFTED, ())

    p = plan(unexplained)

    assert p.action == WAIT and p.reason.startswith("awaiting approval")


# --- classify_report and approval_key --------------------------------------------------------

def test_classify_report_gives_each_change_its_class_and_keeps_the_rest():
    report = drifted("web1", MOTD, PROBE)

    classified = classify_report(report, {"converged_source": SRC}, SRC)

    assert classified.classes == (CORRECTIVE, CHECK_BLIND)
    assert dataclasses.replace(classified, classes=()) == report
    assert classify_report(report, {"converged_source": SRC}, NEW_SRC).classes == \
        (INTENTIONAL, CHECK_BLIND)


def test_approval_key_is_stable_and_tells_each_approval_apart():
    yes = approval_for(drifted())
    others = [dataclasses.replace(yes, how=GIT), dataclasses.replace(yes, plan_id="0" * 16),
              dataclasses.replace(yes, approved_at="2026-11-25T20:00:01+00:00"),
              dataclasses.replace(yes, origin="approvals/web1.yml@5d41402abc4b")]

    assert approval_key(yes) == approval_key(dataclasses.replace(yes))
    assert len({approval_key(a) for a in [yes, *others]}) == 5


def test_approval_key_does_not_depend_on_expiry_or_comment():
    # A used approval stays used when someone edits its comment or stretches its expiry.
    yes = approval_for(drifted())

    assert approval_key(yes) == approval_key(dataclasses.replace(
        yes, comment="again", expires_at="2027-01-01T00:00:00+00:00"))


# --- hold_paused: a pause, as decide_plans and apply_step read it ----------------------------

PAUSE = {"by": "alice", "at": "2026-11-25T20:00:00+00:00", "reason": "swapping disks",
         "checks": False}


def test_a_pause_turns_every_apply_into_a_wait_that_names_who_when_and_why():
    web1, web2 = drifted("web1"), drifted("web2")
    plans = {"web1": plan(web1, WEB_HEALS),
             "web2": plan(web2, approvals=[(approval_for(web2), None)])}
    assert {p.action for p in plans.values()} == {APPLY}

    held = hold_paused(plans, PAUSE)

    for host, p in held.items():
        assert (p.action, p.reason) == (
            WAIT, "paused by alice since 2026-11-25T20:00:00+00:00: swapping disks")
        # Only the action and its reason change: the plan id, the rule and the approval stay.
        assert dataclasses.replace(p, action=APPLY, reason=plans[host].reason) == plans[host]
    assert "apply" not in {p.as_dict()["action"] for p in held.values()}


def test_a_pause_leaves_plans_that_apply_nothing_as_they_are():
    db1 = drifted("db1")
    plans = {"web1": plan(drifted(), windows=[NIGHTLY]),  # waits for approval
             "db1": plan(db1, DB_HANDS_OFF, groups=("backend",)),
             "web9": plan(HostReport("web9", CLEAN, (), fingerprint(CLEAN, ())))}

    assert hold_paused(plans, PAUSE) == plans
    assert [p.action for p in plans.values()] == [WAIT, REPORT_ONLY, NOTHING]


def test_without_a_pause_every_plan_is_unchanged():
    plans = {"web1": plan(drifted(), WEB_HEALS)}

    assert hold_paused(plans, None) == plans and plans["web1"].action == APPLY


def test_plan_output_of_a_paused_cycle_says_so_for_the_host_and_at_the_end():
    data = plan_json()
    data["plans"] = {h: p.as_dict() for h, p in hold_paused(
        {"web1": plan(drifted("web1", MOTD), MOTD_HEALS)}, PAUSE).items()}
    data["paused"] = PAUSE

    lines = render_plan(data).splitlines()

    assert "[wait] paused by alice since 2026-11-25T20:00:00+00:00: swapping disks" in lines[0]
    assert lines[-1] == ("paused by alice since 2026-11-25T20:00:00+00:00: swapping disks; "
                         "nothing is applied until petkeeper resume")
    assert not any("[apply]" in line for line in lines)


# --- partial plans: a check that stopped at a check-mode failure ------------------------------

STOPPED = Change("Baseline", "users", "Create the admins' .ssh folders", "ansible.builtin.file",
                 "", True, ("users",), error="chown failed: failed to look up user bob",
                 message="failed in check mode after 'users | Create or remove the admin "
                         "users' would change this host; may pass once that change is applied")


def partial(name: str = "web1") -> HostReport:
    changes = (MOTD, STOPPED)
    return HostReport(name, DRIFTED, changes, fingerprint(DRIFTED, changes, True),
                      "partial check: ...", partial=True)


def test_a_partial_plan_is_never_applied_by_policy_auto_and_says_how_to_approve_it():
    report = partial()

    p = plan(report, WEB_HEALS, MOTD_HEALS, now=IN_WINDOW)

    assert (p.action, p.mode, p.partial) == (WAIT, AUTO, True)
    assert p.reason == ("policy web heals itself: auto, but the check was partial (tasks after a "
                        "check-mode failure were not checked); awaiting approval: petkeeper "
                        f"approve --partial {pid_of(report)}")
    assert p.as_dict()["partial"] is True


def test_a_partial_plan_applies_only_with_an_approval_that_acknowledges_it():
    report = partial()

    blind = plan(report, approvals=[(approval_for(report), None)])
    knowing = plan(report, approvals=[(approval_for(report, partial=True), None)])

    assert blind.action == WAIT and "approve it with petkeeper approve --partial" in blind.reason
    assert blind.reason.startswith("the check was partial")
    assert (knowing.action, knowing.approval) == (APPLY, approval_for(report, partial=True))


def saved_plans(tmp_path: Path, report: HostReport) -> StateDir:
    state = StateDir(tmp_path)
    write_json(state.plans_file, {report.name: plan(report).as_dict()})
    return state


def test_approving_a_partial_plan_without_partial_is_refused_and_records_nothing(
        tmp_path: Path):
    report = partial()
    state = saved_plans(tmp_path, report)

    with pytest.raises(RepoError) as e:
        approve_plan(None, state, None, pid_of(report), "alice", NOW,  # type: ignore[arg-type]
                     NOW + timedelta(hours=4), "")

    assert str(e.value) == (
        f"plan {pid_of(report)} (web1) is partial: its check stopped at a task that failed in "
        "check mode, so the tasks after it were not checked; review it with petkeeper plan, "
        f"then approve with --partial {pid_of(report)}")
    assert not state.approvals.exists()


def test_approving_a_partial_plan_with_partial_records_the_acknowledgement(tmp_path: Path):
    report = partial()
    state = saved_plans(tmp_path, report)

    approval = approve_plan(None, state, None, pid_of(report), "alice",  # type: ignore[arg-type]
                            NOW, NOW + timedelta(hours=4), "", partial=True)

    assert approval.partial is True
    assert read_json(state.approvals / f"{pid_of(report)}.json", {})["partial"] is True
    assert plan(report, approvals=[(approval, None)]).action == APPLY


# --- the ledger's last clean check -----------------------------------------------------------

def test_clean_hosts_are_recorded_with_the_source_and_time_of_their_check(tmp_path: Path):
    state = StateDir(tmp_path)
    ledger = {"web1": {"converged_source": NEW_SRC}}
    reports = {"web1": HostReport("web1", CLEAN, (PROBE,), fingerprint(CLEAN, (PROBE,))),
               "db1": drifted("db1")}

    record_clean_checks(state, ledger, reports, SRC, NOW)

    assert read_json(state.ledger_file, {}) == {"web1": {
        "converged_source": NEW_SRC, "clean": {"source": SRC, "checked_at": NOW.isoformat()}}}
    later = classify_report(drifted("web1"), read_json(state.ledger_file, {})["web1"], SRC)
    assert later.classes == (CORRECTIVE,)


def test_a_check_with_no_clean_host_does_not_rewrite_the_ledger(tmp_path: Path):
    state = StateDir(tmp_path)

    record_clean_checks(state, {}, {"db1": drifted("db1")}, SRC, NOW)

    assert not state.ledger_file.exists()


# --- output.render_plan ----------------------------------------------------------------------

def plan_json(*applies: ApplyResult) -> dict[str, Any]:
    web1 = classify_report(drifted("web1", MOTD, CONF), {"converged_source": SRC}, SRC)
    db1 = HostReport("db1", CLEAN, (), fingerprint(CLEAN, ()))
    plans = {"web1": plan(web1, MOTD_HEALS), "db1": plan(db1, groups=("backend",))}
    return {"run_id": "20261125T210000Z-a1b2c3", "source_sha": SRC, "fetch_error": None,
            "hosts": {"web1": web1.as_dict(), "db1": db1.as_dict()},
            "plans": {h: p.as_dict() for h, p in plans.items()},
            "applies": [a.as_dict() for a in applies], "reports": None}


def test_plan_output_shows_each_hosts_plan_id_action_reason_and_each_changes_decision():
    pid = plan_id("web1", SRC, drifted("web1", MOTD, CONF).fingerprint)
    db1_pid = plan_id("db1", SRC, fingerprint(CLEAN, ()))

    assert render_plan(plan_json()).splitlines() == [
        f"web1: drifted  plan {pid}  [wait] awaiting approval: petkeeper approve {pid}",
        "  ~ motd | Write motd (ansible.builtin.copy)  [corrective; auto by motd heals itself]",
        "      --- before: /etc/motd",
        "      +++ after: roles/motd/files/motd",
        "      -Hi",
        "      +Welcome",
        "  ~ Write pet.conf (ansible.builtin.copy)  [corrective; approve by default]",
        "      -a",
        "      +b",
        f"db1: clean  plan {db1_pid}  [nothing] nothing to correct",
        "",
        f"1 clean, 1 drifted. Source {SRC[:12]}, run 20261125T210000Z-a1b2c3.",
    ]


def test_plan_output_lists_each_apply_with_its_approver_and_what_still_changes():
    converged = ApplyResult("db1", "0123456789abcdef", SRC, "converged", "alice", None,
                            "drifted", "clean")
    flapping = ApplyResult("web1", "fedcba9876543210", SRC, "not converged",
                           "policy: auto (motd heals itself)", None, "drifted", "drifted",
                           ("Write motd", "Write pet.conf"))

    lines = render_plan(plan_json(converged, flapping)).splitlines()

    assert lines[-5:-2] == [
        "applied plan 0123456789abcdef to db1: converged (approved by alice; drifted -> clean)",
        "applied plan fedcba9876543210 to web1: not converged (approved by policy: auto (motd "
        "heals itself); drifted -> drifted)",
        "    still changing: Write motd, Write pet.conf",
    ]


def test_plan_output_for_a_host_without_a_plan_shows_dashes():
    data = plan_json()
    del data["plans"]["web1"]

    lines = render_plan(data).splitlines()

    assert lines[0].rstrip() == "web1: drifted  plan -  [-]"
    assert lines[1].endswith("(ansible.builtin.copy)  [corrective; - by -]")


def test_plan_output_shows_why_a_check_blind_failure_could_not_be_judged_and_its_error():
    report = partial()
    data = {"run_id": "r", "source_sha": SRC, "hosts": {"web1": report.as_dict()},
            "plans": {"web1": plan(report).as_dict()}, "applies": [], "reports": None}

    lines = render_plan(data).splitlines()

    assert lines[1] == "    partial check: ..."
    i = lines.index("  ? users | Create the admins' .ssh folders (ansible.builtin.file)  "
                    "[-; approve by default]")
    assert lines[i + 1:i + 3] == [
        "      failed in check mode after 'users | Create or remove the admin users' would "
        "change this host; may pass once that change is applied",
        "      error: chown failed: failed to look up user bob"]
