"""cycle/apply's records for the reports branch (apply and approval commits, read back by Git's
own trailer parser), interrupted applies found in the journal, and `petkeeper history`."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.adapters.state import StateDir, write_json
from agent.core.approval import HOST, Approval
from agent.core.policy import parse_policy
from agent.cycle.apply import (
    INTERRUPTED,
    ApplyResult,
    apply_record,
    approval_record,
    clear_journal,
    recover_interrupted,
)
from agent.cycle.decide import approval_key, used_approvals
from agent.cycle.record import new_records
from agent.operate.output import render_history

SRC = "8f14e45fceea167a5a36dedd4bea2543b2c1e7c8"
PID = "3f2a9c0d1e2b4a5f"
FP = "a547283f08a3a78e1f2887dd23ac2248b5ccdbed8f51b937fbfc8aa81f3fa1e4"
NOW = datetime(2026, 11, 25, 21, 30, tzinfo=UTC)
APPROVAL = Approval(host="db1", plan_id=PID, source_sha=SRC, fingerprint=FP, approver="alice",
                    how=HOST, approved_at="2026-11-25T20:00:00+00:00",
                    expires_at="2026-11-26T00:00:00+00:00", comment="ticket OPS-42")
RESULT = ApplyResult(host="db1", plan_id=PID, source_sha=SRC, result="not converged",
                     approved_by="alice", approval=APPROVAL.as_dict(), before_status="drifted",
                     after_status="drifted", leftovers=("Write motd", "Rotate logs"),
                     started="2026-11-25T21:00:00+00:00", finished="2026-11-25T21:02:10+00:00",
                     run_id="20261125T210000Z-a1b2c3", message="")


def git_trailers(message: str) -> dict[str, str]:
    """The trailers Git itself reads from MESSAGE (what `git log %(trailers)` shows)."""
    # No user or system config: a configured trailer would change what Git accepts.
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    out = subprocess.run(["git", "interpret-trailers", "--parse"], input=message, env=env,
                         cwd=os.path.abspath(os.sep), capture_output=True, text=True, check=True,
                         timeout=30).stdout
    return dict(line.split(": ", 1) for line in out.splitlines())


# --- apply_record ----------------------------------------------------------------------------

def test_an_apply_record_is_the_hosts_file_under_applies_committed_when_it_finished():
    record = apply_record(RESULT)

    assert (record.host, record.path, record.when) == ("db1", "applies/db1.yml",
                                                       "2026-11-25T21:02:10+00:00")


@pytest.mark.parametrize(("host", "path"), [
    ("web1.example.com", "applies/web1.example.com.yml"), ("fe80::1", "applies/fe80__1.yml"),
    ("../../etc/passwd", "applies/.._.._etc_passwd.yml"), ("a b/c", "applies/a_b_c.yml")])
def test_an_apply_record_for_an_unsafe_host_name_stays_one_file_under_applies(host: str,
                                                                               path: str):
    assert apply_record(dataclasses.replace(RESULT, host=host)).path == path


def test_an_apply_records_message_carries_trailers_git_can_parse():
    message = apply_record(RESULT).message

    assert message.splitlines()[0] == f"db1: apply of plan {PID}: not converged"
    assert git_trailers(message) == {
        "Petkeeper-Source": SRC, "Petkeeper-Run": "20261125T210000Z-a1b2c3",
        "Petkeeper-Host": "db1", "Petkeeper-Status": "drifted", "Petkeeper-Plan": PID,
        "Petkeeper-Approved-By": "alice"}
    assert "Approved by alice. Before: drifted, after: drifted.\nStill changing: Write motd, " \
           "Rotate logs\n" in message


@pytest.mark.parametrize(("tests", "line"), [
    ({"passed": True, "tests": 2, "failures": 0, "errors": 0, "failed": []},
     "Post-apply tests: passed (2 run, 0 failed)"),
    ({"passed": False, "tests": 3, "failures": 1, "errors": 1, "failed": ["t::a", "t::b"]},
     "Post-apply tests: FAILED (3 run, 2 failed)")])
def test_an_apply_records_message_says_how_the_repo_tests_ended(tests: dict[str, Any],
                                                                 line: str):
    converged = dataclasses.replace(RESULT, result="converged", after_status="clean",
                                    leftovers=(), tests=tests)
    record = apply_record(converged)

    assert line in record.message.splitlines()
    assert yaml.safe_load(record.content)["tests"] == tests


def test_an_auto_applys_trailer_names_the_policy_rule():
    auto = dataclasses.replace(RESULT, approved_by="policy: auto (self-heal the web tier)",
                               approval=None, leftovers=(), result="converged",
                               after_status="clean")

    message = apply_record(auto).message

    assert git_trailers(message)["Petkeeper-Approved-By"] == \
        "policy: auto (self-heal the web tier)"
    assert git_trailers(message)["Petkeeper-Status"] == "clean"
    assert "Still changing" not in message


def test_trailers_survive_a_rule_name_written_as_a_folded_yaml_scalar():
    policy = parse_policy(yaml.safe_load(
        "rules:\n  - name: >\n      self-heal the web tier\n    mode: auto\n"), "policy.yml")
    rule = policy.rules[0].name
    assert rule == "self-heal the web tier\n"
    auto = dataclasses.replace(RESULT, approved_by=f"policy: auto ({rule})")  # as apply_plan

    assert git_trailers(apply_record(auto).message).get("Petkeeper-Host") == "db1"


def test_an_apply_records_content_loads_back_to_the_result_under_a_comment():
    content = apply_record(RESULT).content

    assert content.startswith(f"# db1: apply of plan {PID}: not converged\n")
    assert yaml.safe_load(content) == RESULT.as_dict()
    assert yaml.safe_load(content)["leftovers"] == ["Write motd", "Rotate logs"]
    assert yaml.safe_load(content)["approval"]["comment"] == "ticket OPS-42"


def test_an_apply_record_names_each_task_it_changed_with_items_and_diff():
    changed = ({"role": "ssh", "task": "Regenerate the host key",
                "module": "ansible.builtin.command"},
               {"role": "users", "task": "Create the admins", "module": "ansible.builtin.user",
                "items": ["alice", "bob"]},
               {"role": None, "task": "Write motd", "module": "ansible.builtin.template",
                "diff": "--- before\n+++ after\n-old\n+new\n"})
    result = dataclasses.replace(RESULT, changed=changed)
    record = apply_record(result)

    assert yaml.safe_load(record.content)["changed"] == list(changed)
    assert "\nChanged: ssh | Regenerate the host key; users | Create the admins (2 item(s)); " \
           "Write motd\n" in record.message
    assert ApplyResult.from_dict(result.as_dict()) == result  # through the journal


# --- approval_record -------------------------------------------------------------------------

def test_an_approval_record_is_the_hosts_file_under_approvals_committed_when_approved():
    record = approval_record(APPROVAL)

    assert (record.host, record.path, record.when) == ("db1", "approvals/db1.yml",
                                                       "2026-11-25T20:00:00+00:00")
    assert approval_record(dataclasses.replace(APPROVAL, host="fe80::1")).path == \
        "approvals/fe80__1.yml"


def test_an_approval_records_message_carries_plan_and_approver_trailers():
    message = approval_record(APPROVAL).message

    assert message.splitlines()[0] == f"db1: plan {PID} approved by alice"
    assert git_trailers(message) == {"Petkeeper-Source": SRC, "Petkeeper-Host": "db1",
                                     "Petkeeper-Plan": PID, "Petkeeper-Approved-By": "alice"}
    assert "Expires 2026-11-26T00:00:00+00:00.\nticket OPS-42\n" in message


def test_an_approval_records_content_loads_back_to_the_approval():
    content = approval_record(APPROVAL).content

    assert content.startswith(f"# db1: plan {PID} approved by alice\n")
    assert Approval.from_dict(yaml.safe_load(content)) == APPROVAL


# --- recover_interrupted ---------------------------------------------------------------------

@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    s = StateDir(tmp_path / "state")
    s.ensure()
    return s


def journal(state: StateDir, result: ApplyResult) -> Path:
    """Journal RESULT's apply as apply_plan does before it starts."""
    path = state.journal / f"{result.plan_id}.json"
    fields = ("host", "plan_id", "source_sha", "approved_by", "run_id", "started", "approval",
              "before_status")
    write_json(path, {**{k: getattr(result, k) for k in fields}, "state": "applying"})
    return path


def test_an_apply_cut_short_is_recorded_as_interrupted_until_its_record_is_committed(
        state: StateDir):
    auto = dataclasses.replace(RESULT, host="web1", plan_id="fedcba9876543210", approval=None,
                               approved_by="policy: auto (self-heal)")
    paths = [journal(state, RESULT), journal(state, auto)]
    write_json(state.used_approvals_file, ["host:x"])

    found = recover_interrupted(state, NOW)

    assert [(r.host, r.plan_id, r.result) for r in found] == [
        ("db1", PID, INTERRUPTED), ("web1", "fedcba9876543210", INTERRUPTED)]
    assert found[0] == ApplyResult(
        host="db1", plan_id=PID, source_sha=SRC, result=INTERRUPTED, approved_by="alice",
        approval=APPROVAL.as_dict(), before_status="drifted", after_status="unknown",
        started="2026-11-25T21:00:00+00:00", finished="2026-11-25T21:30:00+00:00",
        run_id="20261125T210000Z-a1b2c3",
        message="the agent stopped during this apply; it was not resumed and will not be "
                "re-applied without a new approval")
    # A crash before the records are committed: the next cycle records the very same.
    again = recover_interrupted(state, NOW.replace(hour=23))
    assert [apply_record(r) for r in again] == [apply_record(r) for r in found]
    clear_journal(state, found)
    assert not any(p.exists() for p in paths)
    assert list(state.journal.iterdir()) == []
    assert recover_interrupted(state, NOW) == []
    assert used_approvals(state) == {"host:x", approval_key(APPROVAL)}  # spent, never replayed


def test_an_apply_journaled_before_its_approval_was_marked_used_spends_it(state: StateDir):
    journal(state, RESULT)  # the crash came between the journal and mark_used

    recover_interrupted(state, NOW)

    assert used_approvals(state) == {approval_key(APPROVAL)}


def test_a_finished_apply_whose_record_was_not_committed_is_recorded_as_it_ended(
        state: StateDir):
    write_json(state.journal / f"{PID}.json", {"state": "done", "result": RESULT.as_dict()})

    assert recover_interrupted(state, NOW) == [RESULT]
    assert used_approvals(state) == set()


class Committed:
    """A reports queue whose tip holds FILES (what new_records reads of a mirror)."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def read_blob(self, commit: str | None, path: str) -> bytes | None:
        content = self.files.get(path) if commit else None
        return None if content is None else content.encode()[:-1]  # as GitPython reads it


def test_a_record_the_queue_already_holds_is_not_committed_again():
    record, other = apply_record(RESULT), apply_record(dataclasses.replace(RESULT, run_id="x"))
    queue = Committed({record.path: record.content})

    assert new_records(queue, lambda host: "tip", [record]) == []  # type: ignore[arg-type]
    assert new_records(queue, lambda host: "tip", [other]) == [other]  # type: ignore[arg-type]
    assert new_records(queue, lambda host: None, [record]) == [record]  # type: ignore[arg-type]


def test_without_a_journal_folder_nothing_was_interrupted(state: StateDir):
    assert recover_interrupted(state, NOW) == []
    assert not state.journal.exists()


def test_an_interrupted_apply_is_recorded_like_any_apply(state: StateDir):
    journal(state, RESULT)

    (result,) = recover_interrupted(state, NOW)
    record = apply_record(result)

    assert record.message.splitlines()[0] == f"db1: apply of plan {PID}: interrupted"
    assert git_trailers(record.message)["Petkeeper-Status"] == "unknown"
    assert yaml.safe_load(record.content) == result.as_dict()


# --- output.render_history -------------------------------------------------------------------

def entry(message: str, date: str, sha: str = "1" * 40) -> dict[str, Any]:
    """A report_history() entry for a commit with MESSAGE, trailers as Git reads them."""
    return {"sha": sha, "date": date, "subject": message.splitlines()[0],
            "trailers": git_trailers(message)}


def test_history_shows_one_fact_per_line_with_the_approver_once():
    check = ("db1: drifted (1 change)\n\nCheck of 8f14e45fceea by pet1 (status changed).\n\n"
             f"Petkeeper-Source: {SRC}\nPetkeeper-Run: r1\nPetkeeper-Host: db1\n"
             "Petkeeper-Status: drifted\n")
    other = check.replace("db1", "web12").replace("drifted (1 change)", "clean (0 changes)")
    entries = [entry(apply_record(RESULT).message, "2026-11-25T21:02:10+00:00"),
               entry(approval_record(APPROVAL).message, "2026-11-25T20:00:00+00:00"),
               entry(other, "2026-11-25T19:30:00+00:00"),
               entry(check, "2026-11-25T19:00:00+00:00")]

    assert render_history(entries).splitlines() == [
        f"2026-11-25T21:02:10+00:00  db1    apply of plan {PID}: not converged, approved by "
        f"alice  (source {SRC[:12]})",
        f"2026-11-25T20:00:00+00:00  db1    plan {PID} approved by alice  (source {SRC[:12]})",
        f"2026-11-25T19:30:00+00:00  web12  clean (0 changes)  (source {SRC[:12]})",
        f"2026-11-25T19:00:00+00:00  db1    drifted (1 change)  (source {SRC[:12]})",
    ]


def test_history_shows_each_apply_id_and_an_undo_as_what_it_undid():
    applied = dataclasses.replace(RESULT, result="converged", apply_id="r1/db1")
    undo = dataclasses.replace(RESULT, plan_id="5d1c0e2a9b7f4c3d", result="undone",
                               apply_id="r2/db1", undo_of="r1/db1")
    entries = [entry(apply_record(undo).message, "2026-11-25T22:00:00+00:00"),
               entry(apply_record(applied).message, "2026-11-25T21:02:10+00:00")]

    assert entries[0]["trailers"]["Petkeeper-Undo"] == "r1/db1"
    assert render_history(entries).splitlines() == [
        "2026-11-25T22:00:00+00:00  db1  undo of r1/db1 (plan 5d1c0e2a9b7f4c3d): undone, "
        f"approved by alice  [apply id r2/db1]  (source {SRC[:12]})",
        f"2026-11-25T21:02:10+00:00  db1  apply of plan {PID}: converged, approved by alice  "
        f"[apply id r1/db1]  (source {SRC[:12]})"]


def test_history_shows_text_from_commits_with_control_characters_escaped():
    hostile = ("db1: drifted \x1b[2J(1 change)\n\nx\n\nPetkeeper-Host: db1\n")
    [line] = render_history([entry(hostile, "2026-11-25T19:00:00+00:00")]).splitlines()
    assert "\x1b" not in line and "drifted \\x1b[2J(1 change)" in line


def test_history_without_commits_says_there_are_no_reports_yet():
    assert render_history([]) == "no reports yet"
