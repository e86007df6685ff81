"""agent.operate.commands: approve, history, adopt and the state's repository, on real Git
repositories (no Ansible, no hosts)."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.adapters.gitrepo import Mirror
from agent.adapters.state import StateDir, claim_repo, read_repo, write_json
from agent.config import Config, RepoConfig, ReportsConfig
from agent.cycle.decide import require_known_plan
from agent.cycle.record import Record, format_message, publish
from agent.cycle.trust import mark_applied
from agent.errors import AgentError, RepoError, StalledError
from agent.operate.commands import (
    adopt,
    approve,
    parse_since,
    read_history,
    read_state_status,
    select_history,
)
from tests.unit.test_gitrepo import bare_repo

NOW = datetime(2026, 11, 25, 22, 0, tzinfo=UTC)
SRC, FP = "8f14e45fceea167a5a36dedd4bea2543b2c1e7c8", "a5" * 32


def config_for(url: str, tmp_path: Path, **repo: Any) -> Config:
    return Config(repo=RepoConfig(url=url, **repo), path=str(tmp_path / "agent.yml"),
                  state_dir=tmp_path / "state", reports=ReportsConfig(branch="pk"))


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True,
                          timeout=60).stdout


# --- history ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "since"), [
    ("7d", NOW - timedelta(days=7)), ("90m", NOW - timedelta(minutes=90)),
    ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
    ("2026-11-01T10:30", datetime(2026, 11, 1, 10, 30, tzinfo=UTC)),
    ("2026-11-01T10:30:00+02:00", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
    ("2026-11-01T10:30:00Z", datetime(2026, 11, 1, 10, 30, tzinfo=UTC)),
])
def test_since_is_a_duration_back_from_now_or_an_iso_date(value: str, since: datetime):
    assert parse_since(value, NOW) == since


@pytest.mark.parametrize("value", ["yesterday", "7 days", "", "-3d", "2026-13-01"])
def test_a_since_that_is_neither_says_what_it_takes_in_one_line(value: str):
    with pytest.raises(AgentError) as e:
        parse_since(value, NOW)
    assert str(e.value) == ("history: --since: expected a duration like 7d or an ISO 8601 date "
                            f"like 2026-11-01, got {value!r}")


def entry(hours_ago: float) -> dict[str, Any]:
    return {"sha": "1" * 40, "date": (NOW - timedelta(hours=hours_ago)).isoformat(),
            "subject": f"web1: clean ({hours_ago})", "trailers": {"Petkeeper-Host": "web1"}}


def test_history_keeps_what_is_since_the_oldest_and_at_most_n_newest_first():
    entries = [entry(1), entry(5), entry(30), entry(200)]
    assert select_history(entries, NOW - timedelta(days=1), None) == entries[:2]
    assert select_history(entries, None, 3) == entries[:3]
    assert select_history(entries, NOW - timedelta(days=2), 1) == entries[:1]
    assert select_history(entries, NOW, None) == []


def reports_remote(tmp_path: Path, hosts: list[str]) -> str:
    """A real remote where each host of HOSTS has one report commit on its branch."""
    url = bare_repo(tmp_path / "pets.git")
    mirror = Mirror(tmp_path / "seed-mirror.git", url, 10)
    records = [Record(h, f"hosts/{h}.yml", "status: clean\n",
                      format_message(f"{h}: clean (0 changes)", "Check.",
                                     {"Source": SRC, "Host": h, "Status": "clean"}),
                      f"2026-11-25T2{i}:00:00+00:00") for i, h in enumerate(hosts)]
    publish(mirror, config_for(url, tmp_path), hosts, lambda base: records)
    return url


def test_history_of_a_host_the_reports_never_saw_says_so_and_names_those_it_has(
        tmp_path: Path):
    config = config_for(reports_remote(tmp_path, ["web1", "db1"]), tmp_path)

    assert [e["subject"] for e in read_history(config, "db1")] == ["db1: clean (0 changes)"]
    with pytest.raises(AgentError) as e:
        read_history(config, "web2")
    assert str(e.value) == (f"history: host 'web2' has no report on petkeeper/hosts/web2 of "
                            f"{config.repo.url}; "
                            "hosts it has: db1, web1")
    with pytest.raises(AgentError, match="-n: expected a number of entries >= 1, got 0"):
        read_history(config, None, count=0)


# --- apply PLAN_ID and approve: answers from the last check's plans --------------------------

def plans(state: StateDir, **actions: str) -> dict[str, str]:
    """Write plans.json with one plan per host (host=action); return host -> plan id."""
    ids = {host: f"{i:016x}" for i, host in enumerate(actions, start=1)}
    write_json(state.plans_file, {host: {
        "plan_id": ids[host], "source_sha": SRC, "fingerprint": FP, "status": "drifted",
        "action": action, "reason": "awaiting approval", "mode": "approve", "rule": "default",
        "decisions": [], "approval": None} for host, action in actions.items()})
    return ids


def test_apply_of_a_plan_unknown_to_the_last_check_is_refused_naming_those_waiting(
        tmp_path: Path):
    state = StateDir(tmp_path / "state")
    state.ensure()
    with pytest.raises(RepoError, match=r"no check has run on .* yet; run petkeeper plan"):
        require_known_plan(state, "0123456789abcdef")

    ids = plans(state, web1="wait", db1="nothing", web2="apply")
    require_known_plan(state, ids["db1"])  # known: the cycle itself says what it makes of it
    with pytest.raises(RepoError) as e:
        require_known_plan(state, "0123456789abcdef")
    assert str(e.value) == (f"apply 0123456789abcdef: not a plan of the last check; plans "
                            f"waiting: web1 {ids['web1']} (wait), web2 {ids['web2']} (apply); "
                            "run petkeeper plan to see the current ones")


def test_approve_records_each_plan_once_and_all_or_none(tmp_path: Path):
    url = bare_repo(tmp_path / "pets.git")
    config = config_for(url, tmp_path)
    state = StateDir(config.state_dir)
    state.ensure()
    ids = plans(state, web1="wait", web2="wait", db1="nothing")

    with pytest.raises(RepoError, match=f"plan {ids['db1']} \\(db1\\): nothing to approve"):
        approve(config, [ids["web1"], ids["db1"]], "alice", "2h", "", NOW)
    assert not state.approvals.exists() or not list(state.approvals.iterdir())
    assert git("--git-dir", str(tmp_path / "pets.git"), "branch", "--list", "petkeeper/*") == ""

    done = approve(config, [ids["web1"], ids["web2"], ids["web1"]], "alice", "2h", "swap", NOW)

    assert [(a.host, a.plan_id, a.expires_at) for a in done.approvals] == [
        ("web1", ids["web1"], "2026-11-26T00:00:00+00:00"),
        ("web2", ids["web2"], "2026-11-26T00:00:00+00:00")]
    assert sorted(p.stem for p in state.approvals.iterdir()) == sorted([ids["web1"],
                                                                         ids["web2"]])
    subjects = [git("--git-dir", str(tmp_path / "pets.git"), "log", "--format=%s",
                    f"petkeeper/hosts/{host}") for host in ("web1", "web2")]
    assert subjects == [f"web1: plan {ids['web1']} approved by alice\n",
                        f"web2: plan {ids['web2']} approved by alice\n"]
    assert done.push_error is None


# --- the state directory belongs to one repository; adopt moves it --------------------------

def test_a_second_repository_on_the_same_state_dir_is_refused_in_one_line(tmp_path: Path):
    first = config_for("file:///srv/git/pets.git", tmp_path)
    state = StateDir(first.state_dir)
    state.ensure()
    claim_repo(state, "https://bot:s3cret@git.example.org/pets.git", first.path)
    recorded = state.repo_file.read_bytes()
    claim_repo(state, "https://bot:rotated@git.example.org/pets.git", first.path)  # same repo

    with pytest.raises(StalledError) as e:
        read_state_status(config_for("file:///srv/git/other.git", tmp_path))

    line = str(e.value)
    assert "\n" not in line and "s3cret" not in line
    assert line.startswith(f"{first.path}: repo.url: file:///srv/git/other.git is not the "
                           f"repository state_dir {state.root} belongs to "
                           "(https://***@git.example.org/pets.git, recorded by ")
    assert line.endswith("give this config its own state_dir, or, if the Git server moved, run "
                         "petkeeper adopt to move this state to the new URL")
    assert state.repo_file.read_bytes() == recorded and b"s3cret" not in recorded


def test_adopt_moves_the_state_to_the_new_server_and_keeps_the_no_rollback_mark(
        tmp_path: Path):
    old = bare_repo(tmp_path / "old.git")
    old_config = config_for(old, tmp_path)
    state = StateDir(old_config.state_dir)
    state.ensure()
    claim_repo(state, old, old_config.path)
    head = git("--git-dir", str(tmp_path / "old.git"), "rev-parse", "main").strip()
    mark_applied(state, head)
    git("clone", "-q", "--mirror", str(tmp_path / "old.git"), str(tmp_path / "new.git"))
    new_config = config_for(f"file://{tmp_path}/new.git", tmp_path)
    trust = state.trust_file.read_bytes()

    moved = adopt(new_config, "alice")

    assert moved == {"url": new_config.repo.url, "before": old, "head": head, "hold": None}
    assert read_repo(state)["url"] == new_config.repo.url  # type: ignore[index]
    assert json.loads(state.trust_file.read_bytes()) == json.loads(trust)  # the mark stays
    read_state_status(new_config)  # the new URL is the state's own now
    with pytest.raises(StalledError, match="petkeeper adopt"):
        read_state_status(old_config)


def test_adopt_of_a_url_that_does_not_answer_changes_nothing(tmp_path: Path):
    old = bare_repo(tmp_path / "old.git")
    state = StateDir(tmp_path / "state")
    state.ensure()
    claim_repo(state, old, "agent.yml")
    recorded = state.repo_file.read_bytes()

    with pytest.raises(AgentError, match="does not appear to be a git repository"):
        adopt(config_for(f"file://{tmp_path}/typo.git", tmp_path), "alice")
    assert state.repo_file.read_bytes() == recorded
