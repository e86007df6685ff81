"""Detect: pick the playbooks and hosts, run them in check + diff mode, read the drift."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from agent.adapters.accelerator import Accelerator, choose_accelerator
from agent.adapters.inventory import Listing, NoHostMatches, list_hosts, list_inventory
from agent.adapters.inventory_cache import cached_listing
from agent.adapters.runner import PlaybookRun, RunResult, Watcher, run_playbook, split_run
from agent.adapters.state import StateDir, write_atomic, write_managed_paths
from agent.config import COMMAND_LINE, Config, origin
from agent.core.drift import (
    CLEAN,
    DRIFTED,
    UNKNOWN,
    UNREACHABLE,
    HostReport,
    build_host_reports,
    mask_reports,
)
from agent.core.hostkeys import MITOGEN_KEY_LINE
from agent.core.ssh_masters import Masters
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
    accelerator: Accelerator | None = None  # the cycle's strategy; None: plain
    masters: Masters | None = None  # the daemon's kept SSH masters; None: each run its own

    def only(self, hosts: Sequence[str]) -> Targets:
        """These targets limited to HOSTS."""
        return replace(self, hosts=tuple(hosts), limit=",".join(hosts))

    def run(self, run: PlaybookRun, work_dir: Path, keep_artifacts: int,
            cancel: Callable[[], bool] | None, watch: Watcher | None = None) -> RunResult:
        """Run RUN with the cycle's strategy (agent.adapters.accelerator)."""
        if self.accelerator is None:
            return run_playbook(run, work_dir, keep_artifacts, cancel, watch)
        return self.accelerator.run(run, work_dir, keep_artifacts, cancel, watch)


def this_host_names() -> list[str]:
    """The names ansible-pull would try for this machine, most specific first."""
    fqdn, hostname = socket.getfqdn(), socket.gethostname()
    names = [fqdn, hostname, hostname.split(".")[0], "localhost"]
    return list(dict.fromkeys(n for n in names if n))


def local_host_name(names: list[str]) -> str:
    """The name a pet without an inventory checks and reports itself as: its hostname."""
    return names[1] if len(names) > 1 else names[0]


def select_playbooks(config: Config, tree: Path, names: list[str]) -> tuple[str, ...]:
    """The configured playbooks, or ansible-pull's choice: <fqdn>.yml, <hostname>.yml, local.yml."""
    if "playbooks" in config.given:
        for i, name in enumerate(config.playbooks):
            if not (tree / name).is_file():
                found = sorted(p.name for p in tree.glob("*.y*ml") if p.is_file())[:8]
                raise RepoError(f"{COMMAND_LINE}: PLAYBOOK #{i + 1}: {name!r} not found in the "
                                f"repository at this commit (playbooks at its top: "
                                f"{', '.join(found) or 'none'}); name one of them")
            resolve_in_tree(tree, name, f"{COMMAND_LINE}: PLAYBOOK #{i + 1}")
        return config.playbooks
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
                   cancel: Callable[[], bool] | None = None,
                   masters: Masters | None = None) -> Targets:
    """Resolve playbooks, inventory and the hosts the limit selects (RepoError if any is bad);
    CANCEL stops ansible-inventory. The runs use MASTERS, the daemon's kept SSH masters."""
    names = this_host_names()
    playbooks = select_playbooks(config, source.tree, names)
    if config.inventory:
        inventory = resolve_in_tree(source.tree, config.inventory, f"{config.path}: inventory")
    else:
        inventory = write_local_inventory(state, local_host_name(names))
    # A static inventory's listing is kept between cycles of the same commit.
    kept = Kept(state.root / "inventory-listings.json", source.sha)
    limit, listing = select_hosts(config, source.tree, inventory, source.env, names, cancel,
                                  kept)
    return Targets(playbooks, inventory, tuple(listing.groups), limit, listing.groups,
                   choose_accelerator(config.ansible.accelerator), masters)


@dataclass(frozen=True)
class Kept:
    """Where static inventories' listings are kept (agent.adapters.inventory_cache), and the
    source commit they were listed at."""

    cache: Path
    commit: str


def select_hosts(config: Config, tree: Path, inventory: Path, env: Mapping[str, str],
                 names: list[str], cancel: Callable[[], bool] | None = None,
                 kept: Kept | None = None) -> tuple[str, Listing]:
    """The limit (with none set: the first of this host's NAMES the inventory has, like
    ansible-pull) and the hosts it selects; RepoError if it selects none. CANCEL stops
    ansible-inventory; with KEPT, a static inventory's listing comes from there."""
    def listed(limit: str | None) -> Listing:
        if kept is None:
            return list_inventory(tree, inventory, limit, config.vault_password_file, env,
                                  cancel=cancel)
        return cached_listing(tree, inventory, limit, commit=kept.commit, cache=kept.cache,
                              vault_password_file=config.vault_password_file, extra_env=env,
                              cancel=cancel)

    limit = config.limit
    if limit is None:
        everyone = listed(None)
        mine = [n for n in names if n in everyone.groups]
        if not mine:
            raise RepoError(f"{config.path}: limit: not set, and this host ({', '.join(names)}) "
                            f"is not in the inventory {config.inventory or inventory}; add it to "
                            "the inventory or set limit: to the hosts to check")
        return mine[0], everyone.only(mine[:1])  # the listing has it: no second ansible-inventory
    try:
        listing = listed(limit)
    except NoHostMatches as e:
        raise _limit_error(config, tree, env, inventory, e.pattern) from None
    if not listing.groups:
        raise _limit_error(config, tree, env, inventory, limit)
    return limit, listing


def _limit_error(config: Config, tree: Path, env: Mapping[str, str], inventory: Path,
                 pattern: str) -> RepoError:
    """The limit's PATTERN matches nothing: say what the inventory has (its first hosts)."""
    everyone = list_hosts(tree, inventory, None, config.vault_password_file, env)
    groups = sorted({g for gs in everyone.values() for g in gs})
    has = f"{len(everyone)} host(s): {_first(list(everyone))}" if everyone else "no hosts"
    if groups:
        has += f"; groups: {_first(groups)}"
    return RepoError(f"{origin(config, 'limit', '--limit')}: {pattern!r} matches no host or "
                     f"group of {_relative(inventory, tree)}, which has {has}; fix the "
                     "limit")


def _first(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)"
                                       if len(names) > shown else "")


def _relative(path: Path, tree: Path) -> str:
    return str(path.relative_to(tree)) if path.is_relative_to(tree) else str(path)


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
    return check_drift_then(config, source, targets, state, run_id, None, cancel, watch)[0]


def check_drift_then(config: Config, source: Source, targets: Targets, state: StateDir,
                     run_id: str, then: str | None, cancel: Callable[[], bool] | None = None,
                     watch: Watcher | None = None
                     ) -> tuple[dict[str, HostReport], RunResult | None]:
    """check_drift, with THEN (a playbook of Petkeeper's own, an absolute path) run by the
    last playbook's ansible-playbook process right after that playbook's check, which saves
    a process; the drift is read from the check's events only. Also return THEN's part of
    that run: None when THEN did not start (a host failed or was unreachable in the check,
    which ends ansible-playbook before its next playbook, or the run was stopped)."""
    events, facts, broken = [], [], []
    later: RunResult | None = None
    for i, playbook in enumerate(targets.playbooks):
        run = playbook_run(config, source, targets, playbook, f"{run_id}-check-{i}")
        last = i == len(targets.playbooks) - 1
        if then is not None and last:
            run = replace(run, then=(then,))
        result = targets.run(run, state.runner, config.ansible.artifacts_keep, cancel, watch)
        if then is not None and last:
            result, later = split_run(result)
        log.debug("check of %s finished: ansible-runner says %s (rc %s)", playbook,
                  result.status, result.rc)  # what it means per host: the cycle's result line
        if result.status == "timeout":
            log.warning("check of %s timed out after %ss: hosts without results are unknown",
                        playbook, config.ansible.timeout)
        elif not result.started and result.status != "canceled":  # stopped: unknown
            raise RepoError(f"{playbook}: Ansible refused to run it: {result.error}; fix the "
                            f"playbook (commit {source.sha[:12]})")
        elif result.status == "failed" and not result.finished:
            broken.append(f"{playbook}: {result.error}")  # Ansible itself stopped mid-run
        events.extend(result.events)
        facts.extend(result.facts)
    reports = build_host_reports(events, targets.hosts, str(source.tree), facts)
    reports = _refusals_told(config, source, targets, state, run_id, reports, cancel)
    reports = mask_reports(_with_reason(reports, broken), source.mask)
    record_managed_paths(state, facts, reports, source.sha)
    return reports, later


def _refusals_told(config: Config, source: Source, targets: Targets, state: StateDir,
                   run_id: str, reports: dict[str, HostReport],
                   cancel: Callable[[], bool] | None) -> dict[str, HostReport]:
    """Mitogen keeps ssh's words when it refuses a host key: the hosts it refused are checked
    again with the plain strategy, alone, for ssh's refusal (which key the host sent, the fix).
    Nothing runs on a host whose key is refused; only the message changes."""
    refused = [n for n, r in reports.items()
               if r.status == UNREACHABLE and r.message == MITOGEN_KEY_LINE]
    if not refused:
        return reports
    run = replace(playbook_run(config, source, targets, targets.playbooks[0],
                               f"{run_id}-refused"), limit=",".join(refused))
    result = run_playbook(run, state.runner, config.ansible.artifacts_keep, cancel)
    told = build_host_reports(result.events, tuple(refused), str(source.tree), result.facts)
    return {n: replace(r, message=told[n].message)
            if n in refused and told[n].status == UNREACHABLE else r
            for n, r in reports.items()}


def _with_reason(reports: dict[str, HostReport], broken: list[str]) -> dict[str, HostReport]:
    """Unknown hosts of runs that Ansible ended without its recap say why it ended."""
    if not broken:
        return reports
    why = "; ".join(broken)
    return {name: replace(r, message=f"{r.message}: {why}") if r.status == UNKNOWN else r
            for name, r in reports.items()}


def record_managed_paths(state: StateDir, facts: list[dict[str, Any]],
                         reports: Mapping[str, HostReport], sha: str) -> None:
    """Keep, per host whose check ran through, the paths its playbooks manage (the callback's
    "paths" facts): the daemon's file watch follows them. A host that failed keeps the last."""
    paths: dict[str, set[str]] = {}
    local: dict[str, bool] = {}
    for fact in facts:
        if fact.get("event") == "paths" and isinstance(fact.get("paths"), list):
            host = str(fact.get("host"))
            paths.setdefault(host, set()).update(str(p) for p in fact["paths"])
            local[host] = local.get(host, True) and bool(fact.get("local"))
    for host, report in reports.items():
        if report.status in (CLEAN, DRIFTED):
            write_managed_paths(state, host, {"paths": sorted(paths.get(host, ())),
                                              "local": local.get(host, False),
                                              "source_sha": sha})


def playbook_run(config: Config, source: Source, targets: Targets, playbook: str,
                  ident: str, check: bool = True) -> PlaybookRun:
    a = config.ansible
    return PlaybookRun(
        tree=source.tree, playbook=playbook, inventory=targets.inventory, limit=targets.limit,
        check=check, ident=ident, tags=config.tags, skip_tags=config.skip_tags,
        extra_vars=config.extra_vars, vault_password_file=config.vault_password_file,
        timeout=a.timeout, forks=a.forks, private_key_file=a.private_key_file,
        known_hosts_file=a.known_hosts_file, env=source.env, masters=targets.masters)
