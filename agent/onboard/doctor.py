"""`petkeeper doctor`: is this pet ready? One line per check, ok, warn or fail, with the fix.

Like `flux check` or `brew doctor`, and changing nothing: the repository is fetched into a
temporary folder, never into the state directory's mirror; the reports remote gets a
`git push --dry-run`; target hosts get an SSH handshake and a login, in process (paramiko),
against the known_hosts files Ansible uses. Exit 0 all ok, 3 warnings only, 1 any failure.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agent.config import Config, load_config
from agent.errors import ConfigError
from agent.onboard.findings import FAIL, OK, WARN, Finding
from agent.onboard.host_checks import check_hosts, select_doctor_targets
from agent.onboard.reports_checks import check_reports
from agent.onboard.source_checks import check_source
from agent.onboard.system_checks import check_service, check_state, check_versions

EXIT_OK, EXIT_FAIL, EXIT_WARN = 0, 1, 3  # 2 means drift everywhere else in Petkeeper


def run_doctor(config_path: Path, prefix: Path = Path("/")) -> list[Finding]:
    """Check the install, the config at CONFIG_PATH, its Git remotes, its target hosts and the
    service; PREFIX stands for / where the service's files are looked for (a staged tree)."""
    findings: list[Finding] = []
    config = _load(config_path, findings)
    if config is not None:
        with tempfile.TemporaryDirectory(prefix="petkeeper-doctor-") as tmp:
            fetched = check_source(config, Path(tmp), findings)
            targets = select_doctor_targets(config, fetched)
            check_reports(config, fetched, targets, findings)
            check_hosts(config, fetched, targets, findings)
    check_versions(findings)
    if config is not None:
        check_state(config, findings)
    check_service(prefix, config, findings)
    return findings


def exit_code(findings: Sequence[Finding]) -> int:
    statuses = {f.status for f in findings}
    return EXIT_FAIL if FAIL in statuses else EXIT_WARN if WARN in statuses else EXIT_OK


def render_doctor(findings: Sequence[Finding]) -> str:
    """One line per finding, then a count."""
    lines = [f"{f.status:<5} {f.check}: {f.message}" for f in findings]
    n = counts(findings)
    lines.append(f"{n[OK]} ok, {n[WARN]} warning(s), {n[FAIL]} failure(s)")
    return "\n".join(lines)


def doctor_json(findings: Sequence[Finding]) -> dict[str, Any]:
    return {"checks": [asdict(f) for f in findings], "counts": dict(counts(findings)),
            "exit_code": exit_code(findings)}


def _load(path: Path, findings: list[Finding]) -> Config | None:
    try:
        config = load_config(path)
    except ConfigError as e:
        findings.extend(Finding("config", FAIL, problem) for problem in e.problems)
        return None
    findings.append(Finding("config", OK, f"{path} is valid"))
    return config


def counts(findings: Sequence[Finding]) -> Mapping[str, int]:
    return {s: sum(1 for f in findings if f.status == s) for s in (OK, WARN, FAIL)}
