"""Detect: pick the playbooks and hosts, run them in check + diff mode, read the drift."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agent.adapters.inventory import list_hosts
from agent.adapters.runner import PlaybookRun, Watcher, run_playbook
from agent.adapters.state import StateDir, write_atomic
from agent.config import Config
from agent.core.drift import HostReport, build_host_reports, mask_reports
from agent.cycle.source import Source, resolve_in_tree
from agent.errors import RepoError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Targets:
    """What one check runs: playbooks (relative to the tree), inventory and hosts."""

    playbooks: tuple[str, ...]
    inventory: Path
    hosts: tuple[str, ...]
    limit: str
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # host -> its groups


def this_host_names() -> list[str]:
    """The names ansible-pull would try for this machine, most specific first."""
    fqdn, hostname = socket.getfqdn(), socket.gethostname()
    names = [fqdn, hostname, hostname.split(".")[0], "localhost"]
    return list(dict.fromkeys(n for n in names if n))


def select_playbooks(config: Config, tree: Path, names: list[str]) -> tuple[str, ...]:
    """The configured playbooks, or ansible-pull's choice: <fqdn>.yml, <hostname>.yml, local.yml."""
    if config.playbooks:
        for i, name in enumerate(config.playbooks):
            resolve_in_tree(tree, name, f"{config.path}: playbooks[{i}]")
        return config.playbooks
    candidates = [f"{n}.yml" for n in names if n != "localhost"] + ["local.yml"]
    for candidate in candidates:
        if (tree / candidate).is_file():
            resolve_in_tree(tree, candidate, f"{config.path}: playbooks")
            return (candidate,)
    raise RepoError(f"{config.path}: playbooks: none set and none of {', '.join(candidates)} "
                    "is in the repository; set playbooks: [site.yml] or commit local.yml")


def select_targets(config: Config, source: Source, state: StateDir,
                   cancel: Callable[[], bool] | None = None) -> Targets:
    """Resolve playbooks, inventory and the hosts the limit selects (RepoError if any is bad);
    CANCEL stops ansible-inventory."""
    names = this_host_names()
    playbooks = select_playbooks(config, source.tree, names)
    if config.inventory:
        inventory = resolve_in_tree(source.tree, config.inventory, f"{config.path}: inventory")
    else:
        inventory = write_local_inventory(state, names[1] if len(names) > 1 else names[0])
    limit = config.limit
    if limit is None:
        everyone = list_hosts(source.tree, inventory, None, config.vault_password_file,
                              source.env, cancel=cancel)
        mine = [n for n in names if n in everyone]
        if not mine:
            raise RepoError(f"{config.path}: limit: not set, and this host ({', '.join(names)}) "
                            f"is not in the inventory {config.inventory or inventory}; add it to "
                            "the inventory or set limit: to the hosts to check")
        limit = mine[0]
        hosts = {limit: everyone[limit]}  # the listing has it: no second ansible-inventory
    else:
        hosts = list_hosts(source.tree, inventory, limit, config.vault_password_file, source.env,
                           cancel=cancel)
    if not hosts:
        raise RepoError(f"{config.path}: limit: {limit!r} selects no host of the inventory; "
                        "fix the limit")
    return Targets(playbooks, inventory, tuple(hosts), limit, hosts)


def write_local_inventory(state: StateDir, name: str) -> Path:
    """With no inventory configured, a pet manages itself: an inventory of this host only."""
    path = state.root / "local-inventory.yml"
    # Modules run with the controller's own Python, as for Ansible's implicit localhost.
    data = {"all": {"hosts": {name: {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}}
    write_atomic(path, yaml.safe_dump(data).encode())
    return path


def check_drift(config: Config, source: Source, targets: Targets, state: StateDir, run_id: str,
                cancel: Callable[[], bool] | None = None,
                watch: Watcher | None = None) -> dict[str, HostReport]:
    """Run every playbook in check + diff mode; return the drift report per targeted host."""
    events, facts = [], []
    for i, playbook in enumerate(targets.playbooks):
        result = run_playbook(playbook_run(config, source, targets, playbook,
                                            f"{run_id}-check-{i}"),
                              state.runner, config.ansible.artifacts_keep, cancel, watch)
        log.info("check of %s finished: %s (rc %s)", playbook, result.status, result.rc)
        if result.status == "timeout":
            log.warning("check of %s timed out after %ss: hosts without results are unknown",
                        playbook, config.ansible.timeout)
        elif not result.started and result.status != "canceled":  # stopped: unknown
            raise RepoError(f"{playbook}: Ansible refused to run it: {result.error}; fix the "
                            f"playbook (commit {source.sha[:12]})")
        events.extend(result.events)
        facts.extend(result.facts)
    return mask_reports(build_host_reports(events, targets.hosts, str(source.tree), facts),
                        source.mask)


def playbook_run(config: Config, source: Source, targets: Targets, playbook: str,
                  ident: str, check: bool = True) -> PlaybookRun:
    a = config.ansible
    return PlaybookRun(
        tree=source.tree, playbook=playbook, inventory=targets.inventory, limit=targets.limit,
        check=check, ident=ident, tags=config.tags, skip_tags=config.skip_tags,
        extra_vars=config.extra_vars, vault_password_file=config.vault_password_file,
        timeout=a.timeout, forks=a.forks, private_key_file=a.private_key_file,
        known_hosts_file=a.known_hosts_file, env=source.env)
