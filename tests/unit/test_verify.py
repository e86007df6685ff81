"""agent.adapters.verify: the repo's post-apply tests need pytest-testinfra (petkeeper[verify])."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from agent.adapters import verify
from agent.adapters.runner import PlaybookRun

RUN = PlaybookRun(tree=Path("/nonexistent/tree"), playbook="site.yml",
                  inventory=Path("/nonexistent/tree/hosts.yml"), limit="web1", check=False,
                  ident="tests")


def test_the_tools_are_installed_here_with_the_test_extra():
    assert verify.missing_tools() == []


def test_without_pytest_testinfra_the_tests_do_not_run_and_the_result_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    # testinfra is installed in this environment: its absence can only be pretended.
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "testinfra" else real(name, *a))

    result = verify.run_host_tests(RUN, Path("/nonexistent/tree/tests"), "web1", key=
                                   "post_apply_tests in /etc/petkeeper/agent.yml")

    assert not result.passed and result.tests == 0
    assert result.message == (
        "pytest-testinfra not installed, so the repo's tests in tests/ did not run; pip install "
        "'petkeeper[verify]', or set post_apply_tests in /etc/petkeeper/agent.yml to false")
    assert [r.levelname for r in caplog.records] == ["ERROR"]
