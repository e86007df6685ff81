"""The daemon's file watch (issue 17): the daemon runs as the pet itself (no inventory: this
machine with the local connection), and its playbook manages files under the test's folder
only. The scheduled check is an hour away: every check these tests see was caused by the watch,
a commit, or the watch's grace."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from agent.cycle.detect import this_host_names
from tests.conftest import GitRemote, petkeeper
from tests.integration.test_daemon import Daemon, last_run, new_cycle, wait_for

WATCH = {"fetch_interval": "1s", "check_interval": "1h", "splay": 0, "watch_debounce": "1s",
         "watch_min_interval": "2s", "watch_max_delay": "10s", "watch_grace": "3s"}
DUE = "a check is due"  # the daemon's log line for each check the watch triggers


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
        remote: GitRemote, tmp_path: Path):
    pet = tmp_path / "pet"
    pet.mkdir()
    for name in ("motd", "app.conf"):  # converged already: the first cycle only checks
        (pet / name).write_text(f"managed {name}\n")
        (pet / name).chmod(0o644)
    remote.commit({"site.yml": playbook(pet, "motd", "app.conf"),
                   "petkeeper/policy.yml": yaml.safe_dump({"default": "auto"})})
    state = tmp_path / "state"
    config = tmp_path / "agent.yml"
    config.write_text(yaml.safe_dump({
        "repo": {"url": remote.url, "branch": "main", "timeout": "30s"},
        "playbooks": ["site.yml"], "state_dir": str(state), "daemon": WATCH,
        "ansible": {"timeout": "5m"}}))
    daemon = Daemon(config, tmp_path)
    try:
        _exercise(daemon, remote, pet, state, config)
    finally:
        daemon.close()


def _exercise(daemon: Daemon, remote: GitRemote, pet: Path, state: Path, config: Path) -> None:
    motd, app = pet / "motd", pet / "app.conf"
    wait_for("the first cycle", new_cycle(state, None, exit_code=0), daemon)
    wait_for("the watch", lambda: watch_info(state).get("paths") == 2, daemon, timeout=60)
    assert remote.log()[0].endswith("clean (0 changes)"), remote.log()

    # A hand edit: a drifted report, committed, naming the trigger; then the grace's correction,
    # whose own writes trigger nothing (counted at the end).
    commits = len(remote.log())
    began = time.monotonic()
    with motd.open("a") as f:
        f.write("edited by hand\n")
    seen = wait_for("the triggered report", triggered(remote, motd, "drifted", commits), daemon)
    print(f"\nhand edit to committed report: {time.monotonic() - began:.1f}s")
    assert "edited by hand" in motd.read_text()  # the correction waits the grace
    assert "Check triggered by a change of" in remote.log(fmt="%B%x00")[0]
    corrected = corrected_after(daemon, state, seen["run_id"])
    assert corrected["applies"] and motd.read_text() == "managed motd\n"

    # One burst, one check: deleted and re-created, then ten quick edits of another file.
    commits = len(remote.log())
    motd.unlink()
    motd.write_text("re-created by hand\n")
    for i in range(10):
        app.write_text(f"edit {i}\n")
    burst = wait_for("the burst's report", triggered(remote, motd, "drifted", commits), daemon)
    assert len(burst["changes"]) == 2
    corrected_after(daemon, state, burst["run_id"])
    assert motd.read_text() == "managed motd\n" and app.read_text() == "managed app.conf\n"

    # A commit that manages one more file: watched after its check.
    new = pet / "new.conf"
    remote.commit({"site.yml": playbook(pet, "motd", "app.conf", "new.conf")})
    wait_for("the new file converged", lambda: new.exists() and
             watch_info(state).get("paths") == 3, daemon)
    commits = len(remote.log())
    new.write_text("by hand\n")
    wait_for("the new file's report", triggered(remote, new, "drifted", commits), daemon)

    # Three changes by hand, three checks: the corrections triggered none.
    assert daemon.text().count(DUE) == 3, daemon.text()
    status = json.loads(petkeeper("--config", str(config), "status", "--json").stdout)
    assert status["watch"]["on"] and status["watch"]["paths"] == 3
    assert status["watch"]["last_trigger"]["path"] == str(new)
    text = petkeeper("--config", str(config), "status").stdout
    assert "watch: on, 3 path(s)" in text and str(new) in text


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
