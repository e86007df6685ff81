"""agent.core.approval: a person's yes to one exact drift, void on a new commit, other drift, expiry
or use; approvals read from files committed under approvals/."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from agent.core.approval import (
    GIT,
    HOST,
    Approval,
    expiry,
    parse_git_approval,
    plan_id,
    void_reason,
)
from agent.errors import RepoError

SRC = "8f14e45fceea167a5a36dedd4bea2543b2c1e7c8"
NEW_SRC = "c9f0f895fb98ab9159f51fd0297e236d0f0d4c1a"
FP = "a547283f08a3a78e1f2887dd23ac2248b5ccdbed8f51b937fbfc8aa81f3fa1e4"
OTHER_FP = "0d1f8a3c8a3ee5b2e6b1ff51a7a0d5b4c41a1b6f1e1f3c2d8e4e2b76f0a1c9e2"
NOW = datetime(2026, 11, 25, 21, 0, tzinfo=UTC)
PID = plan_id("db1", SRC, FP)


def approval(**changes: Any) -> Approval:
    base = Approval(host="db1", plan_id=PID, source_sha=SRC, fingerprint=FP, approver="alice",
                    how=HOST, approved_at="2026-11-25T20:00:00+00:00",
                    expires_at="2026-11-26T00:00:00+00:00")
    return dataclasses.replace(base, **changes)


# --- plan_id ---------------------------------------------------------------------------------

def test_plan_id_is_the_same_for_the_same_host_source_and_drift():
    assert plan_id("db1", SRC, FP) == plan_id("db1", SRC, FP) == PID
    assert len(PID) == 16 and int(PID, 16) >= 0


@pytest.mark.parametrize("other", [("db2", SRC, FP), ("db1", NEW_SRC, FP),
                                   ("db1", SRC, OTHER_FP), ("db1", SRC, "")])
def test_plan_id_changes_with_each_of_host_source_and_fingerprint(other: tuple[str, str, str]):
    assert plan_id(*other) != PID


# --- void_reason -----------------------------------------------------------------------------

def void(a: Approval, now: datetime = NOW, used: bool = False) -> str | None:
    return void_reason(a, "db1", SRC, FP, now, used=used)


def test_an_approval_for_this_host_source_and_drift_before_expiry_counts():
    assert void(approval()) is None


@pytest.mark.parametrize(("changes", "used", "reason"), [
    ({"host": "db2"}, False, "approval is for host 'db2', not 'db1'"),
    ({}, True, "approval by alice was already used; approve the plan again"),
    ({"source_sha": "", "fingerprint": ""}, False,
     f"approval names plan {PID}, which is not a current plan of db1: approve the plan id "
     "petkeeper plan shows for it"),
    ({"source_sha": NEW_SRC}, False,
     f"approved for source commit {NEW_SRC[:12]}, but the source is now {SRC[:12]}: a new "
     "commit voids an approval"),
    ({"fingerprint": OTHER_FP}, False,
     f"approved drift {OTHER_FP[:12]} differs from the current {FP[:12]}: drift changed since "
     "approval"),
    ({"expires_at": "2026-11-25T20:59:59+00:00"}, False,
     "approval by alice expired at 2026-11-25T20:59:59+00:00"),
    ({"expires_at": "soon"}, False, "approval has an unreadable expiry 'soon'"),
    ({"expires_at": ""}, False, "approval has an unreadable expiry ''"),
    ({"expires_at": "2026-11-26T00:00:00"}, False,  # naive: cannot be compared with now
     "approval has an unreadable expiry '2026-11-26T00:00:00'"),
])
def test_an_approval_is_void_and_says_why(changes: dict[str, str], used: bool, reason: str):
    assert void(approval(**changes), used=used) == reason


@pytest.mark.parametrize("expires_at", ["2026-11-25T21:00:00+00:00",
                                        "2026-11-25T22:00:00+01:00"])
def test_an_approval_expiring_at_this_very_instant_is_expired(expires_at: str):
    assert void(approval(expires_at=expires_at)) == \
        f"approval by alice expired at {expires_at}"
    assert void(approval(expires_at=expires_at), now=NOW - timedelta(seconds=1)) is None


# --- expiry ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "delta"), [("4h", timedelta(hours=4)),
                                              ("90m", timedelta(minutes=90)),
                                              ("1d", timedelta(days=1)),
                                              ("30", timedelta(seconds=30))])
def test_expiry_is_now_plus_the_duration(value: str, delta: timedelta):
    assert expiry(NOW, value) == NOW + delta


@pytest.mark.parametrize("value", ["soon", "0h", "-4h", "", "4 hours"])
def test_expiry_rejects_what_is_not_a_positive_duration(value: str):
    with pytest.raises(ValueError, match="expected a duration like 4h"):
        expiry(NOW, value)


# --- parse_git_approval ----------------------------------------------------------------------

PATH = "approvals/db1.yml"
COMMIT = "5d41402abc4b2a76b9719d911017c592ae3f1c2d"
AUTHOR = "Alice Admin <alice@example.com>"
COMMITTED = datetime(2026, 11, 25, 20, 0, tzinfo=UTC)
WEB_PID = plan_id("web1", SRC, OTHER_FP)
PLANS = {PID: ("db1", SRC, FP), WEB_PID: ("web1", SRC, OTHER_FP)}


def parse(data: Any) -> Approval:
    return parse_git_approval(data, PATH, COMMIT, AUTHOR, COMMITTED, PLANS)


def git_error(data: Any) -> str:
    with pytest.raises(RepoError) as e:
        parse(data)
    return str(e.value)


def test_a_git_approval_naming_a_current_plan_is_bound_to_that_plans_source_and_drift():
    a = parse({"host": "db1", "plan": PID, "expires": "8h", "comment": "ticket OPS-42"})

    assert a == Approval(host="db1", plan_id=PID, source_sha=SRC, fingerprint=FP,
                         approver=AUTHOR, how=GIT, approved_at="2026-11-25T20:00:00+00:00",
                         expires_at="2026-11-26T04:00:00+00:00", comment="ticket OPS-42",
                         origin=f"{PATH}@{COMMIT}")
    assert void(a) is None


@pytest.mark.parametrize("pid", [WEB_PID, "0123456789abcdef"])
def test_a_git_approval_naming_another_hosts_or_an_unknown_plan_is_not_a_current_plan(pid: str):
    a = parse({"host": "db1", "plan": pid, "expires": "8h"})

    assert (a.plan_id, a.source_sha, a.fingerprint) == (pid, "", "")
    assert void(a) == (f"approval names plan {pid}, which is not a current plan of db1: "
                       "approve the plan id petkeeper plan shows for it")


def test_a_git_approval_with_fingerprint_and_source_computes_its_plan_id():
    a = parse({"host": "db1", "fingerprint": FP, "source": SRC, "expires": "8h"})

    assert (a.plan_id, a.source_sha, a.fingerprint) == (PID, SRC, FP)
    assert void(a) is None


def test_a_git_approval_for_an_older_commit_is_voided_by_the_new_one():
    a = parse({"host": "db1", "fingerprint": FP, "source": NEW_SRC, "expires": "8h"})

    assert a.plan_id == plan_id("db1", NEW_SRC, FP)
    assert "a new commit voids an approval" in (void(a) or "")


@pytest.mark.parametrize(("expires", "expires_at"), [
    ("2026-11-26T08:00:00+01:00", "2026-11-26T08:00:00+01:00"),
    ("2026-11-26T07:00:00Z", "2026-11-26T07:00:00+00:00"),
    ("8h", "2026-11-26T04:00:00+00:00"),  # counted from the commit, not from now
    ("90m", "2026-11-25T21:30:00+00:00"),
    (3600, "2026-11-25T21:00:00+00:00"),
])
def test_a_git_approval_expires_at_a_zoned_time_or_a_duration_after_its_commit(
        expires: Any, expires_at: str):
    assert parse({"host": "db1", "plan": PID, "expires": expires}).expires_at == expires_at


def test_a_git_approval_with_a_yaml_timestamp_keeps_its_zone():
    data = yaml.safe_load(f"host: db1\nplan: {PID}\nexpires: 2026-11-26T08:00:00+01:00\n")

    assert isinstance(data["expires"], datetime)
    assert parse(data).expires_at == "2026-11-26T08:00:00+01:00"


def test_a_git_approval_with_a_yaml_timestamp_without_zone_is_rejected_like_a_naive_iso_time():
    data = yaml.safe_load(f"host: db1\nplan: {PID}\nexpires: 2026-11-26 08:00:00\n")

    with pytest.raises(RepoError, match="neither an ISO 8601 time with a zone nor a duration"):
        parse(data)


def test_a_plan_id_pasted_unquoted_into_an_approval_file_approves_that_plan():
    pid = plan_id("web128731", SRC, FP)
    assert pid == "0164227016101736"
    data = yaml.safe_load(f"host: web128731\nplan: {pid}\nexpires: 8h\n")

    a = parse_git_approval(data, PATH, COMMIT, AUTHOR, COMMITTED, {pid: ("web128731", SRC, FP)})

    assert a.plan_id == pid
    assert void_reason(a, "web128731", SRC, FP, NOW) is None


@pytest.mark.parametrize(("data", "problem"), [
    (["db1"], "expected a mapping with host, plan and expires"),
    ("host: db1", "expected a mapping with host, plan and expires"),
    (None, "expected a mapping with host, plan and expires"),
    ({"plan": PID, "expires": "8h"}, "host: missing; name the host this approval is for"),
    ({"host": "db1", "expires": "8h"}, "plan: missing; give the plan id from `petkeeper plan`, "
                                       "or both fingerprint and source"),
    ({"host": "db1", "source": SRC, "expires": "8h"}, "plan: missing"),
    ({"host": "db1", "fingerprint": FP, "expires": "8h"}, "plan: missing"),
    ({"host": "db1", "plan": PID, "expires": "8h", "approver": "root"},
     "approver: unknown key; use host, plan (or fingerprint and source), expires, comment"),
    ({"host": "db1", "plan": PID}, "expires: missing; give an ISO 8601 time or a duration "
                                   "like 8h"),
    ({"host": "db1", "plan": PID, "expires": "2026-11-26T08:00:00"},
     "expires: '2026-11-26T08:00:00' is neither an ISO 8601 time with a zone nor a duration; "
     "write e.g. 2026-12-01T18:00:00+00:00 or 8h"),
    ({"host": "db1", "plan": PID, "expires": "tomorrow"},
     "expires: 'tomorrow' is neither an ISO 8601 time with a zone nor a duration"),
    ({"host": "db1", "plan": PID, "expires": "0h"}, "expires: '0h' is neither"),
    ({"host": "db1", "plan": PID, "expires": "2026-11-26"}, "expires: '2026-11-26' is neither"),
])
def test_an_invalid_git_approval_names_the_file_the_commit_and_the_problem(data: Any,
                                                                            problem: str):
    message = git_error(data)

    assert message.startswith(f"{PATH} (commit {COMMIT[:12]}): {problem}")
    assert COMMIT[12:] not in message


# --- partial plans ---------------------------------------------------------------------------

def test_an_approval_of_a_partial_plan_counts_only_when_it_acknowledges_it():
    assert void_reason(approval(partial=True), "db1", SRC, FP, NOW, partial=True) is None
    assert "approve it with petkeeper approve --partial" in str(
        void_reason(approval(), "db1", SRC, FP, NOW, partial=True))
    assert void_reason(approval(partial=True), "db1", SRC, FP, NOW) is None  # harmless extra


def test_a_git_approval_acknowledges_a_partial_plan_with_partial_true():
    a = parse({"host": "db1", "plan": PID, "expires": "8h", "partial": True})

    assert a.partial is True
    assert parse({"host": "db1", "plan": PID, "expires": "8h"}).partial is False


@pytest.mark.parametrize("value", ["yes", 1, None, ["true"]])
def test_a_git_approval_whose_partial_is_not_a_boolean_is_refused_naming_the_key(value: Any):
    message = git_error({"host": "db1", "plan": PID, "expires": "8h", "partial": value})

    assert message.startswith(f"{PATH} (commit {COMMIT[:12]}): partial: expected true or "
                              "false, got ")
    assert message.endswith("write partial: true to approve a partial plan")


def test_a_host_approval_reads_back_its_partial_flag_as_a_boolean():
    assert Approval.from_dict(approval(partial=True).as_dict()).partial is True
    assert Approval.from_dict({**approval().as_dict(), "partial": "false"}).partial is False
    assert Approval.from_dict({k: v for k, v in approval().as_dict().items()
                               if k != "partial"}) == approval()  # written before the flag
