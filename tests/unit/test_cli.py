"""agent.cli in-process: every command explains itself; usage errors name their command."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import pty
from collections.abc import Callable, Iterator

import pytest

from agent import __version__
from agent.arguments import build_parser
from agent.cli import main, progress_line, use_color
from agent.operate.logs import Handler
from agent.operate.output import color_wanted
from agent.operate.progress import ProgressLine

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], restore_logging: None) -> Iterator[Run]:
    """Run `petkeeper ARGV...` in this process: (exit code, stdout, stderr). The logging it
    sets up is undone afterwards (restore_logging)."""

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main(list(argv))
        except SystemExit as e:  # --help and --version end argparse's way
            code = int(e.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    yield run


COMMANDS = sorted(build_parser().commands)


def test_version_names_petkeeper_ansible_core_ansible_runner_and_python(cli: Run):
    code, out, _ = cli("--version")
    assert code == 0
    assert out.strip() == (
        f"petkeeper {__version__} (ansible-core {importlib.metadata.version('ansible-core')}, "
        f"ansible-runner {importlib.metadata.version('ansible-runner')}, Python "
        f"{platform.python_version()})")


def test_the_main_help_gives_every_command_a_one_line_description(cli: Run):
    code, out, _ = cli("--help")
    assert code == 0
    listed = {}
    for line in out.splitlines():
        words = line.split(maxsplit=1)
        if line.startswith("    ") and words and words[0] in COMMANDS:
            listed[words[0]] = words[1] if len(words) > 1 else ""
    assert sorted(listed) == COMMANDS
    assert all(len(text) > 10 for text in listed.values()), listed  # on the command's line
    assert "exit codes: 0 ok or clean, 1 error" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_a_full_help_with_its_arguments_explained_and_an_example(
        cli: Run, command: str):
    code, out, _ = cli(command, "--help")
    assert code == 0
    assert out.startswith(f"usage: petkeeper {command} ")
    examples = out.split("\nexamples:\n", 1)[1].splitlines()
    assert examples and all(e.startswith("  ") for e in examples)
    assert any(f"petkeeper {command}" in e or "systemctl" in e for e in examples), examples
    parser = build_parser().commands[command]
    for action in parser._actions:  # every argument, positional ones included, says what it is
        assert action.help, f"{command}: {action.dest} has no help"


def test_a_usage_error_shows_the_commands_usage_and_exits_1_not_2_which_means_drift(cli: Run):
    code, out, err = cli("check", "--bogus")
    assert (code, out) == (1, "")
    assert err.startswith("usage: petkeeper check [-h]")
    assert err.rstrip().endswith("petkeeper check: error: unrecognized arguments: --bogus; "
                                 "see petkeeper check --help")

    code, _, err = cli("approve")
    assert code == 1 and err.startswith("usage: petkeeper approve")
    assert "petkeeper approve: error: the following arguments are required: PLAN_ID" in err


@pytest.mark.parametrize(("args", "problem"), [
    (["--sign"], "--sign: only with --via-git (approving from a workstation); add --via-git, "
                 "or drop --sign to approve on the host itself"),
    (["--cache", "/tmp/x.git"], "--cache: only with --via-git"),
    (["--via-git", "--force-conflicts"], "--force-conflicts: undo plans are approved on the "
                                         "host itself")])
def test_an_approve_option_that_would_be_ignored_is_a_usage_error(cli: Run, args, problem):
    code, out, err = cli("approve", "30c4aa367513c4ee", *args)
    assert (code, out) == (1, "")
    assert f"petkeeper approve: error: {problem}" in err


def test_no_command_at_all_lists_the_commands(cli: Run):
    code, _, err = cli()
    assert code == 1
    assert "petkeeper: error: choose a command: check, plan, run, apply," in err


@pytest.mark.parametrize(("choice", "tty", "env", "wanted"), [
    ("auto", True, {}, True),
    ("auto", False, {}, False),  # piped
    ("auto", True, {"NO_COLOR": "1"}, False),  # no-color.org: any non-empty value
    ("auto", True, {"NO_COLOR": ""}, True),  # ... but not an empty one
    ("auto", True, {"TERM": "dumb"}, False),
    ("always", False, {"NO_COLOR": "1"}, True),  # the command line outranks the environment
    ("never", True, {}, False),
])
def test_color_follows_the_option_the_terminal_and_no_color(choice, tty, env, wanted):
    assert color_wanted(choice, tty, env) is wanted


def test_the_color_option_is_read_before_or_after_the_command(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(build_parser().parse_args(["--color", "always", "check"]))
    assert use_color(build_parser().parse_args(["check", "--color=always"]))
    assert not use_color(build_parser().parse_args(["check", "--color", "never"]))
    monkeypatch.setenv("NO_COLOR", "yes")
    assert not use_color(build_parser().parse_args(["check"]))


@contextlib.contextmanager
def terminal_stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Within: sys.stderr is a real pseudo-terminal. (Set in the test itself: pytest's capture
    puts its own sys.stderr back between a fixture's setup and the test.)"""
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as stream:
        monkeypatch.setattr("sys.stderr", stream)
        try:
            yield
        finally:
            monkeypatch.undo()
            os.close(leader)


def progress_for(*argv: str) -> object:
    args = build_parser().parse_args(list(argv))
    args.log = Handler()
    with progress_line(args) as watch:
        assert args.log.interlude == (watch.interlude if watch else None)
        return watch


def test_progress_shows_on_a_terminal_unless_json_or_quiet_ask_otherwise(monkeypatch):
    with terminal_stderr(monkeypatch):
        assert isinstance(progress_for("check"), ProgressLine)
        assert isinstance(progress_for("run", "--limit", "web1"), ProgressLine)
        assert progress_for("check", "--json") is None
        assert progress_for("-q", "check") is None
        assert progress_for("plan", "--quiet") is None


def test_no_progress_when_stderr_is_not_a_terminal(capsys):
    assert progress_for("check") is None


def test_every_command_runs_through_the_parser():
    """The dispatch table and the parser name the same commands."""
    from agent.cli import COMMANDS as TABLE
    assert sorted(TABLE) == COMMANDS
    assert isinstance(build_parser().commands["check"], argparse.ArgumentParser)


def test_a_command_without_the_rights_says_to_use_sudo_not_that_it_is_a_bug(
        cli: Run, monkeypatch: pytest.MonkeyPatch, tmp_path):
    # The tests run as root, for whom permissions do not apply: the refusal is pretended.
    def refused(config: object) -> None:
        raise PermissionError(13, "Permission denied", "/var/lib/petkeeper/status.json")
    monkeypatch.setattr("agent.operate.commands.read_state_status", refused)
    config = tmp_path / "agent.yml"
    config.write_text("repo: {url: file:///srv/git/pets.git}\n")

    code, out, err = cli("--config", str(config), "status")

    assert (code, out) == (1, "")
    assert err == ("petkeeper: error: /var/lib/petkeeper/status.json: permission denied; "
                   "Petkeeper's state directory and config are root's: run it with sudo\n")


def test_a_pause_over_a_pause_says_whose_pause_it_replaces(cli: Run, tmp_path, monkeypatch):
    monkeypatch.setattr("agent.cli.approver_name", lambda: "alice")
    config = tmp_path / "agent.yml"
    config.write_text(f"repo: {{url: file:///srv/git/pets.git}}\nstate_dir: {tmp_path}/state\n")
    (tmp_path / "state").mkdir(mode=0o700)

    code, first, _ = cli("--config", str(config), "pause", "--checks", "--reason", "disk swap")
    assert code == 0 and "replaces" not in first
    since = json.loads((tmp_path / "state" / "pause.json").read_text())["at"]
    monkeypatch.setattr("agent.cli.approver_name", lambda: "bob")
    code, second, _ = cli("--config", str(config), "pause", "--reason", "kernel update")

    assert code == 0
    assert second.splitlines()[:2] == [
        "paused applies (checks go on) as bob: kernel update; petkeeper resume to undo",
        f"this replaces the pause by alice since {since} (checks too): disk swap"]
    code, resumed, _ = cli("--config", str(config), "resume")
    assert resumed.startswith("resumed (paused by bob since ")
