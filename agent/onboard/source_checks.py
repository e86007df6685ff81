"""Doctor's checks of the Git side: the Git server's host key, the source branch, signatures,
and whether the reports remote takes the agent's push. Nothing is written to the state
directory: the source is fetched into a temporary mirror, the push is a dry run."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from agent.adapters.gitrepo import Mirror
from agent.adapters.ssh import (
    SshError,
    check_server,
    known_hosts_files,
    read_known_keys,
    resolve_endpoint,
)
from agent.adapters.state import StateDir
from agent.config import Config
from agent.core.ansible_cfg import check_ansible_cfg
from agent.core.hostkeys import CERTIFIED, KNOWN, parse_ssh_url
from agent.core.policy import AUTO
from agent.core.redact import redact_text
from agent.cycle.decide import load_policy
from agent.cycle.detect import select_playbooks, this_host_names
from agent.cycle.record import layout_of, probe_reports_push
from agent.cycle.source import MissingBranchError, Source, fetch_source, remote_ssh
from agent.cycle.trust import check_signatures, read_trust
from agent.errors import AgentError, FetchError, HostKeyError, RepoError
from agent.onboard.findings import FAIL, OK, WARN, Finding

HOST_KEY_TIMEOUT = 15.0


@dataclass
class Fetched:
    """The source as doctor fetched it: a temporary mirror, the head, and its tree when it
    may be used (fetched, and signed when signatures are required)."""

    mirror: Mirror
    sha: str | None = None
    tree: Path | None = None
    why_not: str = ""  # why there is no tree


def check_source(config: Config, tmp: Path, findings: list[Finding]) -> Fetched:
    """The Git server's host key, the branch, the signatures, the repo's ansible.cfg and
    policy; return the fetched source for the checks that need its files."""
    repo = config.repo
    source_ssh, reports_ssh = remote_ssh(config)
    mirror = Mirror(tmp / "mirror.git", repo.url, repo.timeout, source_ssh,
                    reports_ssh_options=reports_ssh)
    fetched = Fetched(mirror, why_not="the source could not be fetched (see above)")
    if not check_git_host_key(repo.url, repo.known_hosts, "repo", findings):
        return fetched
    try:
        fetch_source(config, mirror)
    except AgentError as e:
        findings.append(Finding("source", FAIL, _fetch_problem(config, e)))
        return fetched
    sha = fetched.sha = mirror.resolve(repo.branch)
    assert sha is not None  # the fetch of the branch succeeded
    findings.append(Finding("source", OK, f"{mirror.safe_url} branch {repo.branch} is at "
                                          f"{sha[:12]}"))
    fetched.tree = _trusted_tree(config, fetched, tmp / "tree", findings)
    return fetched


def check_git_host_key(url: str, known_hosts: str | None, section: str,
                       findings: list[Finding]) -> bool:
    """Whether the SSH server of URL sends a key its known_hosts holds (True for another
    transport); SECTION is repo or reports, for the key names in the fix."""
    target = parse_ssh_url(url)
    check = "git host key" if section == "repo" else "reports host key"
    reach = "source" if section == "repo" else "reports push"
    if target is None:
        return True
    user, host, port = target
    endpoint = resolve_endpoint(host, port if port != 22 else None, user)
    if endpoint.proxied:
        findings.append(Finding(check, WARN, f"{endpoint.name} is reached through ProxyJump or "
                                "ProxyCommand (~/.ssh/config): its key is not checked here; "
                                "the source line shows what ssh says"))
        return True
    add_to = f"{section}.known_hosts" + (f" ({known_hosts})" if known_hosts else
                                         " (default: ~/.ssh/known_hosts)")
    try:
        known = read_known_keys(known_hosts_files(known_hosts), endpoint.name)
        result = check_server(endpoint, known, add_to, HOST_KEY_TIMEOUT)
    except SshError as e:
        findings.append(Finding(reach, FAIL, f"cannot reach {redact_text(url)}: {e}; check "
                                f"{section}.url and the network"))
        return False
    status = {KNOWN: OK, CERTIFIED: WARN}.get(result.verdict.status, FAIL)
    findings.append(Finding(check, status, f"{endpoint.name}: {result.verdict.line}"
                            if status != FAIL else result.verdict.line))
    return status != FAIL


def check_reports(config: Config, fetched: Fetched, findings: list[Finding]) -> None:
    """Whether the reports remote takes the agent's push (a dry run), and whether the
    layout lets this pet's key write to the source repository."""
    url, r = config.reports_url, config.reports
    # The agent pushes to its host's own branch: the limit's host, or this machine's name.
    branch_host = config.limit if config.limit and re.fullmatch(r"[\w.-]+", config.limit) \
        else this_host_names()[0]
    findings.append(_layout(config))
    if not r.push:
        findings.append(Finding("reports push", OK, "reports.push is off: reports stay in the "
                                                    "state directory's mirror"))
        return
    own_server = _server(url) not in (None, _server(config.repo.url))
    if own_server and not check_git_host_key(url, r.known_hosts or config.repo.known_hosts,
                                             "reports", findings):
        return
    try:
        answer = probe_reports_push(fetched.mirror, config, branch_host)
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
    state = "would be created" if answer.startswith("new") else "exists"
    findings.append(Finding("reports push", OK, f"{redact_text(url)} accepts the agent's key "
                            f"for a push to {layout_of(config).branch(branch_host)} ({state}); "
                            "a dry run proves "
                            "authentication, not what server-side hooks would say"))


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


def _trusted_tree(config: Config, fetched: Fetched, dest: Path,
                  findings: list[Finding]) -> Path | None:
    repo, mirror, sha = config.repo, fetched.mirror, fetched.sha
    assert sha is not None
    verified = None
    with contextlib.suppress(AgentError, OSError):
        verified = read_trust(StateDir(config.state_dir)).get("verified")
    problem = check_signatures(config, mirror, sha, verified)
    if problem:
        findings.append(Finding("signatures", FAIL, problem))
        fetched.why_not = "the source commit is not trusted (see above)"
        return None
    tree = mirror.materialise(sha, dest)
    try:
        check_ansible_cfg(tree)
        policy = load_policy(config, Source(sha, tree))
    except RepoError as e:
        findings.append(Finding("repo content", FAIL, str(e).replace("\n", "; ")))
        fetched.why_not = "the repository's content is refused (see above)"
        return None
    findings.append(_playbooks(config, tree))
    auto = policy.default == AUTO or any(rule.mode == AUTO for rule in policy.rules)
    if repo.verify != "off":
        findings.append(Finding("signatures", OK, f"repo.verify: {repo.verify}: {sha[:12]} is "
                                "signed by an allowed key"))
    elif auto:
        findings.append(Finding("signatures", WARN, "repo.verify is off, and the policy "
                                f"({config.policy}) applies changes without a person (auto): "
                                f"whoever can push {repo.branch} changes this pet; sign the "
                                "source and set repo.verify: all with repo.allowed_signers "
                                "(docs/security.md)"))
    else:
        findings.append(Finding("signatures", OK, "repo.verify is off; no policy rule is "
                                "auto, so each correction waits for a person's approval"))
    return tree


def _playbooks(config: Config, tree: Path) -> Finding:
    """The playbooks a cycle would run: configured, or ansible-pull's choice for this host."""
    try:
        playbooks = select_playbooks(config, tree, this_host_names())
    except RepoError as e:
        return Finding("playbooks", FAIL, str(e))
    how = "" if config.playbooks else " (ansible-pull's choice for this host)"
    return Finding("playbooks", OK, f"{', '.join(playbooks)}{how}")


def _fetch_problem(config: Config, error: AgentError) -> str:
    repo = config.repo
    if isinstance(error, (MissingBranchError, HostKeyError)):  # each names its fix
        return str(error)
    key = f"; the Git server must accept {repo.ssh_key} (add {repo.ssh_key}.pub as a " \
          "read-only deploy key)" if repo.ssh_key else ""
    retry = " (transient: retried with backoff by the daemon)" if isinstance(error, FetchError) \
        else ""
    return f"{error}{retry}; check repo.url and the network{key}"


def _server(url: str) -> tuple[str, int] | None:
    target = parse_ssh_url(url)
    return None if target is None else target[1:]


def _local_path(url: str) -> Path | None:
    if url.startswith("file://"):
        return Path(url.removeprefix("file://"))
    return Path(url) if url.startswith("/") else None
