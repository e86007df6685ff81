"""The daemon's file watch: what is watched (agent.core.watchplan), when a burst makes a check
due, the kernel's events read back (agent.daemon.watch, a real inotify instance on tmp_path),
what the callback records, and how status and reports show it."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from agent.adapters.state import StateDir, read_managed_paths, write_managed_paths
from agent.config import Overrides, parse_config
from agent.core.watchplan import Debounce, build_watch_plan, limit_plan, select_watched
from agent.daemon.trigger import Triggers
from agent.daemon.watch import OVERFLOW, FileWatch
from agent.errors import ConfigError
from agent.operate.output import render_status, render_watch

PLUGIN = Path(__file__).parents[2] / "agent" / "plugins" / "petkeeper_facts.py"


def plugin() -> Any:
    spec = importlib.util.spec_from_file_location("petkeeper_facts", PLUGIN)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- what is watched -------------------------------------------------------------------------

def test_only_local_hosts_paths_are_watched_and_never_the_state_directory():
    records = {"pet": {"local": True, "paths": ["/etc/motd", "/var/lib/petkeeper/x", "rel",
                                                "/etc/../etc/hosts"]},
               "far": {"local": False, "paths": ["/etc/far"]}}

    watched = select_watched(records, None, ["/var/lib/petkeeper"])

    assert watched == {"/etc/motd": "pet", "/etc/hosts": "pet"}
    assert select_watched(records, False, []) == {}


def test_a_missing_path_is_watched_through_its_nearest_existing_ancestor():
    existing = {"/", "/etc", "/srv"}

    plan = build_watch_plan(["/etc/motd", "/etc/hosts", "/srv/app/conf.d/a.conf"],
                            lambda d: d in existing)

    assert plan == {"/etc": {"motd": {"/etc/motd"}, "hosts": {"/etc/hosts"}},
                    "/srv": {"app": {"/srv/app/conf.d/a.conf"}}}


def test_watch_max_keeps_the_folders_with_most_paths_and_counts_the_rest():
    plan = {"/a": {"1": {"/a/1"}, "2": {"/a/2"}}, "/b": {"1": {"/b/1"}}, "/c": {"1": {"/c/1"}}}

    kept, left = limit_plan(plan, 2)

    assert list(kept) == ["/a", "/b"] and left == 1
    assert limit_plan(plan, 3) == (plan, 0)


# --- when a burst makes a check due ----------------------------------------------------------

def test_a_burst_gives_one_check_debounce_seconds_after_its_last_event():
    d = Debounce(debounce=5, min_interval=60, max_delay=120)
    for t in range(10):
        d.event(100 + t * 0.1, "/etc/motd")

    assert d.take(104.8) is None
    assert d.take(105.9) == ("/etc/motd", 10)
    assert d.take(200) is None  # the burst is over: nothing pending


def test_a_steady_stream_cannot_postpone_the_check_past_max_delay():
    d = Debounce(debounce=5, min_interval=60, max_delay=120)
    t = 0.0
    while t < 119:
        d.event(t, "/etc/motd")
        assert d.take(t) is None
        t += 1
    d.event(119.5, "/etc/motd")

    assert d.take(120) == ("/etc/motd", 120)


def test_checks_are_at_most_one_per_min_interval():
    d = Debounce(debounce=5, min_interval=60, max_delay=120)
    d.event(0, "/a")
    assert d.take(5) == ("/a", 1)
    d.event(10, "/b")

    assert d.due_at() == 65 and d.take(64) is None
    assert d.take(65) == ("/b", 1)


def test_a_dropped_burst_triggers_nothing():
    d = Debounce(debounce=5, min_interval=60, max_delay=120)
    d.event(0, "/a")
    d.drop()

    assert d.due_at() is None and d.take(1000) is None


# --- the kernel's events ---------------------------------------------------------------------

@pytest.fixture
def watch():
    w = FileWatch()
    yield w
    w.close()


def watched(w: FileWatch, paths: list[Path]) -> None:
    assert w.update(build_watch_plan([str(p) for p in paths], os.path.isdir)) is None


def test_write_chmod_rename_over_and_delete_of_a_managed_file_are_seen(watch, tmp_path):
    managed, other = tmp_path / "motd", tmp_path / "other"
    managed.write_text("a\n")
    watched(watch, [managed])

    for change in (lambda: managed.write_text("b\n"), lambda: managed.chmod(0o600),
                   lambda: (other.write_text("c\n"), other.replace(managed)),
                   managed.unlink, lambda: managed.write_text("again\n")):
        change()
        changed, _ = watch.read()
        assert str(managed) in changed

    (tmp_path / "unmanaged").write_text("x")
    assert watch.read() == ([], False)


def test_a_path_whose_folder_appears_is_watched_after_the_rebuild(watch, tmp_path):
    managed = tmp_path / "conf.d" / "a.conf"
    watched(watch, [managed])

    managed.parent.mkdir()
    changed, rebuild = watch.read()
    assert changed == [str(managed)] and rebuild
    watched(watch, [managed])
    managed.write_text("x")

    assert watch.read()[0] == [str(managed)]
    assert watch.watches == 1  # the parent's watch went with the rebuild


def test_a_deleted_watched_folder_asks_for_a_rebuild(watch, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "f").write_text("x")
    watched(watch, [folder / "f"])

    (folder / "f").unlink()
    folder.rmdir()
    changed, rebuild = watch.read()

    assert str(folder / "f") in changed and rebuild and OVERFLOW not in changed


# --- what the callback records ---------------------------------------------------------------

@pytest.mark.parametrize(("action", "args", "res", "expected"), [
    ("ansible.builtin.copy", {"dest": "/etc/motd", "content": "x"}, {}, ["/etc/motd"]),
    ("file", {"path": "/etc/ssh/", "state": "directory"}, {}, ["/etc/ssh"]),
    ("ansible.builtin.lineinfile", {"name": "/etc/hosts"}, {}, ["/etc/hosts"]),
    ("template", {"dest": "relative/path"}, {}, []),
    ("user", {"name": "bob"}, {}, ["/etc/group", "/etc/passwd", "/etc/shadow"]),
    ("group", {"name": "ops"}, {}, ["/etc/group", "/etc/gshadow"]),
    ("community.general.sudoers", {"name": "ops"}, {}, ["/etc/sudoers.d/ops"]),
    ("ansible.posix.authorized_key", {"user": "root"}, {"keyfile": "/root/.ssh/ak"},
     ["/root/.ssh/ak"]),
    ("ansible.builtin.sysctl", {"name": "vm.swappiness"}, {}, ["/etc/sysctl.conf"]),
    ("cron", {"name": "x", "cron_file": "backup"}, {}, ["/etc/cron.d/backup"]),
    ("ansible.builtin.command", {"cmd": "/bin/true"}, {}, []),
    ("ansible.builtin.service", {"name": "petkeeper-test-nothing"}, {},
     ["/etc/systemd/system/petkeeper-test-nothing.service",
      "/etc/systemd/system/petkeeper-test-nothing.service.d"]),
])
def test_the_callback_names_the_files_a_task_manages(action, args, res, expected):
    assert plugin().managed_paths(action, args, res) == expected


def test_package_tasks_watch_the_package_databases_that_exist():
    found = plugin().managed_paths("ansible.builtin.apt", {"name": "vim"}, {})

    assert found and all(os.path.exists(p) for p in found)


def test_each_hosts_managed_paths_are_kept_in_the_state_directory(tmp_path):
    state = StateDir(tmp_path)
    write_managed_paths(state, "web/1", {"paths": ["/etc/motd"], "local": True})
    (state.managed_dir / "broken.json").write_text("{")

    assert read_managed_paths(state) == {"web/1": {"paths": ["/etc/motd"], "local": True}}


# --- config, status ------------------------------------------------------------------------

def test_the_watch_keys_have_the_issues_defaults_and_names():
    d = parse_config({"repo": {"url": "file:///srv/pets.git"}}, "agent.yml", Overrides()).daemon

    assert (d.watch, d.watch_debounce, d.watch_min_interval, d.watch_max_delay, d.watch_grace,
            d.watch_max) == (None, 5, 60, 120, 300, 4096)
    with pytest.raises(ConfigError) as e:
        parse_config({"repo": {"url": "file:///srv/pets.git"},
                      "daemon": {"watch": "yes", "watch_max": 0}}, "agent.yml", Overrides())
    assert "daemon.watch: expected true or false" in str(e.value)
    assert "daemon.watch_max: expected a whole number >= 1" in str(e.value)


def test_status_shows_the_watch_and_escapes_its_path():
    status = {"last_run": {}, "hosts": {}, "watch": {
        "on": True, "paths": 3, "watches": 1, "problem": None,
        "last_trigger": {"at": "2026-12-01T22:00:00+00:00", "path": "/etc/mo\x1b[2Jtd"}}}

    text = render_status(status)

    assert "watch: on, 3 path(s) in 1 watched folder(s)" in text
    assert "last trigger 2026-12-01T22:00:00+00:00: /etc/mo" in text and "\x1b" not in text
    assert "watch: off (the daemon stopped)" in render_status(
        {"watch": {"on": False, "problem": "the daemon stopped"}})


# --- the daemon's side: triggers, its own applies, the grace ---------------------------------

@pytest.fixture
def made() -> Any:
    made: list[Triggers] = []
    yield made
    for triggers in made:
        triggers.close()


def triggers_on(made: list[Triggers], tmp_path: Path, **daemon: Any) -> tuple[Triggers, Path]:
    state = StateDir(tmp_path / "state")
    state.ensure()
    motd = tmp_path / "pet" / "motd"
    motd.parent.mkdir()
    motd.write_text("managed\n")
    write_managed_paths(state, "pet", {"paths": [str(motd)], "local": True})
    config = parse_config({"repo": {"url": "file:///srv/pets.git"}, "state_dir": str(state.root),
                           "daemon": {"watch_debounce": "5s", **daemon}}, "agent.yml",
                          Overrides())
    made.append(Triggers(config, state))
    return made[-1], motd


def test_a_change_triggers_a_check_after_the_debounce_and_status_names_it(made, tmp_path):
    triggers, motd = triggers_on(made, tmp_path)
    assert json.loads(triggers.state.watch_file.read_text())["paths"] == 1

    motd.write_text("by hand\n")
    assert not triggers.turn(100.0, busy=False)
    assert triggers.take() == (None, False)
    assert triggers.turn(105.0, busy=False)

    trigger, grace = triggers.take()
    assert trigger is not None and trigger["path"] == str(motd) and not grace
    saved = json.loads(triggers.state.watch_file.read_text())
    assert saved["on"] and saved["last_trigger"]["path"] == str(motd)
    triggers.close()
    assert json.loads(triggers.state.watch_file.read_text())["on"] is False


def test_events_of_the_daemons_own_apply_never_trigger_and_others_during_a_cycle_do(made, tmp_path):
    triggers, motd = triggers_on(made, tmp_path)

    triggers.cycle_started()
    motd.write_text("applied\n")
    triggers.turn(100.0, busy=True)
    triggers.cycle_ended([(99.5, 100.2)], held=False)
    triggers.turn(100.5, busy=False)
    assert not triggers.turn(1000.0, busy=False) and triggers.take() == (None, False)

    triggers.cycle_started()
    motd.write_text("by hand during a check\n")
    triggers.turn(2000.0, busy=True)
    triggers.cycle_ended([(1500.0, 1510.0)], held=False)
    triggers.turn(2000.5, busy=False)
    assert triggers.turn(2005.0, busy=False) and triggers.take()[0] is not None


def test_a_cycle_that_ended_without_a_result_drops_its_events(made, tmp_path):
    triggers, motd = triggers_on(made, tmp_path)
    triggers.cycle_started()
    motd.write_text("x\n")
    triggers.turn(10.0, busy=True)
    triggers.cycle_ended(None, held=False)

    assert not triggers.turn(11.0, busy=False) and not triggers.turn(100.0, busy=False)


def test_a_held_correction_is_due_when_the_grace_is_over(made, tmp_path):
    triggers, _ = triggers_on(made, tmp_path, watch_grace="30s")
    triggers.cycle_started()
    triggers.cycle_ended([], held=True)
    now = time.monotonic()

    assert not triggers.turn(now + 1, busy=False)
    assert triggers.turn(now + 31, busy=False)
    assert triggers.take() == (None, True)


def test_watch_off_watches_nothing(made, tmp_path):
    triggers, motd = triggers_on(made, tmp_path, watch=False)
    motd.write_text("by hand\n")

    assert triggers.fds() == [] and not triggers.turn(1000.0, busy=False)
    assert json.loads(triggers.state.watch_file.read_text())["on"] is False


def test_hosts_reached_over_ssh_only_leave_the_watch_off_and_say_why(made, tmp_path, caplog):
    triggers, _ = triggers_on(made, tmp_path)
    write_managed_paths(triggers.state, "pet", {"paths": ["/etc/motd"], "local": False})
    caplog.set_level("WARNING", "agent.daemon.trigger")

    triggers.rebuild()
    assert render_watch(triggers.info) == [
        "watch: off (no host is managed with the local connection (hosts reached over SSH "
        "cannot be watched: the scheduled check finds their drift))"]
    assert not caplog.records  # the default: nothing to warn of
    forced = dataclasses.replace(triggers.config, daemon=dataclasses.replace(
        triggers.config.daemon, watch=True))
    triggers.reconfigure(forced)
    triggers.rebuild()
    assert triggers.info["on"] and triggers.info["problem"].startswith("daemon.watch is on, but")
    assert len(caplog.records) == 1  # asked for and impossible: one warning
    (triggers.state.managed_dir / "pet.json").unlink()
    triggers.rebuild()
    assert triggers.info["problem"].startswith("nothing recorded yet")


def test_a_reload_turns_the_watch_on_and_off(made, tmp_path):
    triggers, motd = triggers_on(made, tmp_path, watch=False)
    on = dataclasses.replace(triggers.config, daemon=dataclasses.replace(
        triggers.config.daemon, watch=None))

    triggers.reconfigure(on)
    motd.write_text("by hand\n")
    triggers.turn(0.0, busy=False)
    assert triggers.fds() and triggers.turn(5.0, busy=False)
    triggers.reconfigure(dataclasses.replace(on, daemon=dataclasses.replace(on.daemon,
                                                                             watch=False)))
    assert triggers.fds() == [] and triggers.info["on"] is False


def test_a_triggered_cycle_holds_the_correction_and_the_grace_cycle_applies(
        made, tmp_path, monkeypatch):
    from agent.daemon import service

    triggers, motd = triggers_on(made, tmp_path, watch_grace="30s")
    daemon = service.Daemon(tmp_path / "agent.yml", triggers.config, env={})
    daemon.triggers = triggers
    ran: list[tuple[Any, ...]] = []

    def run_isolated(work: Any, args: tuple[Any, ...], stop: Any) -> dict[str, Any]:
        ran.append(args[1:3])  # trigger, hold (then the kept SSH masters)
        return {"status": "ok", "fetch_error": None, "applied": [], "held": args[2]}

    monkeypatch.setattr(service, "run_isolated", run_isolated)
    monkeypatch.setattr(daemon, "_peek", lambda config: "a" * 40)
    daemon.tick()  # the first cycle: nothing triggered it, nothing is held
    motd.write_text("by hand\n")
    triggers.turn(0.0, busy=False)
    assert triggers.turn(5.0, busy=False)
    daemon.tick()

    assert ran == [(None, False), (f"check triggered by a change of {motd}", True)]
    assert triggers.grace_at is not None
    assert triggers.turn(triggers.grace_at + 0.1, busy=False)
    daemon.tick()  # the grace is over: a cycle that may apply, re-checked first
    assert ran[-1] == (None, False)
    daemon.tick()  # and then nothing is due
    assert len(ran) == 3
