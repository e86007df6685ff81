"""agent.cycle.steps: the exit code a cycle ends with, and a stage that only moves forward."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.adapters.state import StateDir
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
from agent.cycle.source import Source
from agent.cycle.steps import EXIT_CLEAN, EXIT_DRIFT, EXIT_ERROR, Cycle, Stage

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
