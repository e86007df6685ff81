"""After an apply, run the GitOps repo's own testinfra tests against the host.

The repo's tests folder (``post_apply_tests``, default ``tests``) runs with pytest-testinfra's
Ansible backend, so it reaches the host exactly as Ansible does (same inventory, SSH key and
known hosts). Results are read from pytest's JUnit XML, never from its printed output.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.adapters.process import Cancel, ProcessStopped, run_process
from agent.adapters.runner import PlaybookRun, build_env

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestRun:
    """What the repo's tests said about one host after an apply."""

    __test__ = False  # not a pytest class

    passed: bool
    tests: int = 0
    failures: int = 0
    errors: int = 0
    failed: tuple[str, ...] = field(default_factory=tuple)  # names of failed tests
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failed": list(self.failed)}


def missing_tools() -> list[str]:
    """The distributions the post-apply tests need that this Python lacks."""
    return [dist for dist, module in (("pytest", "pytest"), ("pytest-testinfra", "testinfra"))
            if importlib.util.find_spec(module) is None]


def run_host_tests(run: PlaybookRun, folder: Path, host: str, cancel: Cancel = None,
                   key: str = "post_apply_tests") -> TestRun:
    """Run the tests in FOLDER against HOST, reached like RUN's Ansible would reach it. At
    RUN.timeout, or when CANCEL() turns true, pytest and all it started are stopped, and the
    tests count as failed, saying so. KEY names the setting, for the error when
    pytest-testinfra is not installed."""
    if missing := missing_tools():
        message = (f"{' and '.join(missing)} not installed, so the repo's tests in "
                   f"{folder.name}/ did not run; pip install 'petkeeper[verify]', or set "
                   f"{key} to false")
        log.error("%s: post-apply tests: %s", host, message)
        return TestRun(False, message=message)
    with tempfile.TemporaryDirectory(prefix="petkeeper-tests-") as tmp:
        junit = Path(tmp) / "junit.xml"
        argv = [sys.executable, "-m", "pytest", str(folder), f"--hosts=ansible://{host}",
                f"--ansible-inventory={run.inventory}", f"--junitxml={junit}", "-q",
                "-p", "no:cacheprovider", f"--rootdir={run.tree}"]
        if run.private_key_file:
            argv.append(f"--ssh-identity-file={run.private_key_file}")
        env = {**build_env(run), "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            proc = run_process(argv, what=f"{host}: post-apply tests (pytest {folder.name})",
                               timeout=run.timeout, cancel=cancel, cwd=run.tree, env=env,
                               fix="make the tests finish within ansible.timeout")
        except ProcessStopped as e:
            log.warning("%s", e)
            return TestRun(False, message=str(e))
        if not junit.exists():
            return TestRun(False, message=f"pytest exited {proc.returncode} without results")
        result = parse_junit(junit.read_text())
    log.info("%s: post-apply tests: %d run, %d failed", host, result.tests,
             result.failures + result.errors)
    return result


def parse_junit(text: str) -> TestRun:
    """Given pytest's JUnit XML, return the counts and the names of failed tests."""
    root = ET.fromstring(text)
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests = sum(int(s.get("tests", 0)) for s in suites)
    failures = sum(int(s.get("failures", 0)) for s in suites)
    errors = sum(int(s.get("errors", 0)) for s in suites)
    failed = tuple(f"{case.get('classname', '')}::{case.get('name', '')}"
                   for case in root.iter("testcase")
                   if case.find("failure") is not None or case.find("error") is not None)
    passed = tests > 0 and failures == 0 and errors == 0
    message = "" if tests else "no tests were collected"
    return TestRun(passed, tests, failures, errors, failed, message)
