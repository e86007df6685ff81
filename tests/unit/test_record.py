"""agent.cycle.record's pure part: the report file, when to commit it, and the commit message."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.core.drift import (
    CLEAN,
    DRIFTED,
    UNKNOWN,
    Change,
    HostReport,
    build_host_reports,
    fingerprint,
)
from agent.cycle.record import (
    RunInfo,
    build_message,
    build_report,
    commit_reason,
    render_report,
    report_path,
    summary_line,
)
from tests.unit.test_drift import load_events, load_facts

TREE = "/var/lib/petkeeper/trees/8f14e45fceea167a5a36dedd4bea2543b2c1e7c8"
SHA = "8f14e45fceea167a5a36dedd4bea2543b2c1e7c8"
WHEN = datetime(2026, 11, 25, 20, 36, 22, tzinfo=UTC)
RUN = RunInfo(run_id="20261125T203622Z-a1b2c3", source_sha=SHA, checked_at=WHEN, agent="pet1")
DAY = 86400.0


def real_reports() -> dict[str, HostReport]:
    return build_host_reports(load_events("real_check_run"), ["web1", "ghost"], TREE,
                              load_facts("real_check_run"))


def host(status: str = CLEAN, changes: tuple[Change, ...] = (), message: str | None = None,
         name: str = "web1") -> HostReport:
    return HostReport(name, status, changes, fingerprint(status, changes), message)


def data_of(report: HostReport, run: RunInfo = RUN) -> dict[str, Any]:
    return build_report(report, run)


MOTD = Change("Baseline", "base", "Write motd", "ansible.builtin.copy",
              "--- before: /etc/motd\n+++ after: roles/base/files/motd\n@@ -1 +1 @@\n-Hi\n"
              "+Welcome\n")
PROBE = Change("Baseline", None, "Run a command", "ansible.builtin.command", "", True)


# --- report_path -----------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "path"), [
    ("web1", "hosts/web1.yml"), ("web1.example.com", "hosts/web1.example.com.yml"),
    ("db_1-a", "hosts/db_1-a.yml"), ("fe80::1", "hosts/fe80__1.yml"),
    ("../../etc/passwd", "hosts/.._.._etc_passwd.yml"), ("a b", "hosts/a_b.yml")])
def test_report_path_is_one_safe_file_under_hosts(name: str, path: str):
    assert report_path(name) == path


@pytest.mark.parametrize("name", ["..", "../x", "a/../../b", "/etc/shadow", "x\ny", "."])
def test_report_path_never_leaves_the_hosts_folder(name: str):
    parts = Path(report_path(name)).parts

    assert len(parts) == 2 and parts[0] == "hosts"
    assert parts[1] not in (".", "..") and parts[1].endswith(".yml")


# --- build_report ----------------------------------------------------------------------------

def test_build_report_holds_the_host_report_and_the_run():
    report = host(DRIFTED, (MOTD, PROBE))

    assert build_report(report, RUN) == {
        "schema": 2, "host": "web1", "status": DRIFTED, "fingerprint": report.fingerprint,
        "message": None, "partial": False,
        "changes": [
            {"play": "Baseline", "role": "base", "task": "Write motd",
             "module": "ansible.builtin.copy", "diff": MOTD.diff, "check_blind": False,
             "tags": [], "task_path": ""},
            {"play": "Baseline", "role": None, "task": "Run a command",
             "module": "ansible.builtin.command", "diff": "", "check_blind": True, "tags": [],
             "task_path": ""}],
        "source_sha": SHA, "run_id": "20261125T203622Z-a1b2c3",
        "checked_at": "2026-11-25T20:36:22+00:00", "checked_by": "pet1"}


def test_build_report_writes_checked_at_to_the_second_with_its_offset():
    run = RunInfo("r", SHA, datetime(2026, 1, 2, 3, 4, 5, 678901,
                                     tzinfo=timezone(timedelta(hours=2))), "pet1")

    assert build_report(host(), run)["checked_at"] == "2026-01-02T03:04:05+02:00"


# --- render_report ---------------------------------------------------------------------------

def rendered_cases() -> list[Any]:
    reports = real_reports()
    return [
        pytest.param(data_of(reports["web1"]), id="real-drifted"),
        pytest.param(data_of(reports["ghost"]), id="real-unreachable"),
        pytest.param(data_of(host()), id="clean"),
        pytest.param(data_of(host(UNKNOWN, (PROBE,), "the run ended before this host's "
                                  "results were complete\nsecond line: 'quoted' # not a comment")),
                     id="unknown-multiline-message"),
        pytest.param(data_of(host(DRIFTED, (Change(
            "Pläy: ünïcode", "r", "task: with: colons", "ansible.builtin.copy",
            "--- before: /etc/x\n+++ after: /etc/x\n@@ -1 +1 @@\n-\x1b[31mred\n+yes\n"
            "+no\n+null\n+'single'\n+\"double\"\n+# hash\n+- dash\n"),), name="ünï")),
            id="tricky-strings"),
        # A host's failure message and task name reach the summary comments too: a control
        # character there (a terminal colour, a bell) must not make the file unreadable YAML.
        pytest.param(data_of(host(UNKNOWN, (Change("p", None, "t\x1b[2J", "m", "", True),),
                                  "fatal: \x1b[31mboom\x07\x85"),
                             replace(RUN, refused="commit 1a2b: bad\x1b[0m signature")),
                     id="control-characters-in-comments"),
    ]


@pytest.mark.parametrize("data", rendered_cases())
def test_render_report_body_parses_back_to_exactly_the_report_data(data: dict[str, Any]):
    text = render_report(data)

    assert yaml.safe_load(text) == data


@pytest.mark.parametrize("data", rendered_cases())
def test_render_report_starts_with_the_summary_then_only_comments_before_the_yaml(
        data: dict[str, Any]):
    lines = render_report(data).splitlines()

    assert lines[0] == f"# {summary_line(data)}"
    head = lines[:lines.index("schema: 2")]
    assert head and all(line.startswith("# ") for line in head)
    assert lines[1] == (f"# source {SHA[:12]}, run {data['run_id']}, checked "
                        f"{data['checked_at']} by pet1")


def test_render_report_lists_each_change_with_its_mark_in_the_comments():
    text = render_report(data_of(host(DRIFTED, (MOTD, PROBE))))

    assert "#   ~ base | Write motd (ansible.builtin.copy)\n" in text
    assert "#   ? Run a command (ansible.builtin.command)\n" in text


def test_render_report_writes_diffs_as_block_literals():
    text = render_report(data_of(host(DRIFTED, (MOTD,))))

    assert "  diff: |\n    --- before: /etc/motd\n    +++ after: roles/base/files/motd\n" in text
    assert "    -Hi\n    +Welcome\n" in text


def test_render_report_writes_every_real_diff_without_blank_context_as_block_literal():
    data = data_of(real_reports()["web1"])
    text = render_report(data)

    motd = data["changes"][0]["diff"]
    assert "  diff: |\n" + "".join(f"    {line}\n" for line in motd.splitlines()) in text


def test_render_report_writes_a_diff_with_an_empty_context_line_as_a_block_literal():
    data = data_of(real_reports()["web1"])
    [line_diff] = [c["diff"] for c in data["changes"] if c["task"] == "Line"]
    assert "\n \n" in line_diff  # the empty line of /etc/hosts.allow, as context

    text = render_report(data)

    assert "  diff: |" in text.split("task: Line\n")[1].split("check_blind")[0]


def test_render_report_keeps_control_characters_escaped_rather_than_raw():
    data = data_of(host(DRIFTED, (Change("p", None, "t", "m", "-\x1b[31mred\n+x\n"),)))

    text = render_report(data)

    assert "\x1b" not in text
    assert yaml.safe_load(text) == data


# --- summary_line ----------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "status", "line"), [
    ((), CLEAN, "web1: clean (0 changes)"),
    ((MOTD,), DRIFTED, "web1: drifted (1 change)"),
    ((MOTD, MOTD), DRIFTED, "web1: drifted (2 changes)"),
    ((PROBE,), CLEAN, "web1: clean (0 changes, 1 check-blind)"),
    ((MOTD, PROBE, PROBE), DRIFTED, "web1: drifted (1 change, 2 check-blind)"),
])
def test_summary_line_counts_known_and_check_blind_changes(changes: tuple[Change, ...],
                                                           status: str, line: str):
    assert summary_line(data_of(host(status, changes))) == line


def test_a_partial_report_says_so_in_its_summary_and_comments_keep_titles_unambiguous():
    stopped = Change("Users", "users", "Create | the .ssh folders", "ansible.builtin.file", "",
                     True, error="chown failed", message="failed in check mode after ...")
    changes = (MOTD, stopped)
    report = HostReport("web1", DRIFTED, changes, fingerprint(DRIFTED, changes, True),
                        "partial check: ...", partial=True)

    data = data_of(report)
    text = render_report(data)

    assert summary_line(data) == "web1: drifted (1 change, 1 check-blind, partial)"
    assert '#   ? users | "Create | the .ssh folders" (ansible.builtin.file)\n' in text
    assert yaml.safe_load(text)["partial"] is True
    assert yaml.safe_load(text)["changes"][1]["error"] == "chown failed"


# --- commit_reason ---------------------------------------------------------------------------

def as_read_back(data: dict[str, Any]) -> dict[str, Any]:
    """The previous report as publish reads it: the rendered file, parsed."""
    return yaml.safe_load(render_report(data))


def later(minutes: float, **fields: Any) -> dict[str, Any]:
    run = RunInfo("r2", fields.pop("source_sha", SHA), WHEN + timedelta(minutes=minutes), "pet1")
    return {**data_of(host(**fields), run)}


def test_first_report_is_committed():
    assert commit_reason(None, data_of(host()), DAY) == "first report"


@pytest.mark.parametrize(("current", "reason"), [
    (later(5, status=DRIFTED, changes=(MOTD,)), "status changed"),
    (later(5, status=CLEAN, changes=(PROBE,)), "fingerprint changed"),
    (later(5, source_sha="0" * 40), "source_sha changed"),
])
def test_a_changed_status_fingerprint_or_source_is_committed(current: dict[str, Any],
                                                             reason: str):
    previous = as_read_back(data_of(host()))

    assert commit_reason(previous, current, DAY) == reason


def test_same_report_within_the_heartbeat_is_not_committed():
    previous = as_read_back(data_of(host()))

    assert commit_reason(previous, later(60 * 23), DAY) is None


@pytest.mark.parametrize("minutes", [60 * 24, 60 * 24 * 3])
def test_same_report_once_the_heartbeat_elapsed_is_committed(minutes: int):
    previous = as_read_back(data_of(host()))

    assert commit_reason(previous, later(minutes), DAY) == "heartbeat"


@pytest.mark.parametrize("checked_at", ["yesterday", None, 17])
def test_unreadable_previous_checked_at_is_committed(checked_at: Any):
    previous = {**as_read_back(data_of(host())), "checked_at": checked_at}

    assert commit_reason(previous, later(1), DAY) == "previous report unreadable"


def test_previous_without_checked_at_is_committed():
    previous = as_read_back(data_of(host()))
    del previous["checked_at"]

    assert commit_reason(previous, later(1), DAY) == "previous report unreadable"


def test_previous_checked_at_without_offset_is_unreadable_not_a_crash():
    previous = {**as_read_back(data_of(host())), "checked_at": "2026-11-25T20:36:22"}

    assert commit_reason(previous, later(1), DAY) == "previous report unreadable"


# --- build_message ---------------------------------------------------------------------------

def parse_trailers(message: str, tmp_path: Path) -> list[str]:
    r = subprocess.run(["git", "interpret-trailers", "--parse"], input=message, text=True,
                       capture_output=True, check=True, cwd=tmp_path, timeout=30)
    return r.stdout.splitlines()


def test_message_subject_is_the_summary_and_body_names_source_agent_and_reason():
    data = data_of(host(DRIFTED, (MOTD, PROBE)))

    lines = build_message(data, "status changed").splitlines()

    assert lines[0] == "web1: drifted (1 change, 1 check-blind)"
    assert lines[1] == ""
    assert lines[2] == f"Check of {SHA[:12]} by pet1 (status changed)."


@pytest.mark.parametrize("report", [
    pytest.param(host(DRIFTED, (MOTD,)), id="drifted"),
    pytest.param(host(UNKNOWN, (), "no play ran on this host", name="db9.example.com"),
                 id="unknown"),
])
def test_message_trailers_are_parsed_by_git(report: HostReport, tmp_path: Path):
    data = data_of(report)

    trailers = parse_trailers(build_message(data, "first report"), tmp_path)

    assert trailers == [f"Petkeeper-Source: {SHA}", f"Petkeeper-Run: {RUN.run_id}",
                        f"Petkeeper-Host: {report.name}", f"Petkeeper-Status: {report.status}"]


# --- a pause in force ------------------------------------------------------------------------

PAUSE = {"by": "alice", "at": "2026-11-25T20:00:00+00:00", "reason": "swapping disks\nin bay 2",
         "checks": False}
PAUSED = RunInfo(RUN.run_id, SHA, WHEN, "pet1", PAUSE)


def test_a_pause_is_in_the_report_its_summary_and_its_commit_and_only_while_it_lasts(
        tmp_path: Path):
    data = data_of(host(DRIFTED, (MOTD,)), PAUSED)

    assert data["paused"] == PAUSE
    assert "paused" not in data_of(host(DRIFTED, (MOTD,)))  # never paused: no key at all
    text = render_report(data)
    assert ("# paused by alice since 2026-11-25T20:00:00+00:00: swapping disks in bay 2; "
            "nothing is applied until petkeeper resume") in text.splitlines()
    assert yaml.safe_load(text)["paused"] == PAUSE
    assert parse_trailers(build_message(data, "paused"), tmp_path)[-1] == \
        "Petkeeper-Paused: swapping disks in bay 2"


def test_pausing_and_resuming_each_commit_the_report_once():
    plain, paused = data_of(host()), data_of(host(), PAUSED)

    assert commit_reason(as_read_back(plain), paused, DAY) == "paused"
    assert commit_reason(as_read_back(paused), data_of(host(), PAUSED), DAY) is None
    assert commit_reason(as_read_back(paused), plain, DAY) == "resumed"
    other = RunInfo(RUN.run_id, SHA, WHEN, "pet1", {**PAUSE, "reason": "still swapping"})
    assert commit_reason(as_read_back(paused), data_of(host(), other), DAY) == "paused"


# --- a refused source commit ------------------------------------------------------------------

WHY = ("source commit 0123456789ab refused: ansible.cfg: [defaults] log_path: not allowed in a "
       "Petkeeper repo (Ansible's log would hold diffs with secrets in clear); remove it")
REFUSED = RunInfo(RUN.run_id, SHA, WHEN, "pet1", refused=WHY)


def test_a_refused_source_is_in_the_report_its_summary_and_its_commit(tmp_path: Path):
    data = data_of(host(), REFUSED)

    assert data["source_refused"] == WHY
    assert "source_refused" not in data_of(host())  # never refused: no key at all
    text = render_report(data)
    assert f"# newest source refused, this is the last good one: {WHY}" in text.splitlines()
    assert parse_trailers(build_message(data, "source refused"), tmp_path)[-1] == \
        f"Petkeeper-Source-Refused: {WHY}"
    plain = data_of(host())
    assert commit_reason(as_read_back(plain), data, DAY) == "source refused"
    assert commit_reason(as_read_back(data), data_of(host(), REFUSED), DAY) is None
    assert commit_reason(as_read_back(data), plain, DAY) == "source accepted"


# --- publish: what the reports of a cycle became, each host once ------------------------------

def test_publish_says_whether_it_pushed_had_nothing_to_push_or_could_not(tmp_path: Path):
    from agent.adapters.gitrepo import Mirror
    from agent.config import Config, RepoConfig, ReportsConfig
    from agent.cycle.record import Record, publish
    from tests.unit.test_gitrepo import bare_repo

    url = bare_repo(tmp_path / "pets.git")
    mirror = Mirror(tmp_path / "mirror.git", url, 10)

    def config(url: str = url, push: bool = True) -> Config:
        return Config(repo=RepoConfig(url=url), reports=ReportsConfig(push=push))

    def records(*hosts: str) -> Any:
        return lambda base: [Record(h, f"{kind}/{h}.yml", f"{kind} of {h}\n", f"{h}: {kind}",
                                    "2026-11-25T20:00:00+00:00")
                             for h in hosts for kind in ("hosts", "applies")]

    first = publish(mirror, config(), ["web1", "db1"], records("web1", "db1"))
    assert (first.push, first.pushed, first.queued, first.error) == ("pushed", True, 0, None)
    assert first.committed_by_host() == {"web1": ["hosts/web1.yml", "applies/web1.yml"],
                                         "db1": ["hosts/db1.yml", "applies/db1.yml"]}

    again = publish(mirror, config(), ["web1", "db1"], records())
    assert (again.push, again.committed_by_host(), again.error) == ("nothing to push", {}, None)

    kept = publish(mirror, config(push=False), ["web1"], records("web1"))
    assert (kept.push, kept.queued, kept.error) == ("off", 2, None)

    gone = f"file://{tmp_path}/gone.git"
    failed = publish(mirror, config(gone), ["web1"], records())
    assert (failed.push, failed.queued, failed.pushed) == ("failed", 2, False)
    assert failed.error and failed.error.startswith(f"git push {gone} failed: ")
    queue = mirror.rev("refs/petkeeper/queue/petkeeper/hosts/web1")
    assert queue and len(mirror.unpushed(queue)) == 2  # nothing lost


# --- the plan in the report ------------------------------------------------------------------

def plan_of(action: str, reason: str, approver: str | None = None) -> dict[str, Any]:
    """A Plan.as_dict() as decide gives it."""
    return {"plan_id": "30c4aa367513c4ee", "source_sha": SHA, "fingerprint": "f" * 64,
            "status": DRIFTED, "action": action, "reason": reason, "mode": "approve",
            "rule": "default", "decisions": [["approve", "default"]],
            "approval": {"approver": approver} if approver else None}


WAITING = plan_of("wait", "awaiting approval: petkeeper approve 30c4aa367513c4ee")


def planned(plan: dict[str, Any], minutes: float = 0) -> dict[str, Any]:
    run = RunInfo("r", SHA, WHEN + timedelta(minutes=minutes), "pet1", plans={"web1": plan})
    return data_of(host(DRIFTED, (MOTD,)), run)


def test_the_report_carries_its_plan_outside_the_fingerprint():
    data = planned(WAITING)

    assert data["plan"] == {"id": "30c4aa367513c4ee", "action": "wait",
                            "reason": "awaiting approval: petkeeper approve 30c4aa367513c4ee",
                            "mode": "approve", "rule": "default", "approved_by": None}
    assert data["fingerprint"] == data_of(host(DRIFTED, (MOTD,)))["fingerprint"]
    assert "# plan 30c4aa367513c4ee [wait] awaiting approval: petkeeper approve " \
           "30c4aa367513c4ee" in render_report(data).splitlines()
    assert yaml.safe_load(render_report(data))["plan"] == data["plan"]


def test_a_changed_plan_action_or_reason_is_committed_and_an_unchanged_one_is_not():
    before = as_read_back(planned(WAITING))
    approved = plan_of("apply", "approved by alice (git)", "alice")
    window = plan_of("wait", "approved by alice; outside maintenance windows", "alice")

    assert commit_reason(before, planned(WAITING, 30), DAY) is None
    assert commit_reason(before, planned(approved, 30), DAY) == "plan changed"
    assert commit_reason(before, planned(window, 30), DAY) == "plan changed"
    assert planned(approved)["plan"]["approved_by"] == "alice"
