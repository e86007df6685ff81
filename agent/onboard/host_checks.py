"""Doctor's check of each target host: reachable over SSH, sending a host key that the
known_hosts file Ansible uses holds, and letting the agent log in, checked in process
(agent.adapters.ssh) so that an unknown or changed key shows its fingerprint."""

from __future__ import annotations

import configparser
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.adapters.inventory import Listing
from agent.adapters.ssh import (
    SshError,
    check_server,
    known_hosts_files,
    read_known_keys,
    resolve_endpoint,
)
from agent.config import Config
from agent.core.hostkeys import CERTIFIED, KNOWN
from agent.cycle.detect import local_host_name, select_hosts, this_host_names
from agent.cycle.source import resolve_in_tree
from agent.errors import AgentError
from agent.onboard.findings import FAIL, OK, WARN, Finding
from agent.onboard.source_checks import Fetched

SSH_TIMEOUT = 10.0
PARALLEL = 16
SSH_CONNECTIONS = ("ssh", "smart", "paramiko", "paramiko_ssh", "ansible.builtin.ssh",
                   "ansible.builtin.paramiko_ssh")


@dataclass(frozen=True)
class Target:
    """How Ansible reaches one host, from its inventory variables and the repo's ansible.cfg."""

    name: str
    connection: str
    address: str
    port: str | None  # as the inventory has it: a number, or a template
    user: str | None
    key_file: str | None


@dataclass(frozen=True)
class Targets:
    """The hosts a cycle would target (and report for, each on its own reports branch), as
    the agent selects them; or why they are not known."""

    listing: Listing | None
    local: bool = False  # no inventory: the pet checks itself
    problem: str = ""

    @property
    def hosts(self) -> list[str]:
        return list(self.listing.groups) if self.listing else []


def select_doctor_targets(config: Config, fetched: Fetched) -> Targets:
    """The limit's hosts in the fetched inventory (ansible-inventory, as the cycle lists
    them), or this host alone when there is no inventory."""
    names = this_host_names()
    if not config.inventory:
        return Targets(Listing({local_host_name(names): ()}), local=True)
    if fetched.tree is None:
        return Targets(None, problem=f"not checked: {fetched.why_not}")
    try:
        inventory = resolve_in_tree(fetched.tree, config.inventory, f"{config.path}: inventory")
        _, listing = select_hosts(config, fetched.tree, inventory, {}, names)
    except AgentError as e:
        return Targets(None, problem=str(e))
    return Targets(listing)


def check_hosts(config: Config, fetched: Fetched, targets: Targets,
                findings: list[Finding]) -> None:
    """One finding per host the limit selects."""
    if targets.local:
        findings.append(Finding("hosts", OK, "no inventory: this host checks itself over a "
                                             "local connection, nothing to reach over SSH"))
        return
    if targets.listing is None:
        findings.append(Finding("hosts", FAIL, targets.problem))
        return
    assert fetched.tree is not None  # the listing came from it
    listing = targets.listing
    defaults = repo_defaults(fetched.tree)
    reach = [build_target(name, listing.hostvars.get(name, {}), defaults,
                          config.ansible.private_key_file) for name in listing.groups]
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(reach))) as pool:
        findings.extend(pool.map(lambda t: check_target(t, config), reach))


def build_target(name: str, hostvars: Mapping[str, Any], defaults: Mapping[str, str],
                 private_key_file: str | None) -> Target:
    """How Ansible would reach NAME: its ansible_* variables, else the repo's ansible.cfg
    (remote_user, remote_port), else ssh's own defaults (None)."""
    def var(*names: str) -> str | None:
        for n in names:
            if hostvars.get(n) not in (None, ""):
                return str(hostvars[n])
        return None

    port = var("ansible_port", "ansible_ssh_port") or defaults.get("remote_port")
    return Target(
        name=name, connection=var("ansible_connection") or "ssh",
        address=var("ansible_host", "ansible_ssh_host") or name,
        port=port,
        user=var("ansible_user", "ansible_ssh_user") or defaults.get("remote_user"),
        key_file=var("ansible_ssh_private_key_file", "ansible_private_key_file") or
        private_key_file)


def check_target(target: Target, config: Config) -> Finding:
    check = f"host {target.name}"
    if target.connection == "local":
        return Finding(check, OK, "local connection: nothing to reach over SSH")
    if target.connection not in SSH_CONNECTIONS:
        return Finding(check, WARN, f"connection {target.connection}: not checked (doctor "
                                    "checks SSH connections only)")
    templated = [v for v in (target.address, target.port, target.user, target.key_file)
                 if v and "{{" in v]
    if templated:
        return Finding(check, WARN, f"{templated[0]!r} is a template: Ansible renders it at "
                                    "run time, doctor does not")
    if target.port is not None and not target.port.isdigit():
        return Finding(check, FAIL, f"ansible_port {target.port!r} is not a port number; fix "
                                    "the inventory")
    endpoint = resolve_endpoint(target.address, int(target.port) if target.port else None,
                                target.user)
    where = f"{endpoint.user}@{endpoint.host}:{endpoint.port}"
    if endpoint.proxied:
        return Finding(check, WARN, f"{where} is reached through ProxyJump or ProxyCommand "
                                    "(~/.ssh/config): not checked here; petkeeper check will "
                                    "show whether Ansible gets through")
    configured = config.ansible.known_hosts_file
    add_to = f"ansible.known_hosts_file ({configured})" if configured else \
        "ansible.known_hosts_file (default: ~/.ssh/known_hosts)"
    try:
        known = read_known_keys(known_hosts_files(configured), endpoint.name)
        result = check_server(endpoint, known, add_to, SSH_TIMEOUT,
                              [target.key_file] if target.key_file else [])
    except SshError as e:
        return Finding(check, FAIL, f"unreachable: {e}; start the host, or fix ansible_host "
                                    "and ansible_port in the inventory")
    if result.verdict.status == CERTIFIED:
        return Finding(check, WARN, f"{where}: {result.verdict.line}")
    if result.verdict.status != KNOWN:
        return Finding(check, FAIL, result.verdict.line)
    if result.login_error:
        key = target.key_file or "the agent's SSH key"
        return Finding(check, FAIL, f"{where}: host key known, but {result.login_error}; add "
                                    f"the public half of {key} to ~{endpoint.user}/.ssh/"
                                    "authorized_keys there, or set ansible.private_key_file")
    return Finding(check, OK, f"{where}: {result.verdict.line}; logged in")


def repo_defaults(tree: Path) -> dict[str, str]:
    """remote_user and remote_port from the repo's ansible.cfg [defaults], when it sets them."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(tree / "ansible.cfg")
    except configparser.Error:
        return {}  # the cycle's allow-list check reports a broken ansible.cfg
    if not parser.has_section("defaults"):
        return {}
    return {k: parser.get("defaults", k) for k in ("remote_user", "remote_port")
            if parser.has_option("defaults", k)}
