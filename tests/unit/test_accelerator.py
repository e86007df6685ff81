"""agent.core.accelerator and agent.adapters.accelerator: which strategy a cycle uses, and the
fallback to the plain one when Mitogen's fails before the first task.

The runs here are ansible-runner results made by hand, to pin the decision of each shape of
run; tests/integration/test_accelerator.py runs the real thing against SSH test hosts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from agent.adapters import accelerator as adapter
from agent.adapters.accelerator import Accelerator, choose_accelerator, strategy_failed
from agent.adapters.runner import PlaybookRun, RunResult
from agent.config import Overrides, parse_config
from agent.core.accelerator import MITOGEN, PLAIN, choose_strategy
from agent.errors import ConfigError
from agent.operate.output import render_check

# --- the choice -------------------------------------------------------------------------------


@pytest.mark.parametrize("core, mitogen", [("2.19.14", "0.3.44"), ("2.20.10", "0.3.54"),
                                           ("2.21.5", "0.3.50"), ("2.21.0rc1", "0.3.54")])
def test_auto_takes_mitogen_where_it_supports_this_ansible_core(core: str, mitogen: str):
    choice = choose_strategy("auto", mitogen, core)

    assert choice.strategy == MITOGEN and choice.accelerated and not choice.warning
    assert choice.reason == f"Mitogen {mitogen} supports ansible-core {core}"


@pytest.mark.parametrize("mitogen, core, why", [
    (None, "2.19.14", "Mitogen is not installed (pip install 'mitogen>=0.3.44')"),
    ("0.3.43", "2.19.14", "Mitogen 0.3.43 does not support ansible-core 2.19.14 "
                          "(pip install 'mitogen>=0.3.44')"),
    ("0.3.49", "2.21.5", "Mitogen 0.3.49 does not support ansible-core 2.21.5 "
                         "(pip install 'mitogen>=0.3.50')"),
    ("0.3.54", "2.22.0", "ansible-core 2.22.0 is not one Petkeeper runs with Mitogen "
                         "(2.19, 2.20, 2.21)"),
    ("0.3.54", "2.18.3", "ansible-core 2.18.3 is not one Petkeeper runs with Mitogen "
                         "(2.19, 2.20, 2.21)"),
])
def test_auto_runs_plain_and_says_why_without_a_warning(mitogen: str | None, core: str,
                                                        why: str):
    choice = choose_strategy("auto", mitogen, core)

    assert (choice.strategy, choice.warning) == (PLAIN, False)
    assert choice.reason == f"{why} (ansible.accelerator: auto)"


def test_mitogen_asked_for_by_name_but_missing_runs_plain_with_a_warning():
    choice = choose_strategy("mitogen", None, "2.19.14")

    assert (choice.strategy, choice.warning) == (PLAIN, True)
    assert choice.reason == ("ansible.accelerator is mitogen, but Mitogen is not installed "
                             "(pip install 'mitogen>=0.3.44'); this cycle used the plain "
                             "strategy")


def test_off_is_plain_even_with_mitogen_installed():
    choice = choose_strategy("off", "0.3.54", "2.19.14")

    assert (choice.strategy, choice.warning, choice.reason) == (
        PLAIN, False, "ansible.accelerator is off")


# --- the setting ------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [(None, "auto"), ("auto", "auto"),
                                             ("mitogen", "mitogen"), ("off", "off"),
                                             (False, "off")])
def test_the_accelerator_setting_defaults_to_auto_and_takes_a_bare_off(
        value: Any, expected: str):
    ansible = {} if value is None else {"accelerator": value}
    config = parse_config({"repo": {"url": "file:///r.git"}, "ansible": ansible}, "agent.yml",
                          Overrides())

    assert config.ansible.accelerator == expected


def test_an_unknown_accelerator_is_one_line_naming_the_key_and_the_choices():
    with pytest.raises(ConfigError) as e:
        parse_config({"repo": {"url": "file:///r.git"}, "ansible": {"accelerator": "turbo"}},
                     "agent.yml", Overrides())

    assert e.value.problems == ["agent.yml: ansible.accelerator: expected one of auto, mitogen, "
                                "off, got 'turbo'; use auto (Mitogen when it can), mitogen, or "
                                "off (plain Ansible)"]


# --- where Mitogen is -------------------------------------------------------------------------

def test_the_installed_mitogen_is_found_without_being_imported():
    import sys

    folder = adapter.mitogen_plugins()

    assert folder is not None and (folder / "mitogen_linear.py").is_file()
    assert "ansible_mitogen" not in sys.modules and "mitogen" not in sys.modules
    accel = choose_accelerator("auto")
    assert accel.env() == {"ANSIBLE_STRATEGY": "mitogen_linear",
                           "ANSIBLE_STRATEGY_PLUGINS": str(folder)}


def test_mitogen_missing_from_the_path_gives_plain_with_one_log_line(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    monkeypatch.setattr(adapter.importlib.util, "find_spec", lambda name: None)
    caplog.set_level(logging.INFO, logger=adapter.__name__)

    auto = choose_accelerator("auto")
    named = choose_accelerator("mitogen")

    assert auto.env() == {} and named.env() == {}
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "accelerator: plain strategy: Mitogen is not installed (pip install "
                 "'mitogen>=0.3.44') (ansible.accelerator: auto)"),
        ("WARNING", "accelerator: ansible.accelerator is mitogen, but Mitogen is not installed "
                    "(pip install 'mitogen>=0.3.44'); this cycle used the plain strategy")]


# --- the fallback -----------------------------------------------------------------------------

def events(*kinds: str, error: str = "") -> list[dict[str, Any]]:
    found = [{"event": kind} for kind in kinds]
    if error:
        found.append({"event": "error", "stdout": f"[ERROR]: {error}\n"})
    return found


STRATEGY_BROKE = RunResult(250, "failed", events("playbook_on_start", "playbook_on_play_start",
                                                 error="Unexpected Exception: no mitogen"))
REFUSED = RunResult(4, "failed", events("playbook_on_start", error="the playbook is broken"))
MID_RUN = RunResult(250, "failed", events("playbook_on_start", "playbook_on_play_start",
                                          "playbook_on_task_start", "runner_on_ok",
                                          error="Unexpected Exception: lost the host"))
FINE = RunResult(0, "successful", events("playbook_on_start", "playbook_on_play_start",
                                         "playbook_on_task_start", "runner_on_ok",
                                         "playbook_on_stats"))
NO_HOSTS = RunResult(0, "successful", events("playbook_on_start", "playbook_on_play_start",
                                             "playbook_on_stats"))


@pytest.mark.parametrize("result, failed", [(STRATEGY_BROKE, True), (REFUSED, False),
                                            (MID_RUN, False), (FINE, False), (NO_HOSTS, False)],
                         ids=["strategy-broke", "refused", "mid-run", "fine", "no-hosts"])
def test_only_a_failure_between_play_start_and_first_task_is_the_strategys(result: RunResult,
                                                                          failed: bool):
    assert strategy_failed(result) is failed


RUN = PlaybookRun(tree=Path("/t"), playbook="site.yml", inventory=Path("/t/hosts.yml"),
                  limit="all", check=False, ident="run-1")


def accelerated(monkeypatch: pytest.MonkeyPatch, *results: RunResult
                ) -> tuple[Accelerator, list[PlaybookRun]]:
    """An accelerator whose runs return RESULTS in turn; the runs it made are recorded."""
    made: list[PlaybookRun] = []
    queue = list(results)

    def run_playbook(run: PlaybookRun, *_: Any) -> RunResult:
        made.append(run)
        return queue.pop(0)

    monkeypatch.setattr(adapter, "run_playbook", run_playbook)
    return Accelerator(choose_strategy("auto", "0.3.54", "2.19.14"), Path("/m")), made


def test_a_strategy_failure_before_the_first_task_runs_again_plain_for_the_rest(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    accel, made = accelerated(monkeypatch, STRATEGY_BROKE, FINE, FINE)

    first = accel.run(RUN, Path("/w"))
    second = accel.run(RUN, Path("/w"))

    assert first is FINE and second is FINE
    assert [(r.ident, r.env.get("ANSIBLE_STRATEGY")) for r in made] == [
        ("run-1", "mitogen_linear"), ("run-1-plain", None), ("run-1", None)]
    assert accel.choice.strategy == PLAIN and accel.choice.warning
    assert accel.choice.reason.startswith("Mitogen's strategy failed before the first task "
                                          "(Unexpected Exception: no mitogen); the run was "
                                          "repeated with the plain strategy")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    report = {"hosts": {}, "source_sha": "0" * 40, "run_id": "r",
              "accelerator": accel.choice.as_dict()}
    assert render_check(report).count("warning: accelerator: Mitogen's strategy failed") == 1


def test_a_failure_after_a_task_started_is_never_run_again(monkeypatch: pytest.MonkeyPatch):
    accel, made = accelerated(monkeypatch, MID_RUN)

    assert accel.run(RUN, Path("/w")) is MID_RUN
    assert len(made) == 1 and accel.choice.strategy == MITOGEN


def test_the_same_failure_without_mitogen_is_the_plays_and_keeps_the_accelerator(
        monkeypatch: pytest.MonkeyPatch):
    accel, made = accelerated(monkeypatch, STRATEGY_BROKE, STRATEGY_BROKE)

    assert accel.run(RUN, Path("/w")) is STRATEGY_BROKE
    assert len(made) == 2 and accel.choice.strategy == MITOGEN and not accel.choice.warning


# --- a host key Mitogen refused: its refusal read again from a plain run of that host alone --

GOLDEN = Path(__file__).parent / "fixtures" / "drift"
TREE = "/var/lib/petkeeper/trees/8f14e45fceea167a5a36dedd4bea2543b2c1e7c8"  # test_drift's


def golden_events(case: str) -> list[dict[str, Any]]:
    import json
    return json.loads((GOLDEN / case / "2.19" / "events.json").read_text())


def test_a_host_key_mitogen_refused_is_told_by_a_plain_run_of_that_host_alone(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from agent.adapters.state import StateDir
    from agent.config import load_config
    from agent.core.hostkeys import MITOGEN_KEY_LINE
    from agent.cycle import detect
    from agent.cycle.source import Source

    plain = golden_events("host_key_changed")
    mitogen = golden_events("host_key_changed")
    for event in mitogen:
        if event["event"] == "runner_on_unreachable":
            event["event_data"]["res"]["msg"] = ("Host key checking is enabled, and SSH "
                                                 "reported an unrecognized or mismatching "
                                                 "host key.")
    runs: list[PlaybookRun] = []

    def run_playbook(run: PlaybookRun, *args: Any, **kwargs: Any) -> RunResult:
        runs.append(run)
        return RunResult(4 if run.ident.endswith("-refused") else 2, "failed",
                         plain if run.ident.endswith("-refused") else mitogen)

    monkeypatch.setattr(detect, "run_playbook", run_playbook)
    config_file = tmp_path / "agent.yml"
    config_file.write_text(f"repo: {{url: 'file:///nowhere', branch: main}}\n"
                           f"state_dir: {tmp_path / 'state'}\nplaybooks: [site.yml]\n")
    state = StateDir(tmp_path / "state")
    state.ensure()
    targets = detect.Targets(("site.yml",), Path(TREE) / "inventory.yml", ("web1", "web2"),
                             "pets")

    reports = detect.check_drift(load_config(config_file), Source("0" * 40, Path(TREE)),
                                 targets, state, "k")

    assert [(r.ident, r.limit) for r in runs] == [("k-check-0", "pets"), ("k-refused", "web2")]
    assert reports["web2"].status == "unreachable"
    assert reports["web2"].message.startswith("host key changed: [127.0.97.12]:2222 now sends ")
    assert reports["web2"].message != MITOGEN_KEY_LINE
    assert reports["web1"].status == "drifted"
