"""`petkeeper init`: set a pet up. It writes /etc/petkeeper/agent.yml (0600, with comments),
generates the deploy keys (ed25519, 0600) whose public halves go to the Git server, and
records the Git server's host key only once a person confirmed its fingerprint (or from a
known_hosts file they verified). Nothing is written until every answer is in, and no existing
file is replaced without --force; existing deploy keys are kept (delete them to rotate).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from agent.adapters.ssh import SshError, generate_key, resolve_endpoint, scan_host_key
from agent.adapters.state import write_atomic
from agent.config import DEFAULT_PATH, Overrides, parse_config
from agent.core.hostkeys import (
    display_kind,
    fingerprint,
    keys_for,
    parse_known_hosts,
    parse_ssh_url,
)
from agent.core.schema import load_yaml
from agent.errors import AgentError
from agent.onboard.agent_yml import Answers, render_agent_yml

SCAN_TIMEOUT = 15.0
STATE_DIR = Path("/var/lib/petkeeper")


class Prompter(Protocol):
    """Asks the person running init; INTERACTIVE when a terminal is there to ask."""

    interactive: bool

    def ask(self, question: str, default: str) -> str: ...

    def confirm(self, question: str) -> bool: ...


@dataclass(frozen=True)
class InitRequest:
    """What the command line gave; None: ask, or take ansible-pull's default."""

    url: str | None = None
    branch: str | None = None
    inventory: str | None = None
    limit: str | None = None
    playbooks: tuple[str, ...] = ()
    reports_url: str | None = None
    known_hosts: Path | None = None  # the Git servers' keys, verified by the person
    ansible_private_key: str | None = None
    ansible_known_hosts: str | None = None
    config: Path | None = None  # default: PREFIX/etc/petkeeper/agent.yml
    prefix: Path = Path("/")
    force: bool = False


@dataclass
class InitResult:
    config: Path
    keys: list[tuple[str, Path, str]] = field(default_factory=list)  # (what for, file, public)
    host_keys: list[str] = field(default_factory=list)  # "name KIND SHA256:..." recorded
    notes: list[str] = field(default_factory=list)


def render_init(result: InitResult) -> str:
    """What init did, and what a person does next."""
    lines = [f"wrote {result.config} (0600)"]
    lines += [f"recorded the Git server's host key: {line}" for line in result.host_keys]
    lines += [f"{what} {path} (0600), public half:\n  {public}"
              for what, path, public in result.keys]
    lines += [f"next: {note}" for note in result.notes]
    lines.append("then: petkeeper doctor, petkeeper check, and systemctl enable --now petkeeper")
    return "\n".join(lines)


def init_agent(request: InitRequest, prompter: Prompter) -> InitResult:
    """Ask what is missing, check it, confirm the Git servers' host keys, then write the
    deploy keys, known_hosts and agent.yml; AgentError before anything is written when a
    file exists (without --force), an answer is bad or a host key is not confirmed."""
    config = request.config or request.prefix / DEFAULT_PATH.relative_to("/")
    folder = config.parent
    if os.geteuid() != 0 and request.config is None and request.prefix == Path("/"):
        raise AgentError("init: run it as root (it writes /etc/petkeeper), or pass --prefix "
                         "DIR to write the files under DIR")
    known_file = folder / "known_hosts"
    existing = [str(p) for p in (config, known_file) if p.exists()]
    if existing and not request.force:
        them = "them" if len(existing) > 1 else "it"
        raise AgentError(f"init: {' and '.join(existing)} already exist"
                         f"{'s' if len(existing) == 1 else ''}; nothing was changed; pass "
                         f"--force to replace {them} (deploy keys are kept)")
    answers = _answers(request, prompter, folder)
    text = render_agent_yml(answers, datetime.now(UTC).replace(microsecond=0))
    parse_config(load_yaml(text), str(config), Overrides())  # ConfigError names the option
    servers = _ssh_servers(answers)
    lines = _known_host_lines(servers, request.known_hosts, prompter)
    result = InitResult(config)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if answers.ssh_key:
        result.keys.append(_key("deploy key", Path(answers.ssh_key), answers.url))
    if answers.reports_ssh_key:
        result.keys.append(_key("reports key", Path(answers.reports_ssh_key),
                                answers.reports_url or answers.url))
    if lines:
        write_atomic(known_file, "".join(f"{line}\n" for line in lines).encode(), 0o644)
        result.host_keys = [_describe(line) for line in lines]
    write_atomic(config, text.encode(), 0o600)
    os.chmod(config, 0o600)  # write_atomic's mode meets the umask; 0600 it must be
    result.notes = _notes(answers)
    return result


def _answers(request: InitRequest, prompter: Prompter, folder: Path) -> Answers:
    def value(given: str | None, question: str, default: str = "") -> str:
        if given is not None:
            return given
        return prompter.ask(question, default).strip() if prompter.interactive else default

    url = value(request.url, "Git URL of the repository of playbooks and inventories")
    if not url:
        raise AgentError("init: --url: the repository's Git URL is needed; pass --url URL "
                         "(e.g. ssh://git@git.example.org/ops/pets.git)")
    branch = value(request.branch, "Branch", "main")
    inventory = value(request.inventory, "Inventory in the repository (empty: this host only, "
                                         "like ansible-pull)")
    limit = value(request.limit, "Hosts to check (empty: this host, like ansible-pull)")
    playbooks = request.playbooks or tuple(value(
        None, "Playbooks, separated by spaces (empty: <fqdn>.yml, <hostname>.yml or local.yml, "
              "like ansible-pull)").split())
    reports = value(request.reports_url, "Git URL of a separate reports repository (empty: "
                                         "the source repository; separate is safer)")
    reports = "" if reports == url else reports
    ssh = parse_ssh_url(url) is not None
    reports_ssh = bool(reports) and parse_ssh_url(reports) is not None
    state_dir = request.prefix / STATE_DIR.relative_to("/")
    return Answers(
        url=url, branch=branch or "main", inventory=inventory or None, limit=limit or None,
        playbooks=playbooks, reports_url=reports or None,
        ssh_key=str(folder / "deploy_key") if ssh else None,
        reports_ssh_key=str(folder / "reports_key") if reports_ssh else None,
        known_hosts=str(folder / "known_hosts") if ssh or reports_ssh else None,
        state_dir=str(state_dir) if state_dir != STATE_DIR else None,
        ansible_private_key=request.ansible_private_key,
        ansible_known_hosts=request.ansible_known_hosts)


def _ssh_servers(answers: Answers) -> list[tuple[str | None, str, int]]:
    urls = [answers.url] + ([answers.reports_url] if answers.reports_url else [])
    servers: list[tuple[str | None, str, int]] = []
    for url in urls:
        target = parse_ssh_url(url)
        if target is not None and target[1:] not in [s[1:] for s in servers]:
            servers.append(target)
    return servers


def _known_host_lines(servers: Sequence[tuple[str | None, str, int]], given: Path | None,
                      prompter: Prompter) -> list[str]:
    """known_hosts lines for SERVERS: from the file the person GIVEN, or each key scanned and
    confirmed by the person, never trusted on first use."""
    lines = []
    for user, host, port in servers:
        endpoint = resolve_endpoint(host, port if port != 22 else None, user)
        if given is not None:
            lines += _from_file(given, endpoint.name)
            continue
        try:
            kind, key = scan_host_key(endpoint, SCAN_TIMEOUT)
        except SshError as e:
            raise AgentError(f"init: cannot reach the Git server: {e}; check --url and the "
                             "network") from None
        question = (f"The Git server {endpoint.name} sends this {display_kind(kind)} host key:"
                    f"\n  {fingerprint(key)}\nCompare it with the server's own (ssh-keygen -lf "
                    "/etc/ssh/ssh_host_*_key.pub there, or your Git host's published "
                    "fingerprints). Is it the same?")
        if not prompter.confirm(question):
            raise AgentError(f"init: the host key of {endpoint.name} was not confirmed, so "
                             "nothing was written; verify its fingerprint and run init again, "
                             "or pass --known-hosts FILE with its verified key")
        lines.append(f"{endpoint.name} {kind} {key}")
    return lines


def _from_file(path: Path, name: str) -> list[str]:
    try:
        text = path.read_text()
    except OSError as e:
        raise AgentError(f"init: --known-hosts {path}: cannot read: {e.strerror}") from None
    found = [e for e in keys_for(name, parse_known_hosts(text, str(path))) if not e.marker]
    if not found:
        raise AgentError(f"init: --known-hosts {path}: no key for {name}; add the server's "
                         "verified key to it, or leave --known-hosts out to confirm its "
                         "fingerprint here")
    return [f"{name} {e.kind} {e.key}" for e in found]


def _key(what: str, path: Path, url: str) -> tuple[str, Path, str]:
    """An existing key pair is kept; else a new ed25519 one (0600)."""
    public = path.with_name(f"{path.name}.pub")
    if path.exists() and public.exists():
        return what, path, public.read_text().strip()
    return what, path, generate_key(path, f"petkeeper@{socket.gethostname()} {what} for "
                                          f"{url.rsplit('/', 1)[-1]}")


def _describe(line: str) -> str:
    name, kind, key = line.split()
    return f"{name} {display_kind(kind)} {fingerprint(key)}"


def _notes(answers: Answers) -> list[str]:
    notes = []
    if answers.ssh_key:
        access = "read-only" if answers.reports_url else "with write access (for the reports)"
        notes.append(f"add {answers.ssh_key}.pub to the Git server as a deploy key of "
                     f"{answers.url}, {access}")
    if answers.reports_ssh_key:
        notes.append(f"add {answers.reports_ssh_key}.pub as a deploy key with write access to "
                     f"{answers.reports_url}")
    if not answers.reports_url:
        notes.append("reports go to the source repository: the key that pushes them can "
                     f"usually push {answers.branch} too; a separate reports repository "
                     "(--reports-url) or a protected branch with repo.verify: all is safer "
                     "(docs/security.md)")
    return notes
