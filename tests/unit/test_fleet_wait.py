"""`petkeeper fleet --wait-for COMMIT` (agent.operate.fleet_wait): a pipeline waits after merge
until every agent checked the merged commit. Real bare repositories and git: the agents'
reports are published as their record step does, between two readings; no Ansible, and a
clock of the test's own instead of sleeping."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.core.drift import CLEAN, DRIFTED
from agent.cycle.record import RunInfo, drift_records, publish
from agent.errors import AgentError
from agent.operate.fleet_git import fleet_request
from agent.operate.fleet_wait import WaitRequest, fleet_view, hosts_behind, wait_request
from tests.conftest import GitRemote
from tests.unit.test_fleet_cli import own_logging  # noqa: F401 (main() sets up logging)
from tests.unit.test_reportstore import agent, branches, config_for, host

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def source(tmp_path: Path) -> GitRemote:
    """The GitOps repo, and a clone to merge into its main branch."""
    return GitRemote(tmp_path / "git")


def report(tmp_path: Path, source: GitRemote, name: str, sha: str, status: str = CLEAN,
           plan: dict[str, Any] | None = None, refused: str | None = None) -> None:
    """What HOST's own agent (on the pet) records after checking SHA."""
    config = config_for(source.bare)
    mirror = agent(tmp_path, f"agent-{name}", source.bare)
    reports = {name: host(name, status)}
    run = RunInfo(f"run-{name}-{sha[:6]}", sha, datetime.now(UTC).replace(microsecond=0),
                  f"pet-{name}", refused=refused, plans={name: plan} if plan else {})
    result = publish(mirror, config, reports, lambda base: drift_records(
        mirror, base, reports, run, config.reports.heartbeat))
    assert result.pushed, result


def plan(action: str, plan_id: str = "0123456789abcdef") -> dict[str, Any]:
    return {"plan_id": plan_id, "action": action, "reason": f"policy says {action}",
            "mode": "approve" if action == "wait" else "auto", "rule": ""}


class Pipeline:
    """fleet_view as the pipeline's job calls it; each sleep lets one agent move."""

    def __init__(self, tmp_path: Path, source: GitRemote,
                 moves: list[Callable[[], None]]) -> None:
        self.config = config_for(source.bare)
        self.request = fleet_request(self.config, tmp_path / "cache.git", stale=None,
                                     inventory=None, page=None, since="7d")
        self.moves, self.slept, self.said = moves, 0.0, []  # type: ignore[var-annotated]

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        if self.moves:
            self.moves.pop(0)()

    def wait(self, commit: str, timeout: float = 60, interval: float = 10) -> dict[str, Any]:
        return fleet_view(self.request, WaitRequest(commit, timeout, interval), self.said.append,
                          sleep=self.sleep, clock=lambda: self.slept)


def test_the_wait_ends_when_every_agent_checked_the_merged_commit(tmp_path, source):
    old = source.commit({}, "old")
    for name in ("web1", "web2"):
        report(tmp_path, source, name, old)
    merged = source.commit({}, "merged")
    pipeline = Pipeline(tmp_path, source, [
        lambda: report(tmp_path, source, "web1", merged),
        lambda: None,  # a reading where nothing moved: no new line
        lambda: report(tmp_path, source, "web2", merged)])

    view = pipeline.wait(merged)

    assert pipeline.slept == 30 and view["exit_code"] == 0
    assert view["wait"] == {"commit": merged, "given": merged, "timeout": 60,
                            "waited_seconds": 30, "caught_up": True, "behind": []}
    assert {row["source_sha"] for row in view["hosts"]} == {merged}
    assert pipeline.said == [
        f"waiting for 2 host(s) to check {merged[:12]}: web1 (checked {old[:12]}), "
        f"web2 (checked {old[:12]})",
        f"waiting for 1 host(s) to check {merged[:12]}: web2 (checked {old[:12]})",
        f"every host checked {merged[:12]} (or a later commit) after 30s"]


def test_an_apply_under_way_is_waited_for_and_drift_waiting_for_approval_exits_2(tmp_path,
                                                                                 source):
    merged = source.commit({}, "merged")
    report(tmp_path, source, "web1", merged, DRIFTED, plan("apply"))  # applying now
    report(tmp_path, source, "web2", merged, DRIFTED, plan("wait", "fedcba9876543210"))
    pipeline = Pipeline(tmp_path, source, [lambda: report(tmp_path, source, "web1", merged)])

    view = pipeline.wait(merged[:10])

    assert pipeline.said[0] == (f"waiting for 1 host(s) to check {merged[:12]}: web1 (applying "
                                "plan 0123456789abcdef)")
    assert view["wait"]["caught_up"] and view["wait"]["commit"] == merged
    assert view["exit_code"] == 2  # web2's drift waits for an approval: fleet's own code
    assert [row["status"] for row in view["hosts"]] == [CLEAN, DRIFTED]


def test_a_later_merge_counts_and_an_older_commit_does_not(tmp_path, source):
    old = source.commit({}, "old")
    merged = source.commit({}, "merged")
    newer = source.commit({}, "newer")  # merged while the pipeline waited
    report(tmp_path, source, "web1", newer)
    report(tmp_path, source, "web2", old)
    pipeline = Pipeline(tmp_path, source, [])

    view = pipeline.wait(merged, timeout=25, interval=10)

    assert view["wait"]["behind"] == [{"host": "web2", "reason": f"checked {old[:12]}"}]
    assert pipeline.slept == 20  # a third reading would end after the timeout


def test_the_timeout_is_one_line_naming_each_host_behind_and_exit_1(tmp_path, source, capsys):
    old = source.commit({}, "old")
    report(tmp_path, source, "web1", old)
    report(tmp_path, source, "web2", old)
    merged = source.commit({}, "merged")
    report(tmp_path, source, "web1", merged)
    before = branches(source.bare)

    code = main(["fleet", "--repo", f"file://{source.bare}", "--cache",
                 str(tmp_path / "cache.git"), "--wait-for", merged, "--timeout", "1s",
                 "--interval", "1s"])

    out, err = capsys.readouterr()
    assert code == 1
    [line] = err.splitlines()
    assert re.fullmatch(
        f"petkeeper: error: fleet: --wait-for {merged[:12]}: after [0-9]+s, 1 of 2 host\\(s\\) "
        f"have not checked it: web2 \\(checked {old[:12]}\\); see those agents' logs "
        "\\(journalctl -u petkeeper\\), or wait longer \\(--timeout\\)", line)
    assert out.startswith("web1: clean") and "\nweb2: clean" in out
    assert branches(source.bare) == before  # waiting writes nothing


def test_waiting_for_head_when_every_host_is_there_ends_at_once(tmp_path, source, capsys):
    head = source.commit({}, "merged")
    report(tmp_path, source, "web1", head)

    code = main(["fleet", "--repo", f"file://{source.bare}", "--cache",
                 str(tmp_path / "cache.git"), "--wait-for", "head", "--json"])

    out, err = capsys.readouterr()
    assert code == 0 and re.fullmatch(f"every host checked {head[:12]} \\(or a later commit\\) "
                                      "after [0-9]+s\n", err)
    assert '"caught_up": true' in out and f'"commit": "{head}"' in out


def test_a_commit_that_is_not_on_the_source_branch_is_one_line(tmp_path, source, capsys):
    head = source.commit({}, "merged")
    report(tmp_path, source, "web1", head)
    unmerged = source.commit({"x": "x\n"}, "pr", branch="feature")

    for commit in (unmerged, "0" * 40):
        code = main(["fleet", "--repo", f"file://{source.bare}", "--cache",
                     str(tmp_path / "cache.git"), "--wait-for", commit])
        assert code == 1
        assert capsys.readouterr().err.splitlines() == [
            f"petkeeper: error: fleet: --wait-for {commit}: not a commit of main in "
            f"file://{source.bare} (among its newest 500); give the merged commit's id (e.g. "
            "$GITHUB_SHA, $CI_COMMIT_SHA, $GIT_COMMIT) or head"]


@pytest.mark.parametrize(("args", "problem"), [
    ((None, "5m", None), "fleet: --timeout: only with --wait-for COMMIT; give the commit to "
                         "wait for (e.g. --wait-for $GITHUB_SHA)"),
    (("abc", "soon", None), "fleet: --timeout: expected a duration like 30m, got 'soon'"),
    (("abc", None, "0s"), "fleet: --interval: expected a duration like 15s, got '0s'"),
    (("--json", None, None), "fleet: --wait-for: expected a commit id or head, got '--json'")])
def test_bad_wait_options_are_one_error_naming_the_option(args, problem):
    with pytest.raises(AgentError) as e:
        wait_request(*args)
    assert str(e.value) == problem


def test_the_defaults_wait_half_an_hour_reading_every_15_seconds():
    assert wait_request("abc", None, None) == WaitRequest("abc", 1800.0, 15.0)
    assert wait_request(None, None, None) is None


def row(name: str, status: str, sha: str | None, **more: Any) -> dict[str, Any]:
    return {"host": name, "status": status, "source_sha": sha, "plan": None,
            "last_apply": None, "source_refused": None, **more}


def test_why_each_host_is_behind():
    target, later = "t" * 40, "l" * 40
    view = {"hosts": [
        row("caught", CLEAN, target),
        row("later", CLEAN, later),
        row("failed", "failed", target),  # it checked: its failure is the fleet's exit code
        row("new", "missing", None),
        row("forged", "untrusted", target),
        row("garbled", "unreadable", None),
        row("old", DRIFTED, "o" * 40, source_refused="bad signature\x1b[2J on 1a2b"),
        row("applying", DRIFTED, target, plan={"id": "p1", "action": "apply"}),
        row("applied", DRIFTED, target, plan={"id": "p2", "action": "apply"},
            last_apply={"plan_id": "p2"}),
        row("approval", DRIFTED, target, plan={"id": "p3", "action": "wait"}),
        row("paused", CLEAN, "o" * 40, paused={"by": "bob", "reason": "disk swap",
                                               "checks": True}),
        row("paused-applies", CLEAN, target, paused={"by": "bob", "reason": "x",
                                                     "checks": False})]}

    behind = hosts_behind(view, target, lambda sha: sha == later)

    assert behind == {
        "new": "no report yet", "forged": "its report is untrusted",
        "garbled": "its report is unreadable",
        "old": f"checked {'o' * 12}; its agent refused a newer commit: bad signature\x1b[2J on "
               "1a2b",
        "applying": "applying plan p1",
        "paused": f"checked {'o' * 12}; its agent is paused by bob: disk swap"}


def test_a_hostile_reason_is_one_printable_line_in_the_timeout_message(tmp_path, source):
    old = source.commit({}, "old")
    merged = source.commit({}, "merged")
    report(tmp_path, source, "web1", old, refused=f"commit {merged[:12]}: not signed\n"
                                                  "::error::forged\x1b[2J\r")
    pipeline = Pipeline(tmp_path, source, [])

    view = pipeline.wait(merged, timeout=5)

    *_, line = view["problems"]
    assert line.isprintable() and "\x1b" not in line
    assert f"web1 (checked {old[:12]}; its agent refused a newer commit: commit " \
           f"{merged[:12]}: not signed ::error::forged [2J)" in line


def test_a_remote_that_does_not_answer_for_a_while_is_read_again_until_the_timeout(tmp_path,
                                                                                 source):
    old = source.commit({}, "old")
    report(tmp_path, source, "web1", old)
    merged = source.commit({}, "merged")
    away = tmp_path / "away.git"
    pipeline = Pipeline(tmp_path, source, [
        lambda: source.bare.rename(away),  # the Git server is down for one reading
        lambda: (away.rename(source.bare), report(tmp_path, source, "web1", merged))])

    view = pipeline.wait(merged)

    assert view["wait"]["caught_up"] and pipeline.slept == 20
    assert "reading again in 10s" in pipeline.said[1]
