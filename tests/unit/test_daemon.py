"""agent.daemon.service's pure parts: when a cycle is due, how long to back off, shutdown guards,
and the daemon section of the config."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from agent.config import Config, Overrides, RepoConfig, parse_config
from agent.daemon.service import Inputs, backoff_delay, cycle_due, until_cancelled
from agent.errors import ConfigError

CONFIG = Config(repo=RepoConfig(url="file:///srv/git/pets.git"))
BASE = Inputs(CONFIG, "a" * 40, (), None)


def test_first_cycle_is_due():
    assert cycle_due(None, BASE, None, 900, forced=False) == "first cycle"


def test_nothing_new_within_the_check_interval_is_not_due():
    assert cycle_due(BASE, replace(BASE), 899.0, 900, forced=False) is None


@pytest.mark.parametrize(("change", "reason"), [
    ({"sha": "b" * 40}, "new source commit"),
    ({"approvals": ("p1.json@1",)}, "new host approvals"),
    ({"pause": (("by", "alice"),)}, "new pause"),
    ({"config": replace(CONFIG, limit="web1")}, "new config"),
])
def test_a_changed_input_makes_a_cycle_due_at_once(change, reason):
    assert cycle_due(BASE, replace(BASE, **change), 1.0, 900, forced=False) == reason


def test_the_check_interval_makes_a_cycle_due():
    assert cycle_due(BASE, BASE, 900.0, 900, forced=False) == "900s since the last cycle"


def test_run_now_forces_a_cycle():
    assert cycle_due(BASE, BASE, 1.0, 900, forced=True).startswith("asked for")


def test_backoff_grows_exponentially_is_capped_and_jittered():
    assert backoff_delay(1, 60, 1800, lambda: 0.0) == 60  # half of 120, no jitter
    assert backoff_delay(1, 60, 1800, lambda: 1.0) == 120
    assert backoff_delay(3, 60, 1800, lambda: 1.0) == 480
    assert backoff_delay(50, 60, 1800, lambda: 1.0) == 1800
    assert 900 <= backoff_delay(50, 60, 1800, lambda: 0.5) <= 1800


def test_cancelled_cycle_runs_no_new_step_but_records_pending_applies():
    ran: list[str] = []
    cancelled = [False]

    def step(name: str):
        return lambda c: ran.append(name)

    check, record = step("check"), step("record applies")
    guarded = until_cancelled((check, record), lambda: cancelled[0], keep=(record,))
    pending = SimpleNamespace(pending=["interrupted apply"])
    guarded[0](pending)
    cancelled[0] = True
    guarded[0](pending)
    guarded[1](SimpleNamespace(pending=[]))
    guarded[1](pending)
    assert ran == ["check", "record applies"]


def daemon_config(section: object) -> Config:
    return parse_config({"repo": {"url": "file:///srv/git/pets.git"}, "daemon": section},
                        "agent.yml", Overrides())


def test_daemon_defaults():
    d = daemon_config(None).daemon
    assert (d.fetch_interval, d.check_interval, d.splay, d.backoff_max) == (60, 900, 30, 1800)


def test_daemon_durations_are_read():
    d = daemon_config({"fetch_interval": "1s", "check_interval": "5s", "splay": 0,
                       "backoff_max": "2m"}).daemon
    assert (d.fetch_interval, d.check_interval, d.splay, d.backoff_max) == (1, 5, 0, 120)


@pytest.mark.parametrize(("section", "problem"), [
    ({"fetch_intervl": "1m"}, "agent.yml: daemon.fetch_intervl: unknown key; did you mean "
                              "daemon.fetch_interval?"),
    ({"splay": "soon"}, "agent.yml: daemon.splay: expected a duration like \"15m\", got 'soon'"),
    ({"fetch_interval": 0}, "agent.yml: daemon.fetch_interval: must be more than 0"),
    ({"fetch_interval": "10m", "check_interval": "1m"},
     "agent.yml: daemon.check_interval: is shorter than daemon.fetch_interval"),
    ("often", "agent.yml: daemon: expected a mapping, got a string"),
])
def test_daemon_config_errors_name_the_key_and_the_fix(section, problem):
    with pytest.raises(ConfigError) as e:
        daemon_config(section)
    assert any(p.startswith(problem) for p in e.value.problems), e.value.problems


def test_a_reload_while_a_stall_is_told_makes_the_next_tick_retry(tmp_path, monkeypatch):
    """SIGHUP retries a stall at once, even when it lands while the stall is being told."""
    from pathlib import Path

    import yaml

    from agent.config import load_config
    from agent.daemon.service import Daemon
    from agent.errors import StalledError

    path = Path(tmp_path / "agent.yml")
    path.write_text(yaml.safe_dump({
        "repo": {"url": "file:///srv/git/pets.git"}, "state_dir": str(tmp_path / "state"),
        "notify": {"targets": [{"url": "http://127.0.0.1:9/hook", "format": "cloudevents"}]}}))
    config = load_config(path)
    daemon = Daemon(path, config, env={})
    told: list[str] = []

    def tell_while_reloaded(config: Config, e: StalledError) -> None:
        told.append(str(e))
        if len(told) == 1:
            daemon.reload()  # SIGHUP, handled by the main thread meanwhile

    monkeypatch.setattr(daemon, "_tell_stall", tell_while_reloaded)

    daemon._stall(config, None, StalledError("branch 'main' not found"))
    assert daemon.stalled_on is None  # the reload's reset stands: the next tick fetches again
    daemon._stall(config, None, StalledError("branch 'main' not found"))

    assert daemon.stalled_on == (config, None) and len(told) == 2
    daemon._stall(config, None, StalledError("branch 'main' not found"))
    assert len(told) == 2  # the same stall again: told once
