"""Check any checkout (`petkeeper check --tree DIR`): the playbooks and inventory of a folder as
they are, with no mirror and no branch; its source id is the checkout's commit, or a hash of
its files. It never applies, never pushes reports and never notifies."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from agent.adapters.galaxy import install_requirements
from agent.adapters.gitrepo import Checkout
from agent.adapters.runner import Watcher
from agent.config import COMMAND_LINE, Config, RepoConfig
from agent.core.ansible_cfg import check_ansible_cfg
from agent.core.policy import decide_change, decide_host
from agent.cycle.decide import load_policy
from agent.cycle.source import Source, secret_masker
from agent.cycle.steps import Cycle, Stage, Step, check_step, run_cycle, target_step
from agent.cycle.trust import TrustError
from agent.errors import RepoError

log = logging.getLogger(__name__)

TREE = "--tree"
DIRTY = "-dirty"  # after the commit id of a checkout with changes, as `git describe --dirty`


def open_tree(directory: Path) -> Path:
    """DIRECTORY, resolved; RepoError naming --tree when it is not a folder."""
    tree = Path(os.path.realpath(directory))
    if not tree.is_dir():
        what = "not a folder" if tree.exists() else "no such folder"
        raise RepoError(f"{COMMAND_LINE}: {TREE}: {str(directory)!r}: {what}; give the folder "
                        "of the checkout holding the playbooks (e.g. --tree .)")
    return tree


def tree_config(config: Config | None, state_dir: Path, inventory: str | None,
                policy: str | None, private_key: str | None = None,
                known_hosts: str | None = None) -> Config:
    """The configuration of a check of a checkout: agent.yml's (CONFIG) or none (no repo.url
    needed), with its own state directory and the options given over it."""
    base = config or Config(repo=RepoConfig(url=""), path=COMMAND_LINE)
    given = {key for key, value in (("inventory", inventory), ("policy", policy)) if value}
    ansible = replace(base.ansible, private_key_file=private_key or base.ansible.private_key_file,
                      known_hosts_file=known_hosts or base.ansible.known_hosts_file)
    # Without agent.yml, an inventory given means its hosts (the runner is not one of them),
    # and the playbook is site.yml (not the runner's <hostname>.yml).
    limit = "all" if config is None and inventory else base.limit
    playbooks = base.playbooks or (("site.yml",) if config is None else ())
    return replace(base, state_dir=state_dir, inventory=inventory or base.inventory,
                   policy=policy or base.policy, ansible=ansible, limit=limit,
                   playbooks=playbooks, given=base.given | given)


def checkout_source(config: Config, tree: Path) -> Source:
    """The source a check of the checkout TREE works on. Its id is HEAD's commit (with -dirty
    when files under TREE differ from it) in a Git work tree, else tree:<sha256 of the files>.
    With repo.verify on, a dirty tree is refused and HEAD's signature checked."""
    checkout = Checkout.open(tree)
    try:
        head = checkout.head() if checkout else None
        if checkout is None or head is None:
            if config.repo.verify != "off":
                raise RepoError(f"{TREE} {tree}: not a Git commit, but repo.verify is "
                                f"{config.repo.verify!r} in {config.path}: only a signed commit "
                                "may be checked; check out a signed commit")
            sha = f"tree:{hash_files(tree)}"
        else:
            sha = head + _dirty_mark(config, checkout, tree, head)
    finally:
        if checkout is not None:
            checkout.close()
    check_ansible_cfg(tree)
    log.info("checking the checkout %s as %s", tree, sha)
    dirty = " (its files differ from that commit)" if sha.endswith(DIRTY) else ""
    return Source(sha=sha, tree=tree, hold=f"a check of the checkout {tree} at {sha}{dirty}: "
                                           "nothing is applied, reported or notified")


def _dirty_mark(config: Config, checkout: Checkout, tree: Path, head: str) -> str:
    changed = checkout.changes_under(tree)
    if config.repo.verify != "off":
        if changed:
            raise RepoError(f"{TREE} {tree}: {len(changed)} file(s) differ from commit "
                            f"{head[:12]} (first: {changed[0].strip()}), and repo.verify is "
                            f"{config.repo.verify!r} in {config.path}: only a signed commit, "
                            "as it is, may be checked; commit and sign, or clean the tree")
        signers = Path(config.repo.allowed_signers) if config.repo.allowed_signers else None
        keyring = Path(config.repo.gpg_home) if config.repo.gpg_home else None
        ok, why = checkout.verify_commit(head, signers, keyring)
        if not ok:
            raise TrustError(f"{TREE} {tree}: commit {head[:12]} is not trusted: {why}; sign "
                             "it with a key in repo.allowed_signers or repo.gpg_home")
    if changed:
        log.warning("the checkout %s differs from commit %s in %d file(s): its id is %s%s",
                    tree, head[:12], len(changed), head[:12], DIRTY)
        return DIRTY
    return ""


def hash_files(tree: Path) -> str:
    """The sha256 of every file under TREE (names, contents, symlink targets), .git aside."""
    digest = hashlib.sha256()
    for path in _walk(tree):
        rel = path.relative_to(tree).as_posix().encode()
        if path.is_symlink():
            digest.update(b"L" + rel + b"\0" + os.readlink(path).encode() + b"\0")
        else:
            digest.update(b"F" + rel + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _walk(tree: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(tree):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for d in dirs:
            if os.path.islink(os.path.join(root, d)):
                yield Path(root, d)
        yield from (Path(root, f) for f in sorted(files))


def checkout_step(tree: Path) -> Step:
    """The first step of a check of TREE, in place of the fetch: source, Galaxy, masks."""
    def step(c: Cycle) -> None:
        source = checkout_source(c.config, tree)
        c.state.trees.mkdir(exist_ok=True, mode=0o700)
        env = install_requirements(source.tree, c.config.requirements, c.state.root / "galaxy",
                                   c.config.ansible.timeout, c.cancel)
        c.source = replace(source, env=env, mask=secret_masker(c.config, c.state, source.tree))
        load_policy(c.config, c.source)  # a broken policy is said before anything runs
        c.advance(Stage.FETCHED)

    return step


def tree_policy(cycle: Cycle) -> dict[str, dict[str, str]]:
    """What the checkout's policy would decide for each host that has changes: the most
    careful mode of its changes and the rule that chose it."""
    assert cycle.source is not None and cycle.targets is not None
    policy = load_policy(cycle.config, cycle.source)
    decided = {}
    for host, report in cycle.hosts.items():
        groups = cycle.targets.groups.get(host, ())
        mode = decide_host(decide_change(policy, host, groups, c.tags) for c in report.changes)
        if mode is not None:
            decided[host] = {"mode": mode.mode, "rule": mode.rule}
    return decided


def check_tree(config: Config, tree: Path, *, wait: float = 0.0,
               cancel: Callable[[], bool] | None = None, watch: Watcher | None = None) -> Cycle:
    """Check the checkout TREE in CONFIG's state directory: detect only; nothing applied,
    no report committed or pushed, no notification, no status written."""
    return run_cycle(config, (checkout_step(tree), target_step, check_step), "check --tree",
                     wait=wait, cancel=cancel, watch=watch)


def temporary_state_dir() -> Path:
    """A fresh private state directory for one check of a checkout."""
    return Path(tempfile.mkdtemp(prefix="petkeeper-tree-"))
