"""Source trust: which commits may be materialised, and which may be applied.

With ``repo.verify`` on, the fetched head (``head``) or every commit new since the last
verified one (``all``) must carry a signature by an allowed key before any of its files are
written. A commit that changes only files under ``approvals/`` (an approval from a workstation)
is verified against the approvers' keys (``approvals.allowed_signers`` / ``approvals.gpg_home``,
when set); every other commit against the source signers: approvers need not be playbook
authors, and an approver's key can never change a playbook.

The source commit of the last apply is a high-water mark: a head that does not descend from it
(a force-push, a reset to an older signed commit) halts applies until a person runs
``petkeeper ack``; checks go on. State lives in ``STATE_DIR/trust.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from agent.adapters.gitrepo import Mirror
from agent.adapters.state import StateDir, read_json, write_json
from agent.config import Config
from agent.core.approval import APPROVALS_DIR
from agent.errors import StalledError

log = logging.getLogger(__name__)


class TrustError(StalledError):
    """The source head is not signed by an allowed key, and no verified commit is known."""


def check_signatures(config: Config, mirror: Mirror, head: str,
                     verified: str | None) -> str | None:
    """Return why HEAD may not be used (the first commit that fails), or None if it may.

    VERIFIED is the last commit that passed: in "all" mode only commits new since then (and
    since repo.verify_since) are checked, both sides of merges included."""
    repo = config.repo
    if repo.verify == "off":
        return None
    base = tuple(sha for sha in (verified, repo.verify_since) if sha)
    commits = [head] if repo.verify == "head" else mirror.commits_between(head, base)
    for sha in commits:
        signers, keyring, keys = signers_of(config, mirror, sha)
        ok, why = mirror.verify_commit(sha, signers, keyring)
        if not ok:
            subject = mirror.commit_message(sha)[0].strip().partition("\n")[0][:60]
            where = "head" if sha == head else f"{subject!r}, below the head {head[:12]}"
            return (f"source commit {sha[:12]} ({where}) is not trusted: {why}; sign it with a "
                    f"key in {keys}, or push a signed fix")
    return None


def signers_of(config: Config, mirror: Mirror, sha: str) -> tuple[Path | None, Path | None, str]:
    """Who may sign commit SHA: the approvers when it changes only approvals/ (and approvers'
    keys are set), else the source signers; with the keys' names, for the error."""
    a = config.approvals
    if (a.allowed_signers or a.gpg_home) and approvals_only(mirror, sha):
        return _path(a.allowed_signers), _path(a.gpg_home), \
            "approvals.allowed_signers or approvals.gpg_home (it changes only approvals/)"
    return _path(config.repo.allowed_signers), _path(config.repo.gpg_home), \
        "repo.allowed_signers or repo.gpg_home"


def approvals_only(mirror: Mirror, sha: str) -> bool:
    """SHA has one parent and changes files under approvals/ and nothing else."""
    parents = mirror.parents(sha)
    if len(parents) != 1:
        return False  # a merge or a root commit may bring anything
    paths = mirror.changed_paths(parents[0], sha)
    return bool(paths) and all(p.startswith(f"{APPROVALS_DIR}/") for p in paths)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def trusted_head(config: Config, state: StateDir, mirror: Mirror,
                 head: str) -> tuple[str, str | None]:
    """Return (the commit to use, why HEAD was rejected or None).

    A rejected HEAD falls back to the last verified commit, so detection goes on with what was
    trusted; with none yet, TrustError."""
    trust = read_trust(state)
    if config.repo.verify == "off" or head == trust.get("verified"):
        return head, None
    problem = check_signatures(config, mirror, head, trust.get("verified"))
    if problem is None:
        write_trust(state, {**trust, "verified": head})
        return head, None
    last = trust.get("verified")
    if last is None or not mirror.has_commit(last):
        raise TrustError(problem)
    log.error("security: %s; checking the last verified commit %s", problem, last[:12])
    return last, problem


def rewind_hold(state: StateDir, mirror: Mirror, head: str) -> str | None:
    """Why applies must wait because HEAD does not descend from the last applied commit, or
    None (no apply yet, HEAD descends from it, or a person acknowledged HEAD or an ancestor)."""
    trust = read_trust(state)
    applied = trust.get("applied")
    if not applied or applied == head or not mirror.has_commit(applied) or \
            mirror.is_ancestor(applied, head):
        return None
    ack = (trust.get("acknowledged") or {}).get("commit")
    if ack and mirror.has_commit(ack) and (ack == head or mirror.is_ancestor(ack, head)):
        return None
    return (f"source rewound: {head[:12]} does not descend from {applied[:12]}, the last "
            "applied commit (force-push or reset?); applies are halted until a person checks "
            f"the history and runs petkeeper ack {head[:12]}")


def mark_applied(state: StateDir, sha: str) -> None:
    """SHA's corrections reached a host: it is the new high-water mark."""
    trust = read_trust(state)
    write_trust(state, {**trust, "applied": sha, "acknowledged": None})


def acknowledge(state: StateDir, mirror: Mirror, commit: str, by: str, at: str,
                comment: str) -> dict[str, Any]:
    """Record that BY accepts COMMIT (a rewound head) as the base for applies again."""
    sha = mirror.resolve_commit(commit)
    if sha is None:
        raise StalledError(f"ack: {commit!r} is not a commit the agent has fetched; give the "
                           "id petkeeper status shows in its 'source rewound' line")
    ack = {"commit": sha, "by": by, "at": at, "comment": comment,
           "applied_before": read_trust(state).get("applied")}
    write_trust(state, {**read_trust(state), "acknowledged": ack})
    return ack


def read_trust(state: StateDir) -> dict[str, Any]:
    data = read_json(state.trust_file, {})
    return data if isinstance(data, dict) else {}


def write_trust(state: StateDir, data: dict[str, Any]) -> None:
    write_json(state.trust_file, {"version": 1, **{k: v for k, v in data.items()
                                                    if k != "version"}})
