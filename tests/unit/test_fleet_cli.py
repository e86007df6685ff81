"""`petkeeper fleet` and `approve --via-git` on bad input, in process, over real repositories:
one clear line, a non-zero exit, nothing half-written, the other hosts still shown."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.cli import main
from agent.core.drift import DRIFTED
from agent.cycle.apply import ApplyResult, apply_record
from agent.cycle.record import RunInfo, drift_records, publish
from tests.unit.test_reportstore import (
    SOURCE,
    agent,
    branches,
    check,
    config_for,
    git,
    host,
    put_file,
)


@pytest.fixture(autouse=True)
def own_logging() -> Iterator[None]:
    """main() sets up logging to the stderr pytest captures here: put back what was there."""
    root, agent_log = logging.getLogger(), logging.getLogger("agent")
    handlers, level = root.handlers[:], agent_log.level
    yield
    root.handlers[:] = handlers
    agent_log.setLevel(level)


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    bare = tmp_path / "pets.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    work = tmp_path / "work"
    git("init", "--quiet", "--initial-branch=main", str(work))
    (work / "site.yml").write_text("- hosts: all\n")
    git("add", "--all", cwd=work)
    git("-c", "user.name=A", "-c", "user.email=a@x", "commit", "-qm", "pets", cwd=work)
    git("push", "--quiet", str(bare), "HEAD:main", cwd=work)
    return bare


def fleet(remote: Path, tmp_path: Path, *args: str) -> list[str]:
    return ["fleet", "--repo", f"file://{remote}", "--cache", str(tmp_path / "cache.git"), *args]


def test_a_repo_without_reports_is_one_line_and_exit_1(remote, tmp_path, capsys):
    code = main(fleet(remote, tmp_path))

    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.splitlines() == [f"petkeeper: error: no reports in file://{remote}: no branch "
                                "petkeeper/hosts/<host> and no petkeeper/reports; run an agent's "
                                "check first, or give the URL its reports go to (--reports-url, "
                                "reports.url)"]


def test_an_unreadable_report_is_one_line_and_the_other_hosts_still_show(remote, tmp_path,
                                                                         capsys):
    check(agent(tmp_path, "a", remote), config_for(remote), {"web1": host("web1"),
                                                             "web2": host("web2")},
          datetime.now(UTC))
    put_file(remote, tmp_path, "petkeeper/hosts/web1", "hosts/web1.yml", "status: [clean\n")

    code = main(fleet(remote, tmp_path))

    out, err = capsys.readouterr()
    assert code == 1
    [line] = err.splitlines()
    assert line.startswith("petkeeper: error: hosts/web1.yml (branch petkeeper/hosts/web1 at ")
    assert "not valid YAML" in line
    assert out.splitlines()[0].startswith("web1: unreadable; hosts/web1.yml")
    assert out.splitlines()[1].startswith("web2: clean, 0 changes; checked ")


def test_a_missing_source_branch_names_the_option(remote, tmp_path, capsys):
    check(agent(tmp_path, "a", remote), config_for(remote), {"web1": host("web1")})

    code = main(fleet(remote, tmp_path, "--branch", "nope"))

    assert code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"petkeeper: error: branch 'nope' not found in file://{remote} (it has: main); give the "
        "source branch with --branch (repo.branch)"]


@pytest.mark.parametrize(("args", "problem"), [
    (["--stale", "soon"],
     "petkeeper: error: fleet: --stale: expected a duration like 48h, got 'soon'"),
    (["--since", "yesterday-ish", "--html", "x.html"],
     "petkeeper: error: fleet: --since: expected a duration like 7d or an ISO 8601 date like "
     "2026-11-01, got 'yesterday-ish'")])
def test_a_bad_option_is_one_line_naming_it(remote, tmp_path, capsys, args, problem):
    check(agent(tmp_path, "a", remote), config_for(remote), {"web1": host("web1")})

    assert main(fleet(remote, tmp_path, *args)) == 1
    assert capsys.readouterr().err.splitlines() == [problem]
    assert not (tmp_path / "x.html").exists()


def test_a_bad_repo_url_names_the_option(tmp_path, capsys):
    assert main(["fleet", "--repo", "pets.example.org:pets", "--cache",
                 str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("petkeeper: error: --repo: repo.url: expected a Git URL")


def test_approving_a_plan_that_is_not_waiting_is_one_line_and_writes_nothing(remote, tmp_path,
                                                                            capsys):
    check(agent(tmp_path, "a", remote), config_for(remote), {"web1": host("web1")})
    before = branches(remote)

    code = main(["approve", "0123456789abcdef", "--via-git", "--repo", f"file://{remote}",
                 "--cache", str(tmp_path / "cache.git")])

    assert code == 1
    assert capsys.readouterr().err.splitlines() == [
        "petkeeper: error: plan 0123456789abcdef: no host's newest report shows it; run "
        "petkeeper fleet and approve a plan id it lists as waiting"]
    assert branches(remote) == before


def test_a_host_an_undo_holds_shows_the_hold_in_text_json_and_html_until_released(
        remote, tmp_path, capsys):
    """What the agent's record step commits while an undo holds web1 (its report's `held`
    and the undo's apply record), read back by `petkeeper fleet` from the reports branches."""
    mirror, config = agent(tmp_path, "a", remote), config_for(remote)
    aid = "20261125T200000Z-ab12cd/web1"
    hold = {"apply_id": aid, "by": "alice", "at": "2026-11-25T20:05:00+00:00", "seen": None}
    reports = {"web1": host("web1", DRIFTED), "web2": host("web2", DRIFTED)}
    now = datetime.now(UTC).replace(microsecond=0)
    undo = ApplyResult(host="web1", plan_id="5d1c0e2a9b7f4c3d", source_sha=SOURCE,
                       approved_by="alice", approval=None, run_id="run-undo",
                       started=now.isoformat(), finished=now.isoformat(), result="undone",
                       before_status="drifted",
                       after_status="undone", apply_id="run-undo/web1", undo_of=aid)

    def record(held: dict | None, when: datetime) -> None:
        run = RunInfo(f"run-{when:%H%M%S}", SOURCE, when, "agent", held=held)
        publish(mirror, config, reports, lambda base: [
            *drift_records(mirror, base, reports, run, config.reports.heartbeat),
            *([apply_record(undo)] if held else [])])

    record({"web1": hold}, now)
    page = tmp_path / "fleet.html"

    assert main(fleet(remote, tmp_path, "--html", str(page))) == 2
    said = f"held by undo of {aid} (alice, 2026-11-25T20:05:00+00:00): nothing is corrected " \
        "until petkeeper release web1 or a new commit"
    web1, web2 = capsys.readouterr().out.splitlines()[:2]
    assert said in web1 and f"undo of {aid}: undone (plan 5d1c0e2a9b7f4c3d" in web1, web1
    assert "held" not in web2
    assert said in page.read_text() and ">undo<" in page.read_text()
    assert main(fleet(remote, tmp_path, "--json")) == 2
    rows = {r["host"]: r for r in json.loads(capsys.readouterr().out)["hosts"]}
    assert rows["web1"]["held"] == {"apply_id": aid, "by": "alice",
                                    "at": "2026-11-25T20:05:00+00:00"}
    assert rows["web1"]["last_apply"]["undo_of"] == aid and rows["web2"]["held"] is None

    record(None, now + timedelta(seconds=1))  # petkeeper release web1: the next report
    assert main(fleet(remote, tmp_path, "--json")) == 2
    rows = {r["host"]: r for r in json.loads(capsys.readouterr().out)["hosts"]}
    assert rows["web1"]["held"] is None
