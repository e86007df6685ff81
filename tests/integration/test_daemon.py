"""`petkeeper daemon` as a real process: real Git remote, real SSH host, real notify socket."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
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

from agent.adapters.masters import daemon_folder
from agent.core.ssh_masters import host_folder_name
from tests.conftest import (
    PLAYBOOK,
    GitRemote,
    pet_hosts,
    pets_repo_files,
    proc_file,
    settle,
    write_agent_config,
)
from tests.unit.test_cli import Run, cli  # noqa: F401 (the in-process fixture)

pytestmark = pytest.mark.hosts

MOTD = "cat /etc/motd"
PY_WARNING = re.compile(r"\b\w+Warning: ")  # how Python prints a warning (file:line: Kind: text)
# check_interval is long on purpose: every cycle these tests see was caused by what they did.
FAST = {"fetch_interval": "1s", "check_interval": "1h", "splay": 0}
# The pid makes this run's sleep tell apart from any other (GNU sleep takes fractions).
SLOW_SECONDS = f"120.{os.getpid()}"
SLOW_TASK = f"""\
    - name: Take a while
      ansible.builtin.command: sleep {SLOW_SECONDS}
      when: not ansible_check_mode
      changed_when: false
"""


class Daemon:
    """`python -m agent daemon` in a child process, with a notify socket bound by the test.

    Python's warnings are errors in it, except DeprecationWarnings, which are printed: Python
    3.12+ warns on fork() in a threaded process and cannot make that warning an error (CPython
    clears it). The fixture fails a test whose daemon printed any."""

    def __init__(self, config: Path, tmp: Path, **env: str) -> None:
        self.config, self.log = config, tmp / "daemon.log"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(tmp / "notify.sock"))
        self.sock.setblocking(False)
        self.messages: list[str] = []
        # Read as systemd does, all the time: the socket's queue holds only a few datagrams
        # (net.unix.max_dgram_qlen), which watchdog pings alone fill within seconds.
        self.lock, self.reading = threading.Lock(), True
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")},
               **env}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-W", "error", "-W", "always::DeprecationWarning", "-m",
                 "agent", "--config", str(config), "daemon"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env={**env, "NOTIFY_SOCKET": str(tmp / "notify.sock")})

    def _read(self) -> None:
        while self.reading:
            if select.select([self.sock], [], [], 0.2)[0]:
                self._drain()

    def _drain(self) -> None:
        with self.lock, contextlib.suppress(BlockingIOError):
            while True:
                self.messages.append(self.sock.recv(4096).decode())

    def notified(self) -> list[str]:
        self._drain()  # what came since the reader's last look, too
        return list(self.messages)

    def text(self) -> str:
        return self.log.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.reading = False
        self.reader.join(10)
        self.sock.close()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(config: Path, **env: str) -> Daemon:
        started.append(Daemon(config, tmp_path, **env))
        return started[-1]

    yield start
    for daemon in started:
        daemon.close()
    for daemon in started:
        warned = [line for line in daemon.text().splitlines() if PY_WARNING.search(line)]
        assert not warned, "the daemon printed Python warnings:\n" + "\n".join(warned)


def wait_for(what: str, predicate: Callable[[], Any], daemon: Daemon, timeout: float = 240):
    """Poll PREDICATE until it holds; generous deadline: Ansible runs are slow on a busy host."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert daemon.proc.poll() is None, f"daemon exited while waiting for {what}:\n" \
            f"{daemon.text()}"
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}; daemon log:\n{daemon.text()}")


def last_run(state: Path) -> dict[str, Any]:
    with contextlib.suppress(FileNotFoundError, ValueError):
        status = json.loads((state / "status.json").read_text())
        return {**status["last_run"], "hosts": status["hosts"]}
    return {}


def new_cycle(state: Path, before: str | None, **expect: Any) -> Callable[[], dict | None]:
    """A predicate: a cycle other than BEFORE finished, with EXPECT's values."""
    def done() -> dict | None:
        run = last_run(state)
        if run.get("run_id") in (None, before):
            return None
        return run if all(run.get(k) == v for k, v in expect.items()) else None
    return done


@pytest.fixture
def pets(host_pool, remote: GitRemote, tmp_path: Path) -> Path:
    """alpha converged (settled); the policy would apply anything (default: auto)."""
    files = pets_repo_files(pet_hosts(host_pool, "alpha"))
    remote.commit({**files, "petkeeper/policy.yml": yaml.safe_dump({"default": "auto"})})
    settle(host_pool, "alpha")
    return write_agent_config(tmp_path / "agent.yml", remote.url, tmp_path / "state", host_pool,
                              limit="alpha", daemon=FAST)


def test_daemon_stalls_on_bad_input_then_cycles_on_commits_pauses_resumes_reloads_and_stops(
        host_pool, remote, tmp_path, start_daemon, cli: Run):  # noqa: F811
    state = tmp_path / "state"
    settle(host_pool, "alpha", "beta")  # converged: the first cycle finds them clean
    remote.commit({"README.md": "not yet\n"}, branch="other")  # no main branch yet
    pets = write_agent_config(tmp_path / "agent.yml", remote.url, state, host_pool,
                              daemon=FAST)  # limit: pets, the inventory's group
    # The plain strategy's kept SSH masters, one folder per host (Mitogen's shared ones:
    # test_accelerator; docs/daemon.md, "Kept SSH connections").
    agent_yml = yaml.safe_load(pets.read_text())
    pets.write_text(yaml.safe_dump({**agent_yml, "ansible": {**agent_yml["ansible"],
                                                              "accelerator": "off"}}))
    # tmp_path is too deep for SSH sockets under state/ssh: the fallback folder in /tmp.
    masters = daemon_folder(state)[0]
    c = ("--config", str(pets))
    daemon = start_daemon(pets, WATCHDOG_USEC="1000000")
    wait_for("READY=1", lambda: "READY=1\nSTATUS=waiting for the first cycle"
             in daemon.notified(), daemon, timeout=90)

    # Stalled input: reported once, the service stays alive (watchdog pings), no cycle ran.
    wait_for("the stall", lambda: "stalled, a person must fix this" in daemon.text(), daemon,
             timeout=240)
    wait_for("watchdog pings", lambda: daemon.notified().count("WATCHDOG=1") >= 3, daemon,
             timeout=60)  # a few fetch intervals pass meanwhile
    [stalled] = [x for x in daemon.text().splitlines() if "stalled" in x]
    assert "branch 'main' not found" in stalled and "set repo.branch" in stalled
    assert any(m.startswith("STATUS=stalled: ") for m in daemon.notified())
    assert not (state / "status.json").exists()

    # Retried when the source changes: the first cycle, of the fixed source (alpha and beta);
    # the policy would apply anything (default: auto).
    files = pets_repo_files(pet_hosts(host_pool, "alpha", "beta"))
    fixed = remote.commit({**files, "petkeeper/policy.yml": yaml.safe_dump({"default": "auto"})})
    first = wait_for("the first cycle, of the fixed source",
                     new_cycle(state, None, source_sha=fixed), daemon)
    assert first["exit_code"] == 0
    assert remote.log("alpha")[0] == "alpha: clean (0 changes, 1 check-blind)"
    wait_for("STATUS after the cycle", lambda: any(
        m.startswith(f"STATUS=run {first['run_id']}: exit 0, 2 clean") for m in
        daemon.notified()), daemon, timeout=60)
    # Each host's SSH connection stays open for the next cycle: one master each, in the
    # private folder, said once in the log.
    assert daemon.text().count("too long for SSH control sockets") == 1
    assert masters.stat().st_mode & 0o777 == 0o700
    [alpha_master] = master_pids(masters, "alpha")
    [beta_master] = master_pids(masters, "beta")
    assert alive_master(alpha_master) and alive_master(beta_master)

    # A hand edit, a pause, then a commit: a cycle of the new commit (usually the only one
    # after the pause; the fetch every second may see the pause alone first), paused.
    host_pool.run("alpha", "echo 'edited by hand' >> /etc/motd")
    code, out, err = cli(*c, "pause", "--reason", "swapping disks")
    assert code == 0 and "paused applies" in out, err
    # The commit also takes beta out of the inventory: its master is closed, alpha's kept.
    sha = remote.commit({"README.md": "pets\n", "inventory/hosts.yml": pets_repo_files(
        pet_hosts(host_pool, "alpha"))["inventory/hosts.yml"]}, "Describe the pets, not beta")
    paused = wait_for("a paused cycle of the new commit", new_cycle(
        state, first["run_id"], source_sha=sha), daemon, timeout=240)
    assert master_pids(masters, "alpha") == [alpha_master]
    assert not alive_master(beta_master) and not (masters / host_folder_name("beta")).exists()
    assert paused["hosts"]["alpha"]["status"] == "drifted" and paused["applies"] == []
    plan = paused["hosts"]["alpha"]["plan"]
    assert plan["action"] == "wait" and plan["mode"] == "auto"  # auto would apply it
    assert plan["reason"].startswith("paused by ") and plan["reason"].endswith(
        ": swapping disks")
    assert paused["paused"]["reason"] == "swapping disks"
    assert "edited by hand" in host_pool.run("alpha", MOTD).stdout
    assert "paused by" in daemon.text() and "nothing is applied" in daemon.text()
    wait_for("STATUS after the paused cycle", lambda: any(
        m.endswith("; paused: swapping disks") for m in daemon.notified()), daemon, timeout=60)
    assert json.loads(cli(*c, "status", "--json")[1])["paused"]["reason"] == "swapping disks"
    assert "swapping disks" in cli(*c, "status")[1]
    reported = yaml.safe_load(remote.show("petkeeper/hosts/alpha", "hosts/alpha.yml"))
    assert reported["paused"]["reason"] == "swapping disks" and reported["run_id"] == \
        paused["run_id"]
    assert "Petkeeper-Paused: swapping disks" in remote.log("alpha", fmt="%B%x00")[0]

    # run --now, while paused: the daemon's cycle runs at once and applies nothing either
    # (a CLI `run` of its own while paused: test_pause)
    code, out, err = cli(*c, "run", "--now")
    assert code == 0 and "asked the daemon" in out, err
    asked = wait_for("the cycle asked for", new_cycle(state, paused["run_id"]), daemon)
    assert "cycle due: asked for (petkeeper run --now)" in daemon.text()
    assert asked["applies"] == [] and asked["hosts"]["alpha"]["plan"]["action"] == "wait"
    assert "edited by hand" in host_pool.run("alpha", MOTD).stdout

    assert cli(*c, "resume")[0] == 0
    resumed = wait_for("an applying cycle", lambda: (r := last_run(state)).get("applies")
                       and r, daemon)
    assert resumed["applies"][0]["result"] == "converged"
    assert resumed["applies"][0]["approved_by"] == "policy: auto (default)"
    assert "edited by hand" not in host_pool.run("alpha", MOTD).stdout
    assert "paused" not in yaml.safe_load(remote.show("petkeeper/hosts/alpha", "hosts/alpha.yml"))
    # The check, the apply and the re-check of these cycles all went over the same master.
    assert master_pids(masters, "alpha") == [alpha_master]

    good = pets.read_text()
    pets.write_text(good + "daemon: {fetch_interval: soon}\n")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for("the reload error", lambda: "reload: keeping the running config" in daemon.text(),
             daemon, timeout=60)
    [line] = [x for x in daemon.text().splitlines() if "reload: keeping" in x]
    assert "daemon.fetch_interval: expected a duration" in line
    pets.write_text(good)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for("the reload", lambda: f"reloaded {pets}" in daemon.text(), daemon, timeout=60)

    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(30) == 0
    assert "STOPPING=1\nSTATUS=stopping" in daemon.notified()
    # Stop means stop: the master (it left the daemon's process group) is gone, its SSH
    # session on alpha ends, no process names the folder, and the folder is removed.
    assert not alive_master(alpha_master) and not masters.exists()
    assert "closed 1 kept SSH connection(s)" in daemon.text()
    assert [p for p in _pids() if f"ssh: {masters}".encode() in proc_file(p, "cmdline")] == []
    assert ansible_in(state / "trees") == []  # a master's cwd is the tree of its first run
    wait_for_gone("alpha's SSH session", lambda: host_sessions(host_pool, "alpha"))
    code, _, err = cli(*c, "run", "--now")
    assert code == 1 and "no daemon is running" in err


def test_sigterm_mid_apply_exits_promptly_and_leaves_no_ansible_behind(
        pets, remote, host_pool, tmp_path, start_daemon):
    state = tmp_path / "state"
    remote.commit({"site.yml": PLAYBOOK + SLOW_TASK}, "Add a slow task")
    host_pool.run("alpha", "echo 'edited by hand' >> /etc/motd")
    daemon = start_daemon(pets)
    try:
        wait_for("READY=1", lambda: any(m.startswith("READY=1") for m in daemon.notified()),
                 daemon, timeout=90)
        wait_for("the apply's sleep on alpha", lambda: sleeping(), daemon, timeout=150)
        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        # Bounded: well inside systemd's TimeoutStopSec, with room for a loaded machine.
        assert daemon.proc.wait(20) == 0, daemon.text()
        assert time.monotonic() - started < 20
        assert ansible_in(state / "trees") == [], daemon.text()
        assert "stopping: waiting for the current step to stop" in daemon.text()
    finally:
        for pid in sleeping():  # the remote command this test started outlives its SSH session
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def master_pids(folder: Path, host: str) -> list[int]:
    """The PIDs of the SSH masters kept in FOLDER for HOST, as `ssh -O check` tells them."""
    pids = []
    for sock in sorted((folder / host_folder_name(host)).glob("*")):
        answer = subprocess.run(["ssh", "-O", "check", "-o", f"ControlPath={sock}", "x"],
                                capture_output=True, text=True, timeout=30).stderr
        if m := re.search(r"Master running \(pid=(\d+)\)", answer):
            pids.append(int(m.group(1)))
    return pids


def alive_master(pid: int) -> bool:
    """Whether PID is a running SSH master (not gone, not a zombie, not a reused PID)."""
    return proc_file(pid, "cmdline").startswith(b"ssh: ")


def host_sessions(pool, name: str) -> list[int]:
    """The processes a test host's sshd runs for open connections (its children)."""
    pid = pool.hosts[name].pid
    return [int(c) for c in proc_file(pid, f"task/{pid}/children").split()]


def wait_for_gone(what: str, found: Callable[[], list[int]], timeout: float = 30) -> None:
    """Poll until FOUND() is empty (the far end of a closed connection ends on its own)."""
    deadline = time.monotonic() + timeout
    while (left := found()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"{what} still there: {left}"


def sleeping() -> list[int]:
    """PIDs of the playbook's sleep (the test hosts' processes are visible from here)."""
    cmdline = f"sleep\x00{SLOW_SECONDS}\x00".encode()
    return [pid for pid in _pids() if proc_file(pid, "cmdline") == cmdline]


def ansible_in(folder: Path) -> list[int]:
    root = str(folder.resolve()) + os.sep
    found = []
    for pid in _pids():
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/cwd").startswith(root):
                found.append(pid)
    return found


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]

