"""Approvals: a person's yes to one exact drift. Pure functions over plain data.

A plan binds a host, the source commit and the drift fingerprint; its id is a hash of the three.
An approval counts only for that host, that source commit and that fingerprint, until it expires,
and only once: a new commit, a different drift, expiry or use makes it void, and the plan asks
again. The plan's source commit is the newest commit that changed anything outside
``approvals/``, so committing an approval file does not void the plan it approves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import yaml

from agent.core.schema import kind_of, parse_duration, printable_key
from agent.errors import RepoError, StalledError

APPROVALS_DIR = "approvals"
PLAN_ID_LENGTH = 16
HOST, GIT = "host", "git"


@dataclass(frozen=True)
class Approval:
    host: str
    plan_id: str
    source_sha: str
    fingerprint: str
    approver: str
    how: str  # HOST (petkeeper approve) or GIT (a file under approvals/)
    approved_at: str  # ISO 8601
    expires_at: str
    comment: str = ""
    origin: str = ""  # for Git approvals: "<path>@<commit>"
    partial: bool = False  # the approver knew the check was partial (agent.core.drift)
    force_conflicts: bool = False  # an undo may overwrite files changed again since the apply

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Approval:
        texts = {k: str(data.get(k) or "") for k in cls.__dataclass_fields__
                 if k not in ("partial", "force_conflicts")}
        return cls(**texts, partial=data.get("partial") is True,
                   force_conflicts=data.get("force_conflicts") is True)


def plan_id(host: str, source_sha: str, fingerprint: str) -> str:
    """The id that binds HOST, SOURCE_SHA and FINGERPRINT (same three, same id)."""
    digest = hashlib.sha256(f"{host}\n{source_sha}\n{fingerprint}".encode()).hexdigest()
    return digest[:PLAN_ID_LENGTH]


def void_reason(approval: Approval, host: str, source_sha: str, fingerprint: str,
                now: datetime, used: bool = False, partial: bool = False) -> str | None:
    """Why APPROVAL does not allow correcting HOST now (None: it does). PARTIAL: the plan's
    check was partial, which the approval must acknowledge."""
    if approval.host != host:
        return f"approval is for host {approval.host!r}, not {host!r}"
    if used:
        return f"approval by {approval.approver} was already used; approve the plan again"
    if not approval.source_sha:
        return (f"approval names plan {approval.plan_id}, which is not a current plan of "
                f"{host}: approve the plan id petkeeper plan shows for it")
    if approval.source_sha != source_sha:
        return (f"approved for source commit {approval.source_sha[:12]}, but the source is now "
                f"{source_sha[:12]}: a new commit voids an approval")
    if approval.fingerprint != fingerprint:
        return (f"approved drift {approval.fingerprint[:12]} differs from the current "
                f"{fingerprint[:12]}: drift changed since approval")
    if partial and not approval.partial:
        return (f"plan {approval.plan_id} is partial (its check stopped at a task that failed "
                "in check mode) and the approval does not acknowledge it: approve it with "
                "petkeeper approve --partial, or partial: true in the approval file")
    try:
        expires = datetime.fromisoformat(approval.expires_at)
        expired = expires <= now
    except (ValueError, TypeError):
        return f"approval has an unreadable expiry {approval.expires_at!r}"
    if expired:
        return f"approval by {approval.approver} expired at {approval.expires_at}"
    return None


def expiry(now: datetime, value: str) -> datetime:
    """NOW plus a duration like "4h" (ValueError when VALUE is not one)."""
    seconds = parse_duration(value)
    if not seconds:
        raise ValueError(f"expected a duration like 4h, got {value!r}")
    return now + timedelta(seconds=seconds)


def parse_git_approval(data: Any, path: str, commit: str, author: str,
                       committed_at: datetime,
                       plans: Mapping[str, tuple[str, str, str]]) -> Approval:
    """Given the YAML of an approval file, return the Approval it states; RepoError naming the
    file and key when it is invalid. PLANS maps known plan ids to (host, source, fingerprint).

    The file names the host, and either the plan id or the fingerprint and source commit,
    and an expiry (an ISO 8601 time, or a duration counted from the commit); ``partial: true``
    acknowledges a partial plan::

        host: db1
        plan: 3f2a9c0d1e2b4a5f
        expires: 8h
        comment: planned change, ticket OPS-42
    """
    where = f"{printable_key(path)} (commit {commit[:12]})"
    if not isinstance(data, dict):
        raise RepoError(f"{where}: expected a mapping with host, plan and expires; see README: "
                        "Approving through Git")
    unknown = sorted(set(map(str, data)) - {"host", "plan", "fingerprint", "source", "expires",
                                            "comment", "partial", "force_conflicts"})
    if unknown:
        raise RepoError(f"{where}: {printable_key(unknown[0])}: unknown key; use host, plan (or "
                        "fingerprint and source), expires, comment, partial, force_conflicts")
    for flag in ("partial", "force_conflicts"):
        if not isinstance(data.get(flag, False), bool):
            raise RepoError(f"{where}: {flag}: expected true or false, got "
                            f"{kind_of(data[flag])}; write {flag}: true to "
                            + ("approve a partial plan" if flag == "partial" else
                               "let an undo overwrite conflicts"))
    host = str(data.get("host") or "")
    if not host:
        raise RepoError(f"{where}: host: missing; name the host this approval is for")
    pid = _plan_id_as_written(data.get("plan"), plans)
    if pid:
        bound = plans.get(pid)
        source, fp = (bound[1], bound[2]) if bound and bound[0] == host else ("", "")
    else:
        source, fp = str(data.get("source") or ""), str(data.get("fingerprint") or "")
        if not source or not fp:
            raise RepoError(f"{where}: plan: missing; give the plan id from `petkeeper plan`, "
                            "or both fingerprint and source")
        pid = plan_id(host, source, fp)
    return Approval(host=host, plan_id=pid, source_sha=source, fingerprint=fp, approver=author,
                    how=GIT, approved_at=committed_at.isoformat(timespec="seconds"),
                    expires_at=_expires(data.get("expires"), committed_at, where),
                    comment=str(data.get("comment") or ""), origin=f"{path}@{commit}",
                    partial=data.get("partial", False),
                    force_conflicts=data.get("force_conflicts", False))


def parse_host_approval(data: Any, path: str) -> Approval:
    """Given the JSON of an approval given on this host (STATE_DIR/approvals/), return it;
    StalledError naming the file when it is not one."""
    if not isinstance(data, dict):
        raise StalledError(f"{path}: not an approval (expected a JSON object); move it aside "
                           "and approve the plan again")
    return Approval.from_dict(data)


def _plan_id_as_written(raw: Any, plans: Mapping[str, Any]) -> str:
    """The plan id a file names. Unquoted, YAML may read an id of digits as a number: match
    it against the known ids as YAML would read them."""
    if raw is None or raw == "":
        return ""
    if isinstance(raw, str):
        return raw
    matches = [pid for pid in plans if yaml.safe_load(pid) == raw]
    return matches[0] if matches else str(raw)


def _expires(value: Any, committed_at: datetime, where: str) -> str:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.isoformat(timespec="seconds")
    text = str(value or "")
    if not text:
        raise RepoError(f"{where}: expires: missing; give an ISO 8601 time or a duration "
                        "like 8h")
    try:
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            raise ValueError("no time zone")
        return when.isoformat(timespec="seconds")
    except ValueError:
        pass
    try:
        return expiry(committed_at, text).isoformat(timespec="seconds")
    except ValueError:
        raise RepoError(f"{where}: expires: {text!r} is neither an ISO 8601 time with a zone "
                        "nor a duration; write e.g. 2026-12-01T18:00:00+00:00 or 8h") from None
