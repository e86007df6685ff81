"""agent.cycle.steps: the exit code a cycle ends with, and a stage that only moves forward."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.adapters.state import StateDir, read_status
from agent.config import Config, RepoConfig
from agent.core.drift import (
    CLEAN,
    DRIFTED,
    FAILED,
    STATUSES,
    UNKNOWN,
    UNREACHABLE,
    Change,
    HostReport,
)
from agent.cycle.apply import ApplyResult
from agent.cycle.decide import Plan
from agent.cycle.outcome import result_line
from agent.cycle.record import PublishResult
from agent.cycle.source import Source
from agent.cycle.steps import EXIT_CLEAN, EXIT_DRIFT, EXIT_ERROR, Cycle, Stage, save_step

PROBE = Change("Baseline", None, "Run a command", "ansible.builtin.command", "", True)


def cycle_with(statuses: dict[str, str], fetch_error: str | None = None,
               tmp: Path = Path("/nonexistent")) -> Cycle:
    c = Cycle(Config(repo=RepoConfig(url="file:///srv/git/pets.git")), StateDir(tmp / "state"),
              "20261125T203622Z-a1b2c3", datetime(2026, 11, 25, 20, 36, 22, tzinfo=UTC))
    c.source = Source("8f14e45fceea167a5a36dedd4bea2543b2c1e7c8", tmp / "tree", fetch_error)
    c.hosts = {name: HostReport(name, status) for name, status in statuses.items()}
    return c


def test_exit_codes_are_terraform_like():
    assert (EXIT_CLEAN, EXIT_ERROR, EXIT_DRIFT) == (0, 1, 2)


@pytest.mark.parametrize(("statuses", "code"), [
    ({"web1": CLEAN}, EXIT_CLEAN),
    ({"web1": CLEAN, "db1": CLEAN}, EXIT_CLEAN),
    ({"web1": DRIFTED}, EXIT_DRIFT),
    ({"web1": CLEAN, "db1": DRIFTED}, EXIT_DRIFT),
    ({"web1": FAILED}, EXIT_ERROR),
    ({"web1": UNREACHABLE}, EXIT_ERROR),
    ({"web1": UNKNOWN}, EXIT_ERROR),
    ({"web1": DRIFTED, "ghost": UNREACHABLE}, EXIT_ERROR),
    ({"web1": CLEAN, "db9": UNKNOWN}, EXIT_ERROR),
])
def test_exit_code_follows_the_worst_host(statuses: dict[str, str], code: int):
    assert cycle_with(statuses).exit_code == code


def test_a_cycle_that_checked_no_host_is_an_error_not_clean():
    assert cycle_with({}).exit_code == EXIT_ERROR


def test_check_blind_changes_alone_leave_the_exit_clean():
    c = cycle_with({})
    c.hosts = {"web1": HostReport("web1", CLEAN, (PROBE,))}

    assert c.exit_code == EXIT_CLEAN


@pytest.mark.parametrize("status", [CLEAN, DRIFTED])
def test_a_failed_fetch_makes_the_exit_an_error_even_when_hosts_are_fine(status: str):
    assert cycle_with({"web1": status}, fetch_error="git fetch timed out").exit_code == EXIT_ERROR


def test_every_status_drift_can_report_has_an_exit_code():
    for status in STATUSES:
        assert cycle_with({"web1": status}).exit_code in (EXIT_CLEAN, EXIT_ERROR, EXIT_DRIFT)
    assert {s for s in STATUSES if cycle_with({"web1": s}).exit_code != EXIT_ERROR} == {
        CLEAN, DRIFTED}


# --- stage -----------------------------------------------------------------------------------

def test_stages_are_ordered_as_the_cycle_runs():
    assert list(Stage) == sorted(Stage)
    assert [s.name for s in Stage] == ["STARTED", "FETCHED", "TARGETED", "RECOVERED",
                                       "CHECKED", "DECIDED", "RECORDED", "APPLIED",
                                       "APPLIES_RECORDED", "SAVED"]


def test_every_step_list_moves_the_stage_forward_only():
    from agent.cycle.steps import CHECK_STEPS, RUN_STEPS

    assert tuple(s for s in RUN_STEPS if s in CHECK_STEPS) == CHECK_STEPS


def test_a_new_cycle_starts_at_started():
    assert cycle_with({}).stage is Stage.STARTED


def test_stage_moves_forward_and_may_stay():
    c = cycle_with({})

    c.advance(Stage.FETCHED)
    c.advance(Stage.FETCHED)
    c.advance(Stage.CHECKED)

    assert c.stage is Stage.CHECKED


def test_stage_cannot_go_backwards_and_stays_where_it_was():
    c = cycle_with({})
    c.advance(Stage.RECORDED)

    with pytest.raises(RuntimeError, match="cannot go backwards: RECORDED -> FETCHED"):
        c.advance(Stage.FETCHED)

    assert c.stage is Stage.RECORDED


# --- what a cycle leaves in status.json and its one result line -------------------------------

def planned(host: str, action: str, pid: str) -> Plan:
    return Plan(host, pid, "8f14e45fceea", "f" * 64, DRIFTED, action, "awaiting approval")


def applied(host: str, pid: str, result: str = "converged") -> ApplyResult:
    return ApplyResult(host, pid, "8f14e45fceea", result, "alice", None, DRIFTED, CLEAN,
                       started="2026-11-25T20:37:00+00:00", finished="2026-11-25T20:38:05+00:00",
                       run_id="20261125T203622Z-a1b2c3")


@pytest.mark.parametrize(("passed", "code"), [(True, EXIT_CLEAN), (False, EXIT_ERROR)])
def test_a_converged_apply_whose_repo_tests_failed_makes_the_exit_an_error(passed: bool,
                                                                          code: int):
    c = cycle_with({"web1": CLEAN})
    c.applies = [dataclasses.replace(applied("web1", "30c4aa367513c4ee"), tests={
        "passed": passed, "tests": 2, "failures": 0 if passed else 1, "errors": 0,
        "failed": [] if passed else ["tests.test_pet::test_motd[ansible://web1]"]})]

    assert c.exit_code == code


def test_status_keeps_each_hosts_own_check_time_and_last_apply_across_cycles(tmp_path: Path):
    first = cycle_with({"web1": DRIFTED, "db1": CLEAN}, tmp=tmp_path)
    first.state.ensure()
    first.checked = {"web1": "2026-11-25T20:38:05+00:00", "db1": "2026-11-25T20:36:50+00:00"}
    first.plans = {"web1": planned("web1", "apply", "30c4aa367513c4ee")}
    first.applies = [applied("web1", "30c4aa367513c4ee")]
    first.publish = PublishResult((("web1", "hosts/web1.yml"), ("web1", "applies/web1.yml"),
                                   ("db1", "hosts/db1.yml")), 0, True, push="pushed")
    save_step(first)
    later = cycle_with({"db1": DRIFTED}, tmp=tmp_path)  # --limit db1: web1 not checked
    later.checked = {"db1": "2026-11-25T21:00:40+00:00"}
    later.advance(Stage.DECIDED)
    save_step(later)

    status = read_status(later.state)
    assert status is not None
    assert "hosts" not in status["last_run"] and "plans" not in status["last_run"]
    assert status["hosts"]["db1"]["checked_at"] == "2026-11-25T21:00:40+00:00"
    assert "last_apply" not in status["hosts"]["db1"] and "plan" not in status["hosts"]["db1"]
    web1 = status["hosts"]["web1"]  # as the first cycle left it
    assert web1["checked_at"] == "2026-11-25T20:38:05+00:00"
    assert web1["last_apply"] == {"at": "2026-11-25T20:38:05+00:00", "result": "converged",
                                  "plan_id": "30c4aa367513c4ee", "approved_by": "alice",
                                  "run_id": "20261125T203622Z-a1b2c3"}
    assert json.loads(first.state.status_file.read_text())["last_run"]["run_id"] == later.run_id


def test_the_result_line_tells_counts_source_commits_waits_and_applies():
    c = cycle_with({"web1": CLEAN, "web2": DRIFTED, "db1": DRIFTED, "ghost": UNREACHABLE})
    c.plans = {"web2": planned("web2", "wait", "30c4aa367513c4ee"),
               "db1": planned("db1", "apply", "8381b01fc31e59fe")}
    c.applies = [applied("db1", "8381b01fc31e59fe", "not converged")]
    c.publish = PublishResult((("web2", "hosts/web2.yml"), ("db1", "hosts/db1.yml"),
                               ("db1", "applies/db1.yml")), 3, False, "no route", push="failed")

    assert result_line(c, "daemon run") == (
        "cycle 20261125T203622Z-a1b2c3 (daemon run) exit 1: 1 clean, 2 drifted, 1 unreachable; "
        "source 8f14e45fceea; committed web2 (1), db1 (2), failed; waiting: web2 plan "
        "30c4aa367513c4ee; applied: db1 plan 8381b01fc31e59fe not converged")
    c.plans, c.applies, c.publish = {}, [], PublishResult((), 0, False)
    assert result_line(c, "check").endswith("source 8f14e45fceea; nothing committed, nothing to "
                                            "push; nothing waits; applied: nothing")
