"""agent.core.undo: what an undo can put back, what it restores, conflicts, holds, pruning."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.core.drift import HIDDEN, Change
from agent.core.undo import (
    ALREADY,
    CONFLICT,
    LOST,
    RESTORE,
    FileState,
    classify_file,
    hold_lifted,
    irreversible_reason,
    parse_size,
    parse_stat,
    select_pruned,
    snapshot_paths,
    unrestorable,
)

HAND = FileState(True, "file", "a" * 64, "0600", "nobody", "nogroup", 20)
APPLIED = FileState(True, "file", "b" * 64, "0644", "root", "root", 21)
ENTRY = {"path": "/etc/motd", "before": HAND.as_dict(), "after": APPLIED.as_dict()}


@pytest.mark.parametrize(("module", "paths", "state", "why"), [
    ("ansible.builtin.copy", ("/etc/motd",), "", ""),
    ("ansible.builtin.lineinfile", ("/etc/hosts",), "present", ""),
    ("ansible.builtin.command", (), "", "a command"),
    ("ansible.builtin.shell", (), "", "a command"),
    ("ansible.builtin.apt", (), "present", "a package"),
    ("ansible.builtin.package", (), "absent", "a package"),
    ("ansible.builtin.systemd_service", (), "restarted", "a service"),
    ("ansible.builtin.user", ("/etc/passwd",), "absent", "a user removal"),
    ("ansible.builtin.user", ("/etc/passwd",), "present", ""),
    ("ansible.posix.sysctl", ("/etc/sysctl.conf",), "present", "the value loaded into the kernel"),
    ("ansible.builtin.copy", (), "", "copy: the change names no file"),
    ("community.general.timezone", (), "", "timezone: Petkeeper cannot snapshot"),
])
def test_irreversible_reason_names_what_no_file_restores(module, paths, state, why):
    reason = irreversible_reason(module, paths, state)
    assert reason.startswith(why) if why else reason == ""


def test_classify_file_restores_what_the_apply_left_and_refuses_what_changed_since():
    assert classify_file(ENTRY, APPLIED) == RESTORE
    assert classify_file(ENTRY, HAND) == ALREADY
    assert classify_file(ENTRY, FileState(True, "file", "c" * 64, "0644", "root", "root")) == \
        CONFLICT
    # The same bytes with another owner is a change since the apply too.
    assert classify_file(ENTRY, FileState(**{**APPLIED.__dict__, "owner": "bob"})) == CONFLICT
    assert classify_file({**ENTRY, "skipped": "too large"}, APPLIED) == LOST


def test_classify_file_without_the_applied_state_asks_about_every_change():
    cut_short = {k: v for k, v in ENTRY.items() if k != "after"}
    assert classify_file(cut_short, APPLIED) == CONFLICT
    assert classify_file(cut_short, HAND) == ALREADY


def test_a_file_the_apply_created_is_restored_by_removing_it():
    created = {"path": "/etc/new", "before": FileState(False).as_dict(),
               "after": APPLIED.as_dict()}
    assert classify_file(created, APPLIED) == RESTORE
    assert classify_file(created, FileState(False)) == ALREADY


def test_parse_stat_reads_hash_mode_and_owners():
    res = {"stat": {"exists": True, "isreg": True, "checksum": "c" * 64, "mode": "0640",
                    "pw_name": "root", "gr_name": "adm", "size": 7}}
    assert parse_stat(res) == FileState(True, "file", "c" * 64, "0640", "root", "adm", 7)
    assert parse_stat({"stat": {"exists": False}}) == FileState(False)


def test_snapshot_paths_once_each_and_hidden_when_a_no_log_task_writes_it():
    changes = [Change("p", None, "a", "copy", "-x\n+y\n", paths=("/etc/b", "/etc/a")),
               Change("p", None, "b", "template", HIDDEN, paths=("/etc/a",)),
               Change("p", None, "c", "command", "", True, irreversible="a command")]
    assert snapshot_paths(changes) == [("/etc/a", True), ("/etc/b", False)]


def test_unrestorable_files_are_named_with_why():
    assert unrestorable("/etc/motd", HAND, 1024) == ""
    assert "undo.max_file" in unrestorable("/etc/motd", HAND, 10)
    assert "Jinja" in unrestorable("/etc/{{ x }}", HAND, 1024)
    assert "link" in unrestorable("/etc/l", FileState(True, "link"), 1024)


def test_a_hold_lifts_only_when_a_new_commit_changed_the_drift():
    hold = {"apply_id": "r/pet", "by": "alice", "at": "t",
            "seen": {"source_sha": "s1", "fingerprint": "f1"}}
    assert not hold_lifted(hold, "s1", "f1")
    assert not hold_lifted(hold, "s2", "f1")  # another commit, the same drift: still held
    assert not hold_lifted(hold, "s1", "f2")  # the host changed, not the source
    assert hold_lifted(hold, "s2", "f2")
    assert not hold_lifted({**hold, "seen": None}, "s2", "f2")


def test_select_pruned_drops_old_snapshots_then_the_oldest_beyond_max_bytes():
    now = datetime(2026, 12, 1, tzinfo=UTC)

    def manifest(aid: str, taken: str, blob: str) -> dict:
        return {"apply_id": aid, "taken": taken,
                "files": [{"blob": True, "before": {"sha256": blob}}]}

    manifests = [manifest("old", "2026-10-01T00:00:00+00:00", "x"),
                 manifest("mid", "2026-11-29T00:00:00+00:00", "y"),
                 manifest("new", "2026-11-30T00:00:00+00:00", "y")]
    sizes = {"x": 100, "y": 60}
    assert select_pruned(manifests, sizes, now, 30 * 86400, 1000) == ["old"]
    # "mid" and "new" share blob y: it is counted once.
    assert select_pruned(manifests, sizes, now, 365 * 86400, 160) == []
    assert select_pruned(manifests, sizes, now, 365 * 86400, 100) == ["old"]
    assert select_pruned(manifests, sizes, now, 365 * 86400, 50) == ["old", "mid", "new"]


@pytest.mark.parametrize(("text", "size"), [("256MiB", 256 * 1024**2), ("10 MB", 10**7),
                                            (4096, 4096), ("1GiB", 1024**3), ("lots", None),
                                            (True, None), (-1, None)])
def test_parse_size(text, size):
    assert parse_size(text) == size
