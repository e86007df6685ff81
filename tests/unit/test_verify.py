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


# pytest's JUnit XML as pytest-testinfra's runs write it (tests/integration/test_repo_extras.py
# runs them on a real host): two tests that passed, then a third that failed.
JUNIT_PASSED = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">\
<testsuite name="pytest" errors="0" failures="0" skipped="0" tests="2" time="1.873" \
timestamp="2026-12-02T05:10:11.482316+00:00" hostname="ci">\
<testcase classname="tests.test_pet" name="test_motd_is_the_managed_one[ansible://beta]" \
time="1.102" /><testcase classname="tests.test_pet" name="test_pet_conf_is_steady[ansible://beta]" \
time="0.611" /></testsuite></testsuites>"""
JUNIT_FAILED = JUNIT_PASSED.replace('failures="0"', 'failures="1"').replace(
    'tests="2"', 'tests="3"').replace("</testsuite>", (
        '<testcase classname="tests.test_pet" name="test_a_file_nobody_manages[ansible://beta]" '
        'time="0.512"><failure message="assert False">host = &lt;testinfra.host.Host '
        "ansible://beta&gt;</failure></testcase></testsuite>"))


def test_tests_that_all_passed_make_a_passed_result():
    result = verify.parse_junit(JUNIT_PASSED)

    assert result == verify.TestRun(True, tests=2)
    assert result.as_dict() == {"passed": True, "tests": 2, "failures": 0, "errors": 0,
                                "failed": [], "message": ""}


def test_one_failed_test_fails_the_result_and_is_named():
    result = verify.parse_junit(JUNIT_FAILED)

    assert result == verify.TestRun(False, tests=3, failures=1, failed=(
        "tests.test_pet::test_a_file_nobody_manages[ansible://beta]",))


def test_no_test_collected_is_not_a_pass():
    result = verify.parse_junit(JUNIT_PASSED.replace('tests="2"', 'tests="0"'))

    assert not result.passed and result.message == "no tests were collected"
