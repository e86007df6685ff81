"""run in a CI pipeline (agent.cycle.pipeline): a persistent --state-dir, and no host another
agent manages unless --take-over."""

from __future__ import annotations

import socket
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from agent.adapters.state import StateDir
from agent.cli import main
from agent.core.drift import DRIFTED
from agent.cycle.decide import APPLY, WAIT, Plan
from agent.cycle.pipeline import hold_foreign, owner_step, temporary_reason
from agent.cycle.record import RunInfo, drift_records, publish
from agent.cycle.steps import Cycle, record_step
from tests.unit.test_reportstore import SOURCE, WHEN, agent, branches, config_for, git, host

DAY = 86400.0


def plan(host: str, action: str = APPLY) -> Plan:
    return Plan(host=host, plan_id="p" + host, source_sha="a" * 40, fingerprint="f" * 64,
                status="drifted", action=action, reason="policy auto")


@pytest.mark.parametrize(("path", "env", "temporary"), [
    ("/tmp/state", {}, True), ("/var/tmp/x", {}, True), ("/dev/shm/x", {}, True),
    ("/home/runner/work/_temp/state", {"RUNNER_TEMP": "/home/runner/work/_temp"}, True),
    ("/builds/pets/state", {"CI_PROJECT_DIR": "/builds/pets"}, True),
    ("/var/lib/petkeeper-ci", {"RUNNER_TEMP": "/home/runner/work/_temp"}, False),
    ("/var/lib/petkeeper", {}, False)])
def test_a_state_dir_that_does_not_outlive_the_job_is_temporary(path: str, env: dict,
                                                                temporary: bool):
    assert (temporary_reason(Path(path), env) is not None) == temporary


def test_run_with_a_temporary_state_dir_is_one_line_exit_1_and_nothing_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    config = tmp_path / "agent.yml"
    config.write_text(yaml.safe_dump({"repo": {"url": "file:///nowhere.git"},
                                      "state_dir": "/var/lib/petkeeper-unused"}))
    state = Path("/tmp") / f"petkeeper-ci-test-{tmp_path.name}"

    code = main(["--config", str(config), "run", "--state-dir", str(state)])

    err = capsys.readouterr().err
    assert code == 1 and err.splitlines() == [
        f"petkeeper: error: command line: --state-dir {state}: it is under /tmp, which does "
        "not outlive the job; run keeps used approvals, the journal, the no-rollback mark and "
        "the lock there, and a fresh one would let an approval be replayed: give a folder of "
        "the runner that persists (e.g. /var/lib/petkeeper-ci)"]
    assert not state.exists()


def test_a_host_another_agent_reports_on_is_held_unless_take_over():
    plans = {"web1": plan("web1"), "web2": plan("web2"), "web3": plan("web3"),
             "db1": plan("db1", WAIT)}
    owners = {"web1": "pet-web1", "web2": "ci-runner", "db1": "pet-db1"}

    held = hold_foreign(plans, owners, "ci-runner", take_over=False)

    assert held["web1"].action == WAIT and "managed by agent pet-web1" in held["web1"].reason
    assert "--take-over" in held["web1"].reason
    assert held["web2"].action == APPLY  # our own reports
    assert held["web3"].action == APPLY  # no report yet: nobody manages it
    assert held["db1"] == plans["db1"]
    assert hold_foreign(plans, owners, "ci-runner", take_over=True) == plans


def test_check_options_of_a_checkout_need_tree(capsys: pytest.CaptureFixture[str]):
    assert main(["check", "--state-dir", "/var/lib/x"]) == 1
    assert "go with --tree DIR" in capsys.readouterr().err


@pytest.mark.parametrize("take_over", [False, True])
def test_a_pipeline_run_never_writes_the_report_of_a_host_another_agent_reports_on(
        tmp_path: Path, take_over: bool):
    """Were the pipeline's report of web1 the newest, it would name the pipeline as web1's agent
    and the next run would apply there: web1's branch stays its own agent's (unless
    --take-over), web2, which nobody reported on, gets the pipeline's report."""
    bare = tmp_path / "pets.git"
    git("init", "--quiet", "--bare", str(bare))
    config = replace(config_for(bare), state_dir=tmp_path / "state")
    pet = agent(tmp_path, "pet-web1", bare)
    drifted = {"web1": host("web1", DRIFTED)}
    publish(pet, config, drifted, lambda base: drift_records(
        pet, base, drifted, RunInfo("run-pet", SOURCE, WHEN, "pet-web1"), DAY))
    before = branches(bare)["petkeeper/hosts/web1"]
    state = StateDir(config.state_dir)
    state.ensure()
    cycle = Cycle(config, state, "run-ci", WHEN, mirror=agent(tmp_path, "ci", bare),
                  source=SimpleNamespace(sha=SOURCE, rejected=None),  # type: ignore[arg-type]
                  hosts={"web1": host("web1", DRIFTED), "web2": host("web2")},
                  plans={"web1": plan("web1")}, clock=lambda: WHEN + timedelta(hours=1))

    owner_step(take_over)(cycle)
    record_step(cycle)

    after = branches(bare)
    assert (after["petkeeper/hosts/web1"] == before) != take_over
    assert cycle.plans["web1"].action == (APPLY if take_over else WAIT)
    report = yaml.safe_load(git("--git-dir", str(bare), "show",
                                "petkeeper/hosts/web2:hosts/web2.yml"))
    assert report["checked_by"] == socket.gethostname()
