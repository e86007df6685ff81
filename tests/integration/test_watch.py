"""The daemon's file watch (issue 17): the daemon runs as the pet itself (no inventory: this
machine with the local connection), and its playbook manages files under the test's folder
only. The scheduled check is an hour away: every check these tests see was caused by the watch,
a commit, or the watch's grace."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from agent.cli import main
from agent.cycle.detect import this_host_names
from tests.conftest import GitRemote
from tests.integration.test_daemon import Daemon, last_run, new_cycle, wait_for
from tests.receivers import HttpReceiver

WATCH = {"fetch_interval": "1s", "check_interval": "1h", "splay": 0, "watch_debounce": "1s",
         "watch_min_interval": "2s", "watch_max_delay": "10s", "watch_grace": "3s"}
DUE = "a check is due"  # the daemon's log line for each check the watch triggers
TOLD = ("drift.detected", "apply.succeeded")  # the events the test's webhook receives


def playbook(pet: Path, *names: str) -> str:
    tasks = "".join(f"""
    - name: Manage {name}
      ansible.builtin.copy:
        dest: {pet / name}
        content: "managed {name}\\n"
        mode: "0644"
""" for name in names)
    return f"- name: The pet\n  hosts: all\n  gather_facts: false\n  tasks:{tasks}"


def report(remote: GitRemote) -> dict:
    names = this_host_names()  # the host of the inventory the pet writes for itself
    host = names[1] if len(names) > 1 else names[0]
    return dict(yaml.safe_load(remote.show(f"petkeeper/hosts/{host}", f"hosts/{host}.yml")))


def triggered(remote: GitRemote, path: Path, status: str, after: int):
    """A predicate: a report commit newer than the first AFTER ones, triggered by PATH."""
    def seen() -> dict | None:
        if len(remote.log()) <= after:
            return None
        data = report(remote)
        wanted = f"check triggered by a change of {path}"
        return data if data.get("trigger") == wanted and data["status"] == status else None
    return seen


def test_a_hand_edit_of_a_managed_file_is_checked_and_reported_within_seconds(
        remote: GitRemote, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    pet = tmp_path / "pet"
    pet.mkdir()
    # Converged already, new.conf too (a later commit starts to manage it): the daemon's only
    # apply is the grace's correction (an apply is four Ansible runs: the suite's budget).
    for name in ("motd", "app.conf", "new.conf"):
        (pet / name).write_text(f"managed {name}\n")
        (pet / name).chmod(0o644)
    remote.commit({"site.yml": playbook(pet, "motd", "app.conf"),
                   "petkeeper/policy.yml": yaml.safe_dump({"default": "auto"})})
    state = tmp_path / "state"
    config = tmp_path / "agent.yml"
    hook = HttpReceiver()
    config.write_text(yaml.safe_dump({
        "repo": {"url": remote.url, "branch": "main", "timeout": "30s"},
        "playbooks": ["site.yml"], "state_dir": str(state), "daemon": WATCH,
        "ansible": {"timeout": "5m"}, "notify": {"targets": [
            {"url": hook.url(), "format": "cloudevents", "events": list(TOLD)}]}}))
    daemon = Daemon(config, tmp_path)
    try:
        took = _exercise(daemon, remote, pet, state, hook)
        _status_shows_the_watch(config, pet / "new.conf", capsys)
        for seconds in took:  # after the status check: its capsys would swallow them
            print(f"hand edit to committed report: {seconds:.1f}s")
    finally:
        stop(daemon)
        hook.close()


def _exercise(daemon: Daemon, remote: GitRemote, pet: Path, state: Path,
              hook: HttpReceiver) -> list[float]:
    """Drive the daemon through the issue's cases; return the seconds from each hand edit to
    its committed report."""
    motd, app, new = pet / "motd", pet / "app.conf", pet / "new.conf"
    wait_for("the first cycle", new_cycle(state, None, exit_code=0), daemon)
    wait_for("the watch", lambda: watch_info(state).get("paths") == 2, daemon, timeout=60)
    assert remote.log()[0].endswith("clean (0 changes)"), remote.log()

    # One burst, one check: a managed file deleted and re-created by hand, then ten quick
    # edits of another. A drifted report, committed, names the burst's first change.
    commits = len(remote.log())
    began = time.monotonic()
    motd.unlink()
    motd.write_text("re-created by hand\n")
    for i in range(10):
        app.write_text(f"edit {i}\n")
    seen = wait_for("the triggered report", triggered(remote, motd, "drifted", commits), daemon)
    took = [time.monotonic() - began]
    assert len(seen["changes"]) == 2
    assert "Check triggered by a change of" in remote.log(fmt="%B%x00")[0]
    # The correction waits the grace, is checked again, applies; its writes trigger nothing.
    # The drift was told before the file was put back.
    assert motd.read_text() == "re-created by hand\n"
    corrected = corrected_after(daemon, state, seen["run_id"])
    assert corrected["applies"] and motd.read_text() == "managed motd\n"
    assert app.read_text() == "managed app.conf\n"
    told = wait_for("the drift and the apply told",
                    lambda: len(hook.accepted()) >= 2 and hook.accepted(), daemon)
    assert [r.event().get_type() for r in told] == [f"org.petkeeper.{t}" for t in TOLD]

    # A commit that manages one more file: watched after its check; a hand edit of it, in
    # place this time, is seen.
    remote.commit({"site.yml": playbook(pet, "motd", "app.conf", "new.conf")})
    wait_for("new.conf watched", lambda: watch_info(state).get("paths") == 3, daemon)
    commits = len(remote.log())
    began = time.monotonic()
    with new.open("a") as f:
        f.write("edited by hand\n")
    wait_for("the new file's report", triggered(remote, new, "drifted", commits), daemon)
    took.append(time.monotonic() - began)

    # Two changes by hand, two checks: the correction triggered none.
    assert daemon.text().count(DUE) == 2, daemon.text()
    return took


def _status_shows_the_watch(config: Path, last: Path, capsys: pytest.CaptureFixture[str]):
    capsys.readouterr()
    main(["--config", str(config), "status", "--json"])
    status = json.loads(capsys.readouterr().out)
    assert status["watch"]["on"] and status["watch"]["paths"] == 3
    assert status["watch"]["last_trigger"]["path"] == str(last)
    main(["--config", str(config), "status"])
    text = capsys.readouterr().out
    assert "watch: on, 3 path(s)" in text and str(last) in text


def stop(daemon: Daemon) -> None:
    """SIGTERM, as systemd stops it: a cycle the grace may have started is stopped with it."""
    if daemon.proc.poll() is None:
        daemon.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.proc.wait(60)
    daemon.close()


def corrected_after(daemon: Daemon, state: Path, run_id: str) -> dict:
    """The cycle after RUN_ID (status.json is written after its report is pushed), clean."""
    wait_for(f"status.json of {run_id}", lambda: last_run(state).get("run_id") == run_id,
             daemon, timeout=120)
    return dict(wait_for("the correction after the grace", new_cycle(
        state, run_id, exit_code=0), daemon))


def watch_info(state: Path) -> dict:
    try:
        return dict(json.loads((state / "watch.json").read_text()))
    except (FileNotFoundError, ValueError):
        return {}
