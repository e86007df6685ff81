"""Pull: fetch the GitOps repo into the mirror, pin one commit, materialise it as a clean tree."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.adapters.gitrepo import Mirror, MissingBranch
from agent.adapters.state import StateDir, claim_repo, write_atomic
from agent.adapters.vault import vault_values
from agent.config import Config, parse_extra_var
from agent.core.ansible_cfg import check_ansible_cfg
from agent.core.redact import Masker, leaf_strings, url_secrets
from agent.cycle.trust import read_trust, rewind_hold, trusted_head, write_trust
from agent.errors import FetchError, RepoError

log = logging.getLogger(__name__)

TREES_KEPT = 2
MIN_EXTRA_VAR_SECRET = 8  # shorter extra-vars values are settings, not secrets, when masking


@dataclass(frozen=True)
class Source:
    """The commit a cycle works on, and where its files are."""

    sha: str
    tree: Path
    fetch_error: str | None = None  # the fetch failed: this is the last good commit
    # The head was refused (its signatures failed, or its content, e.g. its ansible.cfg): this
    # is the last verified or good one, and why.
    rejected: str | None = None
    hold: str | None = None  # why no correction may be applied from this commit
    env: Mapping[str, str] = field(default_factory=dict)  # for Ansible: Galaxy requirements
    mask: Callable[[str], str] = field(default=lambda text: text)  # hides secrets in reports


def open_mirror(config: Config, state: StateDir, claim: bool = True,
                cancel: Callable[[], bool] | None = None) -> Mirror:
    """The mirror of CONFIG's repository; CANCEL stops the git it runs. With CLAIM,
    StalledError when STATE belongs to another repository (claim_repo)."""
    if claim:
        claim_repo(state, config.repo.url, config.path)
    repo = config.repo
    keys = {repo.url: f"repo.url in {config.path}"}
    if config.reports.url:
        keys[config.reports.url] = f"reports.url in {config.path}"
    source, reports = remote_ssh(config)
    return Mirror(state.mirror, repo.url, repo.timeout, source, keys, cancel,
                  reports_ssh_options=reports)


def remote_ssh(config: Config) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """SSH options for the source remote and for the reports remote: repo.ssh_key and
    repo.known_hosts, which reports.ssh_key and reports.known_hosts replace for the reports."""
    repo, reports = config.repo, config.reports
    return (ssh_options(repo.ssh_key, repo.known_hosts),
            ssh_options(reports.ssh_key or repo.ssh_key,
                        reports.known_hosts or repo.known_hosts))


def ssh_options(key: str | None, known_hosts: str | None) -> tuple[str, ...]:
    """ssh's options for a deploy KEY (that key alone) and a KNOWN_HOSTS file."""
    return ((("-o", f"IdentityFile={key}", "-o", "IdentitiesOnly=yes") if key else ()) +
            (("-o", f"UserKnownHostsFile={known_hosts}") if known_hosts else ()))


class MissingBranchError(RepoError):
    """The remote has no repo.branch: the message names the branches it has, and the fix."""


def fetch_source(config: Config, mirror: Mirror) -> None:
    """Fetch the source branch; a missing branch is repo.branch's fault, named with the
    branches the remote has."""
    try:
        mirror.fetch(config.repo.branch)
    except MissingBranch as e:
        fix = "set repo.branch to one of them" if e.available else \
            "set repo.branch to an existing branch, or push it"
        raise MissingBranchError(f"{config.path}: repo.branch: {e}; {fix}") from None


@dataclass(frozen=True)
class Refusal:
    """A step after the pull refused HEAD's content (ERROR): the cycle runs again on the last
    good commit, without fetching again (FETCH_ERROR: what the first fetch said)."""

    head: str
    error: RepoError
    fetch_error: str | None = None


def sync_source(config: Config, state: StateDir, mirror: Mirror,
                refused: Refusal | None = None) -> Source:
    """Fetch the branch and materialise its head; on a failed fetch, keep the last good one.
    A head whose content is refused (its ansible.cfg here, or REFUSED by a later step) gives
    way to the last commit whose content passed, and Source.rejected says why."""
    fetch_error = refused.fetch_error if refused else None
    try:
        if refused is None:  # a second pass works on what the first one fetched
            fetch_source(config, mirror)
    except FetchError as e:
        if mirror.resolve(config.repo.branch) is None:
            raise
        fetch_error = str(e)
    sha = mirror.resolve(config.repo.branch)
    if sha is None:
        raise RepoError(f"{config.path}: repo.branch: branch {config.repo.branch!r} not found in "
                        f"{mirror.safe_url}; set repo.branch to an existing branch")
    if fetch_error:
        log.warning("%s; using the last good commit %s", fetch_error, sha[:12])
    sha, rejected = trusted_head(config, state, mirror, sha)  # before any file is written
    hold = rewind_hold(state, mirror, sha)
    if rejected:
        hold = f"{rejected}; checking the last verified commit {sha[:12]}, applying nothing"
    elif hold:
        log.warning("%s", hold)
    try:
        if refused is not None and refused.head == sha and not rejected:
            raise refused.error
        tree = mirror.materialise(sha, state.trees / sha)
        check_ansible_cfg(tree)
    except RepoError as e:  # the last good commit is still checked, as after a failed fetch
        sha, tree, rejected = _last_good(state, mirror, sha, e)
        hold = f"{rejected}; checking the last good commit {sha[:12]}, applying nothing"
    prune_trees(state.trees, keep=sha)
    return Source(sha=sha, tree=tree, fetch_error=fetch_error, rejected=rejected, hold=hold)


def last_good(state: StateDir, mirror: Mirror, head: str) -> str | None:
    """The last commit other than HEAD that passed every content check (see mark_content_ok);
    None when there is none in the mirror."""
    good = read_trust(state).get("content_ok")
    return good if isinstance(good, str) and good != head and mirror.has_commit(good) else None


def mark_content_ok(state: StateDir, source: Source) -> None:
    """SOURCE's commit passed every check of its content (ansible.cfg, playbooks, inventory,
    requirements, policy, Ansible's own reading of them): a later refused head falls back to
    it."""
    if source.rejected is None and read_trust(state).get("content_ok") != source.sha:
        write_trust(state, {**read_trust(state), "content_ok": source.sha})


def _last_good(state: StateDir, mirror: Mirror, head: str,
               error: RepoError) -> tuple[str, Path, str]:
    """HEAD's content was refused (ERROR): return the last commit whose content passed, its
    tree and why HEAD was refused. With none (a first run), ERROR itself."""
    good = last_good(state, mirror, head)
    if good is None:
        raise error
    shutil.rmtree(state.trees / head, ignore_errors=True)  # refused: none of it is used
    problem = f"source commit {head[:12]} refused: {error}"
    log.error("%s; checking the last good commit %s", problem, good[:12])
    tree = mirror.materialise(good, state.trees / good)
    check_ansible_cfg(tree)
    return good, tree, problem


def secret_masker(config: Config, state: StateDir, tree: Path) -> Masker:
    """What reports must never show in clear: the vaulted values of this commit and of the
    one before (kept in STATE_DIR/trees), the password in the repo URLs, and extra vars'
    values; each gets its own mask."""
    found: set[str] = set()
    # The previous tree too: a rotated secret's old value is still on the hosts, in diffs.
    for folder in {tree, *(p for p in state.trees.iterdir() if p.is_dir())}:
        if not folder.name.startswith("."):
            found |= _vaulted(folder, config.vault_password_file,
                              _mtime(config.vault_password_file))
    found |= url_secrets(config.repo.url) | url_secrets(config.reports_url)
    for value in config.extra_vars:
        if not value.startswith("@"):
            with contextlib.suppress(ValueError):
                found |= {v for v in leaf_strings(parse_extra_var(value))
                          if len(v) >= MIN_EXTRA_VAR_SECRET}
    return Masker(found, mask_key(state))


def mask_key(state: StateDir) -> bytes:
    """The agent's own key for masks (STATE_DIR/mask.key): masks stay the same across runs,
    so fingerprints do, and say nothing about the value to someone without the key."""
    path = state.root / "mask.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        write_atomic(path, key)
        return key


@functools.lru_cache(maxsize=4)
def _vaulted(tree: Path, password_file: str | None, _mtime: int) -> frozenset[str]:
    """vault_values, once per materialised tree (trees never change) and password file."""
    return frozenset(vault_values(tree, password_file))


def _mtime(path: str | None) -> int:
    try:
        return os.stat(path).st_mtime_ns if path else 0
    except OSError:
        return 0


def prune_trees(trees: Path, keep: str) -> None:
    """Keep the current tree and the most recent others, TREES_KEPT in all: disk stays bounded."""
    others = sorted((p for p in trees.iterdir() if p.is_dir() and p.name != keep),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[TREES_KEPT - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def resolve_folder(tree: Path, relpath: str, what: str) -> Path:
    """Return folder RELPATH inside TREE (RepoError if it resolves outside)."""
    target = _contained(tree, relpath, what)
    if not target.is_dir():
        raise RepoError(f"{what}: {relpath!r} is not a folder in the repository at this "
                        "commit; fix the path")
    return target


def _contained(tree: Path, relpath: str, what: str) -> Path:
    root = Path(os.path.realpath(tree))
    target = Path(os.path.realpath(root / relpath))
    if os.path.commonpath([root, target]) != str(root):
        raise RepoError(f"security: {what}: {relpath!r} resolves outside the repository (to "
                        f"{target}), so the whole commit is refused; point it inside the "
                        "repository")
    return target


def resolve_in_tree(tree: Path, relpath: str, what: str) -> Path:
    """Return RELPATH inside TREE, following symlinks; RepoError if it leaves the tree or is
    missing. WHAT names the setting, for the error."""
    target = _contained(tree, relpath, what)
    if not target.is_file():
        raise RepoError(f"{what}: {relpath!r} not found in the repository at this commit; "
                        "fix the path or commit the file")
    return target
