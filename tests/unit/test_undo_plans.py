"""The undo store, plans, approvals and holds, without Ansible: agent.adapters.snapshots,
agent.cycle.undo, agent.cycle.decide.hold_plan and the callback's file paths."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.adapters.snapshots import (
    blob_path,
    prune_snapshots,
    read_holds,
    read_undo_plans,
    store_blob,
    write_manifest,
    write_undo_plans,
)
from agent.adapters.state import StateDir
from agent.core.approval import GIT, Approval, parse_git_approval
from agent.core.undo import FileState
from agent.cycle.decide import hold_plan
from agent.cycle.undo import (
    apply_undos,
    build_restore_play,
    check_undo_approval,
    find_apply,
    hold_host,
    release_host,
)
from agent.errors import RepoError, StalledError
from agent.plugins.petkeeper_facts import _touched

NOW = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    s = StateDir(tmp_path / "state")
    s.ensure()
    return s


def manifest(aid: str, taken: str, blob: str, state_: str = "applied") -> dict:
    return {"apply_id": aid, "host": aid.split("/")[1], "state": state_, "taken": taken,
            "files": [{"path": "/etc/motd", "blob": True, "hidden": False, "skipped": "",
                       "before": FileState(True, "file", blob, "0600", "nobody", "nogroup",
                                           3).as_dict()}],
            "irreversible": []}


def test_blobs_are_content_addressed_and_checked_when_read(state):
    digest = store_blob(state, b"hand edit\n")
    assert digest == hashlib.sha256(b"hand edit\n").hexdigest()
    assert store_blob(state, b"hand edit\n") == digest  # once
    assert blob_path(state, digest).read_bytes() == b"hand edit\n"
    assert oct(blob_path(state, digest).stat().st_mode & 0o777) == "0o600"
    blob_path(state, digest).write_bytes(b"tampered\n")
    with pytest.raises(StalledError, match="do not match their hash"):
        blob_path(state, digest)
    with pytest.raises(StalledError, match="missing"):
        blob_path(state, "0" * 64)


def test_prune_drops_old_snapshots_and_blobs_no_snapshot_holds(state):
    old, new = store_blob(state, b"old\n"), store_blob(state, b"new\n")
    write_manifest(state, manifest("r1/pet", "2026-10-01T00:00:00+00:00", old))
    write_manifest(state, manifest("r2/pet", "2026-11-30T00:00:00+00:00", new))
    assert prune_snapshots(state, NOW, 30 * 86400, 10**6) == ["r1/pet"]
    assert sorted(p.name for p in (state.undo / "blobs").iterdir()) == [new]
    with pytest.raises(RepoError, match=r"no snapshot of such an apply.*r2/pet"):
        find_apply(state, "r1/pet", None)
    assert find_apply(state, None, "pet")["apply_id"] == "r2/pet"


def test_find_apply_refuses_an_apply_that_never_started(state):
    write_manifest(state, manifest("r1/pet", "2026-11-30T00:00:00+00:00", "a" * 64, "taken"))
    with pytest.raises(RepoError, match="never started"):
        find_apply(state, "r1/pet", None)
    with pytest.raises(RepoError, match="no apply of pet has a snapshot"):
        find_apply(state, None, "pet")


def test_restore_play_copies_bytes_mode_and_owners_back_and_removes_what_was_not(state):
    digest = store_blob(state, b"hand\n")
    hand = FileState(True, "file", digest, "0600", "nobody", "nogroup", 5).as_dict()
    [play] = build_restore_play(state, [
        {"path": "/etc/motd", "before": hand, "hidden": False},
        {"path": "/etc/token", "before": hand, "hidden": True},
        {"path": "/etc/new.conf", "before": FileState(False).as_dict()}])
    motd, token, new = play["tasks"]
    assert motd["ansible.builtin.copy"] == {"src": str(blob_path(state, digest)),
                                            "dest": "/etc/motd", "mode": "0600",
                                            "owner": "nobody", "group": "nogroup"}
    assert "no_log" not in motd and token["no_log"] is True
    assert new["ansible.builtin.file"] == {"path": "/etc/new.conf", "state": "absent"}


def test_an_undo_plan_with_conflicts_needs_force_and_one_with_nothing_is_refused():
    plan = {"plan_id": "p1", "apply_id": "r1/pet", "action": "wait",
            "conflicts": ["/etc/motd"]}
    with pytest.raises(RepoError, match=r"/etc/motd changed again.*--force-conflicts"):
        check_undo_approval(plan, False)
    check_undo_approval(plan, True)
    with pytest.raises(RepoError, match="nothing to undo"):
        check_undo_approval({**plan, "action": "nothing", "conflicts": []}, True)


def test_run_applies_no_undo_plan_without_an_approval_of_that_very_plan(state):
    """Policy auto, or an approval of the host's other plan, never applies an undo: run
    leaves the plan waiting and reaches no Ansible (it has no config or source to run with)."""
    plan = {"plan_id": "p1", "host": "pet", "apply_id": "r1/pet", "source_sha": "undo r1/pet",
            "fingerprint": "f" * 64, "action": "wait", "conflicts": []}
    write_undo_plans(state, {"p1": plan})
    other = Approval(host="pet", plan_id="p2", source_sha="s1", fingerprint="f" * 64,
                     approver="bob", how=GIT, approved_at=NOW.isoformat(),
                     expires_at=(NOW + timedelta(hours=8)).isoformat())

    done = apply_undos(None, None, SimpleNamespace(hosts=("pet",)),  # type: ignore[arg-type]
                       state, [other], "r2", lambda: NOW)

    assert done == [] and read_undo_plans(state) == {"p1": plan}


def test_a_hold_waits_then_lifts_when_a_new_commit_changes_the_drift(state):
    hold_host(state, "pet", "r1/pet", "alice", "2026-12-01T22:00:00+00:00")
    holds = read_holds(state)
    reason = hold_plan(state, "pet", "s1", "f1", holds)
    assert reason == "held by undo of r1/pet (alice, 2026-12-01T22:00:00+00:00)"
    assert read_holds(state)["pet"]["seen"] == {"source_sha": "s1", "fingerprint": "f1"}
    assert hold_plan(state, "pet", "s2", "f1", read_holds(state))  # unrelated commit
    assert hold_plan(state, "pet", "s2", "f2", read_holds(state)) is None
    assert read_holds(state) == {}
    assert hold_plan(state, "other", "s1", "f1", {}) is None


def test_release_lifts_a_hold_and_names_the_held_hosts_otherwise(state):
    hold_host(state, "pet", "r1/pet", "alice", "t")
    with pytest.raises(RepoError, match="not held by an undo \\(held hosts: pet\\)"):
        release_host(state, "web1")
    assert release_host(state, "pet")["apply_id"] == "r1/pet"
    assert read_holds(state) == {}


def test_a_git_approval_may_force_conflicts_and_nothing_else_than_a_boolean():
    plans = {"p1": ("pet", "undo r1/pet", "f" * 64)}
    when = NOW - timedelta(hours=1)
    approval = parse_git_approval({"host": "pet", "plan": "p1", "expires": "8h",
                                   "force_conflicts": True}, "approvals/pet.yml", "c" * 40,
                                  "bob", when, plans)
    assert approval.force_conflicts and approval.source_sha == "undo r1/pet"
    with pytest.raises(RepoError, match="force_conflicts: expected true or false"):
        parse_git_approval({"host": "pet", "plan": "p1", "expires": "8h",
                            "force_conflicts": "yes"}, "approvals/pet.yml", "c" * 40, "bob",
                           when, plans)


def _result(action: str, args: dict, res: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(_task=SimpleNamespace(action=action, args=args),
                           _result=res or {})


@pytest.mark.parametrize(("action", "args", "res", "paths"), [
    ("ansible.builtin.copy", {"dest": "/etc/motd", "content": "x"}, {}, ["/etc/motd"]),
    ("ansible.builtin.lineinfile", {"path": "/etc/hosts", "line": "x"}, {}, ["/etc/hosts"]),
    ("ansible.builtin.template", {"dest": "/etc/a"},
     {"results": [{"dest": "/etc/a"}, {"dest": "/etc/b"}]}, ["/etc/a", "/etc/b"]),
    ("ansible.posix.sysctl", {"name": "vm.swappiness", "value": "10"}, {},
     ["/etc/sysctl.conf"]),
    ("ansible.builtin.user", {"name": "bob", "state": "absent"}, {},
     ["/etc/group", "/etc/passwd", "/etc/shadow"]),
    ("ansible.posix.authorized_key", {"user": "bob", "key": "ssh-ed25519 AAA"},
     {"keyfile": "/home/bob/.ssh/authorized_keys"}, ["/home/bob/.ssh/authorized_keys"]),
    ("ansible.builtin.file", {"path": "relative/path"}, {}, []),
    ("ansible.builtin.unarchive", {"dest": "/opt/app", "src": "a.tgz"}, {}, None),
])
def test_the_callback_records_the_files_a_change_touches(action, args, res, paths):
    assert _touched(_result(action, args, res)).get("paths") == paths


def test_the_callback_records_no_file_for_other_modules():
    assert _touched(_result("ansible.builtin.command", {"cmd": "/bin/true"})) == {}


def test_the_undo_plan_shows_files_diffs_conflicts_and_the_irreversible_escaped():
    from agent.operate.output import render_undo_plan

    plan = {"host": "pet", "apply_id": "r1/pet", "plan_id": "p1", "action": "wait",
            "files": [{"path": "/etc/motd", "action": "restore", "why": ""},
                      {"path": "/etc/\x1b[31mevil", "action": "conflict", "why": ""},
                      {"path": "/etc/big", "action": "not snapshotted",
                       "why": "more than undo.max_file"}],
            "changes": [{"task": "restore /etc/motd", "diff": "-new\n+hand\n"}],
            "conflicts": ["/etc/\x1b[31mevil"],
            "irreversible": [{"task": "Refresh the cache", "reason": "a command"}]}
    text = render_undo_plan(plan)
    assert "\x1b" not in text and "/etc/\\x1b[31mevil: conflict" in text
    assert "  /etc/motd: restore\n      -new\n      +hand" in text
    assert "/etc/big: not snapshotted (more than undo.max_file)" in text
    assert "irreversible: Refresh the cache: a command" in text
    assert "sudo petkeeper approve p1 --force-conflicts" in text
