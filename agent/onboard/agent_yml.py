"""The agent.yml that `petkeeper init` writes: the answers, with comments that say what each
setting does and what else may be set. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import yaml


@dataclass(frozen=True)
class Answers:
    url: str
    branch: str = "main"
    inventory: str | None = None
    limit: str | None = None
    playbooks: tuple[str, ...] = ()
    reports_url: str | None = None
    ssh_key: str | None = None
    reports_ssh_key: str | None = None
    known_hosts: str | None = None
    state_dir: str | None = None
    ansible_private_key: str | None = None
    ansible_known_hosts: str | None = None


def render_agent_yml(a: Answers, when: datetime) -> str:
    """The commented agent.yml for the answers A, written at WHEN."""
    lines = [
        f"# Petkeeper's configuration, written by `petkeeper init` on {when.isoformat()}.",
        "# Every key and its default: docs/configuration.md. Check it: petkeeper doctor.",
        "repo:",
        "  # The repository of playbooks and inventories this pet follows.",
        f"  url: {_scalar(a.url)}",
        f"  branch: {_scalar(a.branch)}",
    ]
    if a.ssh_key:
        lines += ["  # This pet's own deploy key (its .pub goes to the Git server).",
                  f"  ssh_key: {_scalar(a.ssh_key)}"]
    if a.known_hosts:
        lines += ["  # The Git server's host key, as you confirmed it; never trusted on first use.",
                  f"  known_hosts: {_scalar(a.known_hosts)}"]
    lines += [
        "  # Refuse source commits that no allowed key signed (docs/security.md):",
        "  # verify: all",
        "  # allowed_signers: /etc/petkeeper/allowed_signers",
        "",
    ]
    if a.playbooks:
        lines += ["# The playbooks each cycle runs, paths inside the repository.",
                  f"playbooks: [{', '.join(_scalar(p) for p in a.playbooks)}]"]
    else:
        lines += ["# Playbooks: none set, so ansible-pull's choice: <fqdn>.yml, "
                  "<hostname>.yml, local.yml.", "# playbooks: [site.yml]"]
    lines += _optional("inventory", a.inventory, "the inventory, a path inside the repository; "
                       "unset: this host only, over a local connection")
    lines += _optional("limit", a.limit, "the hosts to check; unset: this host, like "
                       "ansible-pull")
    lines += ["", "reports:",
              "  # Each host's reports are committed to a branch of its own, never to the",
              "  # source branch: petkeeper/hosts/<host>.",
              "  host_branches: petkeeper/hosts"]
    if a.reports_url:
        lines += ["  # A repository of their own, with a key of their own: this pet's keys "
                  "cannot push the source.",
                  f"  url: {_scalar(a.reports_url)}"]
        if a.reports_ssh_key:
            lines += [f"  ssh_key: {_scalar(a.reports_ssh_key)}"]
        if a.known_hosts and a.reports_ssh_key:
            lines += [f"  known_hosts: {_scalar(a.known_hosts)}"]
    else:
        lines += ["  # url: unset, so the source repository, with repo.ssh_key; a separate",
                  "  # repository is safer (reports.url, reports.ssh_key: docs/security.md)."]
    if a.state_dir:
        lines += ["", f"state_dir: {_scalar(a.state_dir)}"]
    if a.ansible_private_key or a.ansible_known_hosts:
        lines += ["", "ansible:", "  # How Ansible reaches the target hosts over SSH."]
        if a.ansible_private_key:
            lines += [f"  private_key_file: {_scalar(a.ansible_private_key)}"]
        if a.ansible_known_hosts:
            lines += [f"  known_hosts_file: {_scalar(a.ansible_known_hosts)}"]
    return "\n".join(lines) + "\n"


def _optional(key: str, value: str | None, comment: str) -> list[str]:
    if value is None:
        return [f"# {key}: ... ({comment})"]
    return [f"# {comment[0].upper()}{comment[1:]}.", f"{key}: {_scalar(value)}"]


def _scalar(value: str) -> str:
    """VALUE as a YAML scalar that reads back as the same string."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000)
    return text.removesuffix("\n").removesuffix("\n...").strip()
