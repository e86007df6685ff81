"""Undo: what an apply's snapshot holds, what an undo may restore, and what it cannot.
Pure functions over plain data.

A snapshot, taken before an apply, holds per file its bytes' sha256, mode, owner and group (or
that it did not exist); the bytes themselves rest in the state directory only. After the apply
the same facts are read again: an undo restores a file that is as the apply left it, and
calls a conflict a file that changed again since (neither the applied state nor the snapshot).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

# What changes live state no file restores: marked irreversible in the plan, before approval.
PACKAGE_MODULES = frozenset({"package", "apt", "dnf", "dnf5", "yum", "apk", "zypper", "pacman",
                             "pip", "snap", "gem", "npm", "flatpak", "homebrew", "pkgng",
                             "portage", "apt_rpm", "deb822_repository"})
SERVICE_MODULES = frozenset({"service", "systemd", "systemd_service", "sysvinit", "openrc",
                             "runit", "supervisorctl", "reboot"})
COMMAND_MODULES = frozenset({"command", "shell", "raw", "script", "expect"})
# The modules whose files an undo restores (agent.plugins.petkeeper_facts.UNDO_MODULES).
FILE_MODULES = frozenset({"file", "copy", "template", "lineinfile", "blockinfile", "ini_file",
                          "replace", "assemble", "xml", "get_url", "known_hosts", "patch",
                          "htpasswd", "pam_limits", "sysctl", "cron", "authorized_key",
                          "sudoers", "user", "group"})
TEMPLATE_MARKS = ("{{", "{%", "{#")  # a restore play names paths literally: none may template

RESTORE, ALREADY, CONFLICT, LOST = "restore", "already restored", "conflict", "not snapshotted"


def irreversible_reason(module: str, paths: Sequence[str], state: str = "") -> str:
    """Why an undo could not put back what a change of MODULE does ('' when it can: a change
    to the files PATHS name). STATE is the task's state argument."""
    short = module.rsplit(".", 1)[-1]
    if short in COMMAND_MODULES:
        return "a command: what it did is not known, so it cannot be put back"
    if short in PACKAGE_MODULES:
        return "a package install or removal"
    if short in SERVICE_MODULES:
        return "a service started, stopped, restarted or reloaded"
    if short not in FILE_MODULES:
        return f"{short}: Petkeeper cannot snapshot what this module changes"
    if not paths:
        return f"{short}: the change names no file that could be snapshotted"
    if short in ("user", "group") and state == "absent":
        return f"a {short} removal (its files are restored, its home and mail are not)"
    if short == "sysctl":
        return "the value loaded into the kernel (the file is restored, the live value is not)"
    return ""


@dataclass(frozen=True)
class FileState:
    """One file as stat read it on the host (exists False: there was none)."""

    exists: bool
    kind: str = ""  # file, directory, link, other
    sha256: str = ""
    mode: str = ""
    owner: str = ""
    group: str = ""
    size: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"exists": self.exists, "kind": self.kind, "sha256": self.sha256,
                "mode": self.mode, "owner": self.owner, "group": self.group, "size": self.size}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileState:
        return cls(exists=bool(data.get("exists")), kind=str(data.get("kind") or ""),
                   sha256=str(data.get("sha256") or ""), mode=str(data.get("mode") or ""),
                   owner=str(data.get("owner") or ""), group=str(data.get("group") or ""),
                   size=int(data.get("size") or 0))

    def same(self, other: FileState) -> bool:
        """Whether OTHER is this very state: content, mode, owner and group."""
        return self.as_dict() == other.as_dict()


def parse_stat(res: Mapping[str, Any]) -> FileState:
    """Given one result of ansible.builtin.stat (checksum_algorithm sha256), the file's state."""
    st = res.get("stat") or {}
    if not st.get("exists"):
        return FileState(exists=False)
    kind = "file" if st.get("isreg") else "directory" if st.get("isdir") else \
        "link" if st.get("islnk") else "other"
    return FileState(exists=True, kind=kind, sha256=str(st.get("checksum") or ""),
                     mode=str(st.get("mode") or ""), owner=str(st.get("pw_name") or ""),
                     group=str(st.get("gr_name") or ""), size=int(st.get("size") or 0))


def snapshot_paths(changes: Iterable[Any]) -> list[tuple[str, bool]]:
    """The files an apply of CHANGES touches, each with whether a no_log task touches it (then
    no diff of it shows content): (path, hidden), sorted, once each."""
    found: dict[str, bool] = {}
    for change in changes:
        if change.irreversible and not change.paths:
            continue
        for path in change.paths:
            found[path] = found.get(path, False) or change.diff == "(hidden: no_log)"
    return sorted(found.items())


def unrestorable(path: str, before: FileState, max_file: int) -> str:
    """Why the snapshot of PATH (BEFORE) cannot be restored ('' when it can)."""
    if any(mark in path for mark in TEMPLATE_MARKS):
        return "its path looks like a Jinja template"
    if before.exists and before.kind not in ("file", "directory"):
        return f"a {before.kind}: only files and directories are snapshotted"
    if before.kind == "file" and before.size > max_file:
        return f"{before.size} bytes, more than undo.max_file ({max_file})"
    return ""


def classify_file(entry: Mapping[str, Any], now: FileState) -> str:
    """What an undo does with ENTRY (a snapshot's file: before, after, skipped), NOW read:
    RESTORE it, nothing (ALREADY as the snapshot), refuse it (a CONFLICT: changed again since
    the apply), or nothing it can (LOST: it was not snapshotted)."""
    if entry.get("skipped"):
        return LOST
    before = FileState.from_dict(entry["before"])
    if _equal(now, before):
        return ALREADY
    # No "after": the apply was cut short, so what it left is not known; a person decides.
    if entry.get("after") and _equal(now, FileState.from_dict(entry["after"])):
        return RESTORE
    return CONFLICT


def _equal(a: FileState, b: FileState) -> bool:
    """The same state as far as an undo restores it (a directory: its mode and owners)."""
    if not a.exists or not b.exists:
        return a.exists == b.exists
    if a.kind == "directory" or b.kind == "directory":
        return (a.kind, a.mode, a.owner, a.group) == (b.kind, b.mode, b.owner, b.group)
    return a.same(b)


def hold_reason(hold: Mapping[str, Any]) -> str:
    """What a held host's plan says."""
    return f"held by undo of {hold['apply_id']} ({hold['by']}, {hold['at']})"


def hold_lifted(hold: Mapping[str, Any], source_sha: str, fingerprint: str) -> bool:
    """Whether a new source commit changed the drift a HOLD keeps from being corrected: the
    plan's source commit and its drift both differ from those the hold first saw."""
    seen = hold.get("seen")
    if not isinstance(seen, Mapping):
        return False
    return seen.get("source_sha") != source_sha and seen.get("fingerprint") != fingerprint


def select_pruned(manifests: Sequence[Mapping[str, Any]], sizes: Mapping[str, int],
                  now: datetime, keep: float, max_bytes: int) -> list[str]:
    """The apply ids of MANIFESTS (each: apply_id, taken, files) to drop: those older than
    KEEP seconds, then the oldest while the blobs still held (SIZES: sha256 -> bytes, a blob
    shared by snapshots counted once) weigh more than MAX_BYTES."""
    ordered = sorted(manifests, key=lambda m: str(m.get("taken") or ""))
    oldest = (now - timedelta(seconds=keep)).isoformat(timespec="seconds")
    dropped = [str(m["apply_id"]) for m in ordered if str(m.get("taken") or "") < oldest]
    kept = [m for m in ordered if str(m["apply_id"]) not in dropped]

    def weight(held: Sequence[Mapping[str, Any]]) -> int:
        blobs = {f["before"]["sha256"] for m in held for f in m.get("files") or ()
                 if f.get("blob")}
        return sum(sizes.get(b, 0) for b in blobs)

    while kept and weight(kept) > max_bytes:
        dropped.append(str(kept.pop(0)["apply_id"]))
    return dropped


SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
              "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(value: Any) -> int | None:
    """Given a size like 256MiB, 10MB, 4096 or "1 GiB", return bytes (None: not a size)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in SIZE_UNITS:
        return None
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])
