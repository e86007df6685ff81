"""agent.core.versions: the tested ansible-core range, and the warning outside it."""

from __future__ import annotations

import logging
import sys
from importlib.metadata import version

import pytest

from agent.adapters.runner import warn_untested_ansible
from agent.core.versions import untested_ansible


@pytest.mark.parametrize("core", ["2.19.0", "2.19.14", "2.20.10", "2.21.5", "2.21.0rc1"])
def test_a_tested_ansible_core_gives_no_warning(core: str):
    assert untested_ansible(core, (3, 13)) is None


@pytest.mark.parametrize(("core", "python", "pin"), [
    ("2.18.19", (3, 11), "ansible-core>=2.19,<2.20"),
    ("2.22.0", (3, 13), "ansible-core>=2.20,<2.22"),
    ("2.22.0.dev0", (3, 12), "ansible-core>=2.20,<2.22"),
    ("3.0.0", (3, 13), "ansible-core>=2.20,<2.22"),
    ("devel", (3, 11), "ansible-core>=2.19,<2.20"),
])
def test_an_untested_ansible_core_is_one_line_naming_the_range_and_a_tested_install(
        core: str, python: tuple[int, int], pin: str):
    warning = untested_ansible(core, python)

    assert warning is not None and "\n" not in warning
    assert warning.startswith(f"ansible-core {core} is outside the range Petkeeper is tested "
                              "with, 2.19 to 2.21 (2.19 on Python 3.11; 2.20 and 2.21 on "
                              "Python 3.12 and 3.13)")
    assert warning.endswith(f"pip install '{pin}'")


def test_the_installed_pair_is_a_tested_one_and_starts_without_a_warning(caplog):
    """What CI installs (pyproject.toml's markers pick the pair) is inside the range."""
    caplog.set_level(logging.WARNING)
    installed = version("ansible-core")

    warn_untested_ansible()

    assert caplog.records == []
    expected = "2.19" if sys.version_info < (3, 12) else "2.21"
    assert installed.startswith(f"{expected}."), (installed, sys.version)


@pytest.fixture
def restored_logging():
    """cli.main configures logging for the process: put the test run's back afterwards."""
    root, agent = logging.getLogger(), logging.getLogger("agent")
    saved = (root.handlers[:], root.level, agent.level)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    agent.setLevel(saved[2])


@pytest.mark.parametrize(("command", "warnings"), [("check", 1), ("daemon", 1), ("status", 0)])
def test_a_start_under_an_untested_ansible_core_logs_one_warning_naming_the_range(
        command: str, warnings: int, tmp_path, monkeypatch, capsys, restored_logging):
    from agent import cli

    monkeypatch.setattr("agent.adapters.runner.version", lambda name: "2.22.1")

    code = cli.main(["--config", str(tmp_path / "missing.yml"), command])

    err = capsys.readouterr().err
    assert code == 1 and "missing.yml" in err  # then the command went on, to its own error
    assert err.count("petkeeper: warning: ansible-core 2.22.1 is outside the range "
                     "Petkeeper is tested with, 2.19 to 2.21") == warnings, err
