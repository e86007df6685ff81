"""Doctor's checks of the reports: whether their remote takes the agent's push, proven by a
`git push --dry-run` of the very branches the agent pushes (one per host it reports for), and
whether the layout lets this pet's key write to the source repository."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from agent.config import Config
from agent.core.hostkeys import parse_ssh_url
from agent.core.redact import redact_text
from agent.cycle.record import probe_reports_push
from agent.errors import AgentError, HostKeyError
from agent.onboard.findings import FAIL, OK, WARN, Finding
from agent.onboard.host_checks import Targets
from agent.onboard.source_checks import Fetched, check_git_host_key

LISTED = 4  # branches named one by one in the line; more are counted


def check_reports(config: Config, fetched: Fetched, targets: Targets,
                  findings: list[Finding]) -> None:
    """The reports layout, then a dry run of the push the agent makes: each host of TARGETS
    on its own branch (petkeeper/hosts/<host>), never a branch named after the limit."""
    url, r = config.reports_url, config.reports
    findings.append(_layout(config))
    if not r.push:
        findings.append(Finding("reports push", OK, "reports.push is off: reports stay in the "
                                                    "state directory's mirror"))
        return
    if not targets.hosts:
        findings.append(Finding("reports push", WARN, "not checked: the agent pushes a branch "
                                "per host of the limit, and which hosts those are is not known "
                                "(see the hosts line)"))
        return
    own_server = _server(url) not in (None, _server(config.repo.url))
    if own_server and not check_git_host_key(url, r.known_hosts or config.repo.known_hosts,
                                             "reports", findings):
        return
    try:
        answers = probe_reports_push(fetched.mirror, config, targets.hosts)
    except HostKeyError as e:
        findings.append(Finding("reports push", FAIL, str(e)))
        return
    except AgentError as e:
        key = r.ssh_key or config.repo.ssh_key
        grant = f"give {key}.pub write access to it" if key else "give the agent's SSH key " \
            "write access to it"
        findings.append(Finding("reports push", FAIL, f"{e}; the reports remote must take the "
                                f"agent's push: {grant}, or set reports.url and "
                                "reports.ssh_key"))
        return
    where = _local_path(url)
    if where is not None and not os.access(where, os.W_OK):
        findings.append(Finding("reports push", FAIL, f"{where} is not writable for this user; "
                                "give it write permission, or set reports.url"))
        return
    findings.append(Finding("reports push", OK, f"{redact_text(url)} accepts the agent's key "
                            f"for a push to {describe_branches(answers)}; a dry run proves "
                            "authentication, not what server-side hooks would say"))


def describe_branches(answers: Mapping[str, str]) -> str:
    """The branches a dry run pushed to, each with whether it exists; counted when many."""
    def state(answer: str) -> str:
        return "would be created" if answer.startswith("new") else "exists"

    if len(answers) <= LISTED:
        return ", ".join(f"{branch} ({state(answer)})" for branch, answer in answers.items())
    new = sum(1 for answer in answers.values() if state(answer) != "exists")
    first = ", ".join(list(answers)[:LISTED])
    return (f"{len(answers)} branches, {first} and {len(answers) - LISTED} more ({new} would "
            f"be created, {len(answers) - new} exist)")


def _layout(config: Config) -> Finding:
    """A key that can push reports to the source repository can usually push its source
    branch too: one compromised pet could then give orders to every pet."""
    repo, r = config.repo, config.reports
    if config.reports_url != repo.url:
        key = f" with {r.ssh_key}" if r.ssh_key else ""
        return Finding("reports layout", OK, f"reports go to a separate repository "
                                             f"({redact_text(config.reports_url)}){key}")
    if repo.verify == "all":
        return Finding("reports layout", OK, "reports go to the source repository, and "
                       "repo.verify: all refuses source commits no allowed key signed")
    same = r.ssh_key is None or r.ssh_key == repo.ssh_key
    return Finding("reports layout", WARN, "reports go to the source repository "
                   f"{'with the same key' if same else 'with a key that may write to it'}, "
                   f"which can then usually push {repo.branch} too: whoever takes this pet "
                   "could give orders to every pet; use a separate reports repository "
                   "(reports.url, reports.ssh_key), or protect the source branch and set "
                   "repo.verify: all (docs/security.md)")


def _server(url: str) -> tuple[str, int] | None:
    target = parse_ssh_url(url)
    return None if target is None else target[1:]


def _local_path(url: str) -> Path | None:
    if url.startswith("file://"):
        return Path(url.removeprefix("file://"))
    return Path(url) if url.startswith("/") else None
