"""petkeeper check, end to end: real SSH hosts, a real bare Git remote, real ansible-runner."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from agent.config import load_config
from agent.cycle.steps import run_check
from tests.baseline import Saved
from tests.conftest import (
    GitRemote,
    check_json,
    pet_hosts,
    pets_repo_files,
    settle,
    write_agent_config,
)
from tests.unit.test_cli import Run, cli  # noqa: F401 (the in-process fixture)

pytestmark = pytest.mark.hosts


@dataclass
class Baseline:
    config: Path
    remote: GitRemote
    code: int
    report: dict
    saved: Saved


def prepare_hosts(pool) -> None:
    """alpha as a converge leaves it (clean), beta so and then edited by hand (drifted): shell
    writes (tests.conftest.settle), not an Ansible run; the checks prove the rest."""
    settle(pool, "alpha", "beta")
    pool.run("beta", "echo 'edited by hand' >> /etc/motd")


@pytest.fixture(scope="module")
def baseline(host_pool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Baseline]:
    """alpha clean, beta drifted, ghost down, and the first check of all three: built once
    for the module; each test gets it back as it was built (the `fleet` fixture)."""
    root = tmp_path_factory.mktemp("check")
    remote = GitRemote(root / "git")
    remote.commit(pets_repo_files(pet_hosts(host_pool, "alpha", "beta", ghost=True)))
    prepare_hosts(host_pool)
    config = write_agent_config(root / "agent.yml", remote.url, root / "state", host_pool)
    code, report = check_json(config)
    yield Baseline(config, remote, code, report,
                   Saved(root / "saved", root / "state", remote.bare, remote.work))
    host_pool.run("beta", "sed -i '/edited by hand/d' /etc/motd")  # beta converged again


@pytest.fixture
def fleet(baseline: Baseline, host_pool) -> Path:
    """The baseline's agent config, with its state, remote and hosts as the baseline left them."""
    baseline.saved.restore()
    prepare_hosts(host_pool)
    return baseline.config


@pytest.fixture
def remote(fleet: Path, baseline: Baseline) -> GitRemote:
    """The baseline's remote (restored by `fleet`), in place of tests.conftest's fresh one."""
    return baseline.remote


def check_in_process(run: Run, config: Path, *args: str) -> tuple[int, dict]:
    """`petkeeper check --json` as the CLI's main() in this process, through RUN (the `cli`
    fixture; the baseline's check is a child process, as a person or cron runs it): its exit
    code and report."""
    code, out, err = run("--config", str(config), "check", "--json", *args)
    assert out.strip(), err
    return code, json.loads(out)


def checked_at(remote: GitRemote) -> datetime:
    """When the baseline's check checked beta, as its committed report says."""
    t0 = yaml.safe_load(remote.show("petkeeper/hosts/beta", "hosts/beta.yml"))["checked_at"]
    return t0 if isinstance(t0, datetime) else datetime.fromisoformat(t0)


def test_check_reports_each_host_status_and_commits_one_report_per_host(baseline, remote):
    code, report = baseline.code, baseline.report  # the baseline's check, all hosts

    hosts = report["hosts"]
    assert {n: h["status"] for n, h in hosts.items()} == {
        "alpha": "clean", "beta": "drifted", "ghost": "unreachable"}
    assert code == 1  # an unreachable host is an error, never "clean"
    [motd] = [c for c in hosts["beta"]["changes"] if not c["check_blind"]]
    assert motd["task"] == "Write the message of the day" and motd["role"] == "motd"
    assert motd["module"] == "ansible.builtin.copy"
    assert "-edited by hand" in motd["diff"]
    blind = [c for c in hosts["alpha"]["changes"] if c["check_blind"]]
    assert [c["task"] for c in blind] == ["Refresh the package cache"]
    assert report["source_sha"] == remote.rev("main")
    assert "connect" in hosts["ghost"]["message"].lower()

    subjects = remote.log()
    assert sorted(subjects) == ["alpha: clean (0 changes, 1 check-blind)",
                                "beta: drifted (1 change, 1 check-blind)",
                                "ghost: unreachable (0 changes)"]
    trailers = remote.log(fmt="%(trailers:key=Petkeeper-Host,valueonly)%(trailers:key="
                              "Petkeeper-Status,valueonly)%(trailers:key=Petkeeper-Source,"
                              "valueonly)%(trailers:key=Petkeeper-Run,valueonly)%x00")
    for block in trailers:
        host, status, source, run = block.split()
        assert status == hosts[host]["status"]
        assert source == report["source_sha"] and run == report["run_id"]
    beta = yaml.safe_load(remote.show("petkeeper/hosts/beta", "hosts/beta.yml"))
    assert beta["fingerprint"] == hosts["beta"]["fingerprint"]
    assert beta["changes"] == hosts["beta"]["changes"]
    text = remote.show("petkeeper/hosts/beta", "hosts/beta.yml")
    assert text.startswith("# beta: drifted (1 change, 1 check-blind)")
    assert remote.rev("main") == report["source_sha"]  # the source branch is never written


def test_unchanged_drift_keeps_its_fingerprint_makes_no_new_commit_and_exits_two(
        fleet, remote, baseline):
    first = baseline.report
    commits = remote.log()
    # 23 hours after the baseline's check: the heartbeat period (a day) has not passed yet
    second = run_check(replace(load_config(fleet), limit="alpha,beta"),
                       now=checked_at(remote) + timedelta(hours=23))

    assert second.exit_code == 2  # drift (a clean host alone exits 0: test_state_dir_is_...)
    assert second.run_id != first["run_id"]
    for host in ("alpha", "beta"):
        assert second.hosts[host].fingerprint == first["hosts"][host]["fingerprint"]
    assert second.publish is not None and second.publish.committed == ()
    assert remote.log() == commits


def test_a_different_drift_gives_a_new_fingerprint_and_a_new_commit(
        fleet, remote, host_pool, baseline, cli: Run):  # noqa: F811
    first = baseline.report
    host_pool.run("beta", "echo 'edited again' >> /etc/motd")
    try:
        _, second = check_in_process(cli, fleet, "--limit", "beta")
    finally:
        host_pool.run("beta", "sed -i '/edited again/d' /etc/motd")

    assert second["hosts"]["beta"]["fingerprint"] != first["hosts"]["beta"]["fingerprint"]
    assert second["reports"]["committed"] == {"beta": ["hosts/beta.yml"]}
    assert len(remote.log("beta")) == 2


def test_heartbeat_commits_an_unchanged_report_once_the_period_passed(fleet, remote, tmp_path):
    config = load_config(fleet)
    # The baseline's check committed each host's first report, checked at t0. (Before the
    # period, no commit: test_unchanged_drift_keeps_its_fingerprint_..., at t0 + 23 hours.)
    beat = run_check(config, now=checked_at(remote) + timedelta(hours=24, seconds=1))

    assert beat.publish is not None and set(beat.publish.committed_by_host()) == {
        "alpha", "beta", "ghost"}
    assert len(remote.log()) == 6
    assert "(heartbeat)" in remote.log(fmt="%b")[0]


def test_new_source_commit_is_checked_and_named_in_the_reports(
        fleet, remote, cli: Run):  # noqa: F811
    files = pets_repo_files({})
    new_sha = remote.commit({"roles/motd/defaults/main.yml":
                             files["roles/motd/defaults/main.yml"].replace("Managed", "Kept")})
    code, report = check_in_process(cli, fleet, "--limit", "alpha")

    assert code == 2 and report["source_sha"] == new_sha
    assert report["hosts"]["alpha"]["status"] == "drifted"
    assert f"Petkeeper-Source: {new_sha}" in remote.log(fmt="%B%x00")[0]


def test_tags_extra_vars_and_config_after_subcommand_work_like_ansible_pull(
        fleet, cli: Run):  # noqa: F811
    code, out, _ = cli("check", "--config", str(fleet), "--json", "--limit", "alpha", "--tags",
                       "conf", "-e", "pet_mode=racing")
    report = json.loads(out)
    tasks = [c["task"] for c in report["hosts"]["alpha"]["changes"]]
    assert tasks == ["Write the pet config", "Refresh the package cache"]
    assert "+mode=racing" in report["hosts"]["alpha"]["changes"][0]["diff"]
    assert code == 2


def test_status_shows_the_last_cycle_per_host(fleet, baseline, cli: Run):  # noqa: F811
    report = baseline.report  # the last cycle: the baseline's check
    code, out, _ = cli("--config", str(fleet), "status", "--json")
    status = json.loads(out)

    assert code == 1
    assert status["last_run"]["run_id"] == report["run_id"]
    assert status["last_run"]["reports"]["queued"] == 0
    beta = status["hosts"]["beta"]
    assert beta["status"] == "drifted" and beta["changes"] == 2
    assert beta["source_sha"] == report["source_sha"] and beta["checked_at"]
    human = cli("--config", str(fleet), "status")[1]
    assert beta["check_blind"] == 1
    assert "beta: drifted (1 change, 1 check-blind)" in human and "all pushed" in human


def test_state_dir_is_private_and_artifacts_stay_bounded_and_scrubbed(
        fleet, tmp_path, remote, host_pool, cli: Run):  # noqa: F811
    state = load_config(fleet).state_dir  # the baseline's check ran there: one run
    fleet = write_agent_config(tmp_path / "agent.yml", remote.url, state, host_pool,
                               limit="alpha", ansible={
                                   "private_key_file": str(host_pool.client_key),
                                   "known_hosts_file": str(host_pool.known_hosts),
                                   "artifacts_keep": 1})
    config = load_config(fleet)
    # keep + 1 runs in all: the baseline's, and this one (a clean host alone exits 0)
    assert check_in_process(cli, fleet)[0] == 0
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    artifacts = list((state / "runner" / "artifacts").iterdir())
    assert 0 < len(artifacts) <= config.ansible.artifacts_keep
    leftovers = [p for a in artifacts for p in a.iterdir() if p.name in ("command", "stdout")]
    assert leftovers == []
    assert len(list((state / "trees").iterdir())) == 1
