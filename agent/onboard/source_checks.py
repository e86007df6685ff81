"""Doctor's checks of the Git side: the Git server's host key, the source branch, signatures,
the playbooks (the reports: agent.onboard.reports_checks). Nothing is written to the state
directory: the source is fetched into a temporary mirror."""

from __future__ import annotations

import contextlib
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
