"""Every child process can be stopped: ansible-inventory, ansible-galaxy and the repo's own
tests, each hanging with a child process of its own, are stopped with their whole tree at their
timeout and when the daemon gets SIGTERM: every PID is gone, the error is one line, the lock is
free.

No SSH host is needed: the pet is this machine through Ansible's local connection, and what
the playbook writes is a file in the test's folder. Timeouts are short (the inventory's 120s is
shortened in-process), so each case costs seconds. The Galaxy source that never answers is a
real server on 127.0.92.1 that accepts connections and says nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.adapters import inventory
from agent.adapters.process import ProcessStopped
from agent.adapters.runner import PlaybookRun
from agent.adapters.state import StateDir, cycle_lock
from agent.adapters.verify import run_host_tests
from agent.config import load_config
from agent.cycle.steps import RUN_STEPS, run_cycle
from agent.errors import AgentError
from tests.conftest import GitRemote, git, proc_file

pytestmark = pytest.mark.hosts  # root: the daemon and Ansible run as on a pet

SILENT_ADDRESS = "127.0.92.1"  # this module's address block
FAST = {"fetch_interval": "1s", "check_interval": "1h", "splay": 0}
# Long enough for ansible-inventory, ansible-galaxy or pytest to start their hanging child on
# a busy machine; short enough to keep each case cheap.
SHORT = 6


class Silent:
    """A TCP server that accepts every connection and never answers (keeps them open)."""

    def __init__(self) -> None:
        self.sock = socket.create_server((SILENT_ADDRESS, 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.held.append(self.sock.accept()[0])

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture(scope="module")
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


@pytest.fixture
def pet(tmp_path: Path) -> Callable[..., tuple[Path, GitRemote]]:
    """Make a repo for this machine as a local pet, with FILES on top; return its agent.yml
    (EXTRA keys on top) and remote."""
    def make(files: dict[str, str], executable: tuple[str, ...] = (),
             **extra: object) -> tuple[Path, GitRemote]:
        remote = GitRemote(tmp_path / "git")
        remote.write({
            "site.yml": yaml.safe_dump([{
                "name": "A local pet", "hosts": "all", "gather_facts": False,
                "tasks": [{"name": "Mark the pet", "ansible.builtin.copy": {
                    "content": "applied\n", "dest": str(tmp_path / "applied"),
                    "mode": "0644"}}]}]),
            "inventory/hosts.yml": yaml.safe_dump({"all": {"hosts": {"localpet": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable}}}}),
            "petkeeper/policy.yml": yaml.safe_dump({"default": "auto"}),
            **files})
        for path in executable:
            os.chmod(remote.work / path, 0o755)
        remote.commit({})
        config = {"repo": {"url": remote.url, "timeout": "30s"}, "playbooks": ["site.yml"],
                  "inventory": "inventory/hosts.yml", "limit": "localpet",
                  "state_dir": str(tmp_path / "state"), "daemon": FAST, **extra}
        (tmp_path / "agent.yml").write_text(yaml.safe_dump(config))
        return tmp_path / "agent.yml", remote
    return make


def hanging_inventory(pids: Path) -> dict[str, str]:
    return {"inventory/hang.sh": f"#!/bin/sh\nsleep 311 &\necho $$ $! > {pids}\nwait\n"}


def hanging_requirement(silent: Silent) -> dict[str, str]:
    return {"requirements.yml": yaml.safe_dump({"roles": [{
        "name": "hang", "src": f"git+http://{SILENT_ADDRESS}:{silent.port}/hang.git"}]})}


def hanging_tests(pids: Path) -> dict[str, str]:
    return {"tests/test_hang.py": (
        "import os, subprocess, time\n\n\n"
        "def test_hangs():\n"
        "    child = subprocess.Popen(['sleep', '313'])\n"
        f"    with open({str(pids)!r}, 'w') as f:\n"
        "        f.write(f'{os.getpid()} {child.pid}')\n"
        "    time.sleep(313)\n")}


def galaxy_tree(silent: Silent, state: Path) -> list[int]:
    """ansible-galaxy, the git it runs and git's HTTP helper, once the helper has connected."""
    url = f"{SILENT_ADDRESS}:{silent.port}".encode()
    found = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and
             (url in (cmd := proc_file(pid, "cmdline")) or str(state).encode() in cmd)]
    names = b" ".join(proc_file(pid, "cmdline") for pid in found)
    return found if silent.held and b"ansible-galaxy" in names and b"remote-http" in names \
        else []


def pids_in(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pids: list[int]) -> list[int]:
    def running(pid: int) -> bool:
        stat = proc_file(pid, "stat").rpartition(b")")[2].split()
        return bool(stat) and stat[0] != b"Z"
    return [pid for pid in pids if running(pid)]


def wait_for(what: str, predicate: Callable[[], Any], proc: subprocess.Popen[bytes] | None,
             log: Path | None = None, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert proc is None or proc.poll() is None, \
            f"the daemon exited before {what}:\n{log.read_text() if log else ''}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def assert_lock_free(state: Path) -> None:
    with cycle_lock(StateDir(state), "test: the lock is free"):
        pass
    assert not (state / "cycle.json").exists()


def cycle_error(config: Path) -> AgentError:
    """Run one cycle in this process; return the error it ended with."""
    started = time.monotonic()
    with pytest.raises(AgentError) as e:
        run_cycle(load_config(config), RUN_STEPS, "run")
    print(f"the cycle ended in {time.monotonic() - started:.1f}s: {e.value}")
    return e.value


# --- at the timeout ---------------------------------------------------------------------------

def test_an_inventory_script_that_hangs_is_stopped_with_its_child_at_the_timeout(
        pet, tmp_path, monkeypatch):
    pids = tmp_path / "pids"
    config, _ = pet(hanging_inventory(pids), ("inventory/hang.sh",),
                    inventory="inventory/hang.sh")
    monkeypatch.setattr(inventory, "INVENTORY_TIMEOUT", SHORT)  # 120s in real life

    error = cycle_error(config)

    tree = pids_in(pids)
    assert len(tree) == 2 and alive(tree) == []
    assert isinstance(error, ProcessStopped) and "\n" not in str(error)
    assert str(error).startswith(f"inventory/hang.sh: ansible-inventory: no answer within "
                                 f"{SHORT}s; stopped ansible-inventory (")
    assert f"hang.sh ({tree[0]})" in str(error) and f"sleep ({tree[1]})" in str(error)
    assert str(error).endswith("; check the inventory's dynamic sources (scripts, plugins)")
    assert_lock_free(tmp_path / "state")


def test_a_galaxy_source_that_never_answers_is_stopped_with_the_git_it_runs_at_the_timeout(
        pet, silent, tmp_path):
    config, _ = pet(hanging_requirement(silent), ansible={"timeout": f"{SHORT}s"})
    seen: list[int] = []
    watcher = threading.Thread(target=lambda: seen.extend(wait_for(
        "ansible-galaxy's git", lambda: galaxy_tree(silent, tmp_path / "state"), None)),
        daemon=True)
    watcher.start()

    error = cycle_error(config)

    watcher.join(10)
    assert len(seen) >= 3 and alive(seen) == []  # ansible-galaxy, git clone, git-remote-http
    assert "\n" not in str(error) and str(error).startswith(
        f"requirements.yml: ansible-galaxy role install: no answer within {SHORT}s; stopped "
        "ansible-galaxy (")
    assert "git (" in str(error) and "git-remote-http (" in str(error)
    assert not list((tmp_path / "state" / "galaxy").glob("*/roles"))  # no half-filled cache
    assert_lock_free(tmp_path / "state")


def test_the_repos_tests_that_hang_are_stopped_with_their_child_at_the_timeout(
        pet, tmp_path):
    pids = tmp_path / "pids"
    _, remote = pet(hanging_tests(pids))
    run = PlaybookRun(tree=remote.work, playbook="site.yml",
                      inventory=remote.work / "inventory/hosts.yml", limit="localpet",
                      check=False, ident="tests", timeout=SHORT)

    result = run_host_tests(run, remote.work / "tests", "localpet")

    tree = pids_in(pids)
    assert len(tree) == 2 and alive(tree) == []
    assert not result.passed and "\n" not in result.message
    assert result.message.startswith(f"localpet: post-apply tests (pytest tests): no answer "
                                     f"within {SHORT}s; stopped pytest (")
    assert f"({tree[0]})" in result.message and f"sleep ({tree[1]})" in result.message


# --- on SIGTERM to the daemon -----------------------------------------------------------------

@pytest.mark.parametrize("case", ["inventory", "galaxy", "tests"])
def test_sigterm_to_the_daemon_stops_the_hanging_step_and_all_it_started(
        case, pet, silent, tmp_path):
    pids, state, log = tmp_path / "pids", tmp_path / "state", tmp_path / "daemon.log"
    if case == "inventory":
        config, _ = pet(hanging_inventory(pids), ("inventory/hang.sh",),
                        inventory="inventory/hang.sh")
    elif case == "galaxy":
        config, _ = pet(hanging_requirement(silent))
    else:
        config, _ = pet(hanging_tests(pids))
    with open(log, "wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(config),
                                   "daemon"], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        tree = wait_for(f"the hanging {case}", lambda: galaxy_tree(silent, state) if
                        case == "galaxy" else (len(pids_in(pids)) == 2 and pids_in(pids)),
                        daemon, log)
        started = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, log.read_text()
        print(f"{case}: the daemon stopped in {time.monotonic() - started:.1f}s")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    text = log.read_text()
    assert alive(tree) == [], text
    what = {"inventory": "inventory/hang.sh: ansible-inventory: the agent is stopping; stopped",
            "galaxy": "requirements.yml: ansible-galaxy role install: the agent is stopping; "
                      "stopped ansible-galaxy (",
            "tests": "localpet: post-apply tests (pytest tests): the agent is stopping; "
                     "stopped pytest ("}[case]
    [stopped] = [line for line in text.splitlines() if what in line]  # logged once
    assert_lock_free(state)
    if case != "tests":
        # a foreground daemon's line: its time, then the level (docs/daemon.md)
        assert re.match(r"\S+ petkeeper: warning: cycle stopped: ", stopped), stopped
        return
    # The apply ran before its tests were stopped: its record, saying so, is committed.
    assert (tmp_path / "applied").read_text() == "applied\n"
    record = yaml.safe_load(git("--git-dir", str(state / "mirror.git"), "show",
                                "refs/petkeeper/queue/petkeeper/hosts/localpet:"
                                "applies/localpet.yml"))
    assert record["result"] == "converged" and not record["tests"]["passed"]
    assert record["tests"]["message"] in stopped

