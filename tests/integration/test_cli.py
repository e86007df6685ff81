"""The command line as a sysadmin meets it in the first hour: real hosts, a real Git remote, real
Ansible; commands run in-process through agent.cli.main (and under a pseudo-terminal where the
terminal is the point). One converged pair of hosts serves the whole module."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    GitRemote,
    git,
    pet_hosts,
    pets_repo_files,
    settle,
    write_agent_config,
)
from tests.unit.test_cli import Run, cli  # noqa: F401 (the in-process fixture)

pytestmark = pytest.mark.hosts
MOTD = "cat /etc/motd"


@dataclass(frozen=True)
class Pets:
    config: Path
    remote: GitRemote
    tmp: Path

    @property
    def state(self) -> Path:
        return self.tmp / "state"


@pytest.fixture(scope="module")
def pets(host_pool, tmp_path_factory: pytest.TempPathFactory) -> Pets:
    """alpha and beta converged to a small repo (settled), once for the module."""
    tmp = tmp_path_factory.mktemp("cli")
    remote = GitRemote(tmp / "git")
    remote.commit(pets_repo_files(pet_hosts(host_pool, "alpha", "beta")))
    settle(host_pool, "alpha", "beta")
    return Pets(write_agent_config(tmp / "agent.yml", remote.url, tmp / "state", host_pool),
                remote, tmp)


@pytest.fixture
def as_alice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.cli.approver_name", lambda: "alice")


def snapshot(pets: Pets) -> tuple[bytes, bytes, str, list[str]]:
    """What a refused command must leave as it was: status, plans, the remote, the runs."""
    runs = pets.state / "runner" / "artifacts"
    return (read(pets.state / "status.json"), read(pets.state / "plans.json"),
            pets.remote.refs(), sorted(os.listdir(runs)) if runs.exists() else [])


def read(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def one_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("petkeeper: error: "), err
    return lines[0].removeprefix("petkeeper: error: ")


def test_plan_approve_several_run_then_status_and_history_tell_the_story(
        pets: Pets, host_pool, cli: Run, as_alice):  # noqa: F811
    c = ("--config", str(pets.config))
    for host in ("alpha", "beta"):
        host_pool.run(host, "echo 'edited by hand' >> /etc/motd")
    # plan --json as in `petkeeper plan --json 2>/dev/tty | jq`: no progress on the terminal
    code, out, terminal = run_on_terminal(*c, "plan", "--json")
    assert code == 2 and terminal == ""
    ids = {host: plan["plan_id"] for host, plan in json.loads(out)["plans"].items()}

    # apply with an id the last check never made: refused at once, before any check runs
    before = snapshot(pets)
    code, out, err = cli(*c, "apply", "0123456789abcdef")
    assert (code, out) == (1, "")
    assert one_error(err) == (
        f"apply 0123456789abcdef: not a plan of the last check; plans waiting: alpha "
        f"{ids['alpha']} (wait), beta {ids['beta']} (wait); run petkeeper plan to see the "
        "current ones")
    assert snapshot(pets) == before

    # approve several plans at once: one approval record each
    code, out, _ = cli(*c, "approve", ids["alpha"], ids["beta"], "--comment", "hands off")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"approved plan {ids['alpha']} for alpha as alice, until ")
    assert lines[1].startswith(f"approved plan {ids['beta']} for beta as alice, until ")
    assert [pets.remote.log(h)[0] for h in ("alpha", "beta")] == [
        f"alpha: plan {ids['alpha']} approved by alice",
        f"beta: plan {ids['beta']} approved by alice"]

    # run -q on a terminal: nothing on it (no progress line, no log)
    code, _, terminal = run_on_terminal(*c, "-q", "run")
    assert code == 0 and terminal == ""
    assert "edited by hand" not in host_pool.run("beta", MOTD).stdout

    # status: each host's own check and its last apply; JSON without placeholders
    code, out, _ = cli(*c, "status")
    assert code == 0
    for host in ("alpha", "beta"):
        i = out.splitlines().index(next(ln for ln in out.splitlines()
                                        if ln.startswith(f"{host}: clean")))
        applied = out.splitlines()[i + 1]
        assert applied.startswith("  last apply ") and applied.endswith(
            f": converged (plan {ids[host]}, approved by alice)"), out
    code, out, _ = cli(*c, "status", "--json")
    status = json.loads(out)
    assert "hosts" not in status["last_run"] and "plans" not in status["last_run"]
    assert status["last_run"]["reports"]["committed"] == {
        "alpha": ["hosts/alpha.yml", "applies/alpha.yml"],
        "beta": ["hosts/beta.yml", "applies/beta.yml"]}
    beta = status["hosts"]["beta"]
    assert beta["last_apply"]["result"] == "converged" and beta["checked_at"] >= \
        status["last_run"]["started"]

    # history: one fact per line, filtered, as JSON; an unknown host is an error
    code, out, _ = cli(*c, "history", "beta")
    lines = out.splitlines()
    assert code == 0 and len(lines) >= 4
    assert lines[1].split("  ")[1:3] == ["beta", f"apply of plan {ids['beta']}: converged, "
                                                 "approved by alice"]
    assert all(line.count("alice") <= 1 and "  beta  " in line for line in lines), out
    code, out, _ = cli(*c, "history", "--since", "1h", "-n", "3", "--json")
    entries = json.loads(out)
    assert code == 0 and len(entries) == 3
    assert [e["date"] for e in entries] == sorted((e["date"] for e in entries), reverse=True)
    code, out, err = cli(*c, "history", "gamma")
    assert (code, out) == (1, "")
    assert one_error(err) == (f"history: host 'gamma' has no report on petkeeper/hosts/gamma of "
                              f"{pets.remote.url}; hosts it has: alpha, beta")


def test_a_limit_or_playbook_the_repo_lacks_is_blamed_on_the_command_line(
        pets: Pets, cli: Run):  # noqa: F811
    c = ("--config", str(pets.config))
    before = snapshot(pets)

    code, _, err = cli(*c, "check", "--limit", "alpha,gamma")
    assert code == 1 and "ignoring" not in err
    assert one_error(err) == ("command line: --limit: 'gamma' matches no host or group of "
                              "inventory/hosts.yml, which has 2 host(s): alpha, beta; groups: "
                              "pets; fix the limit")
    code, _, err = cli(*c, "plan", "nope.yml")
    assert code == 1
    assert one_error(err).startswith("command line: PLAYBOOK #1: 'nope.yml' not found in the "
                                     "repository at this commit")
    assert snapshot(pets) == before


def run_on_terminal(*args: str) -> tuple[int, str, str]:
    """Run petkeeper ARGS with stderr on a pseudo-terminal 200 columns wide and stdout piped,
    as in `petkeeper check | less`: (exit code, stdout, what the terminal showed)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    shown: list[bytes] = []

    def read() -> None:  # drain the terminal as it goes, or a full buffer would block Ansible
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the last writer closed: EIO
                return
            if not chunk:
                return
            shown.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "agent", *args], stdout=subprocess.PIPE,
                              stderr=follower, stdin=subprocess.DEVNULL, text=True, timeout=300)
    finally:
        os.close(follower)
        reader.join(timeout=30)
        os.close(leader)
    return proc.returncode, proc.stdout, b"".join(shown).decode()


def test_progress_shows_on_the_terminal_only_and_never_in_json_or_piped_output(pets: Pets):
    # (plan --json and -q run on a terminal, which show nothing there, are in the story)
    code, out, terminal = run_on_terminal("--config", str(pets.config), "check")
    assert code in (0, 2), terminal
    assert "\r" not in out and "tasks done" not in out  # piped stdout: the report alone
    drawn = [part.removesuffix("\x1b[K") for part in terminal.split("\r") if "tasks done" in part]
    assert drawn, terminal
    assert any(p.startswith("check site.yml | ") and " | Keep the test pets | " in p
               for p in drawn), drawn
    assert terminal.endswith("\r\x1b[K")  # erased before the report is printed
    final = drawn[-1].split(" | ")
    assert final[-2].endswith("tasks done") and int(final[-2].split()[0]) >= 6  # 3 tasks x 2
    assert final[-1].count(":") == 1  # elapsed m:ss


def test_a_second_repository_on_the_same_state_dir_is_refused_until_adopted(
        pets: Pets, cli: Run, as_alice):  # noqa: F811
    moved = pets.tmp / "moved.git"
    git("clone", "--quiet", "--mirror", str(pets.remote.bare), str(moved))
    other = pets.tmp / "other.yml"
    data = yaml.safe_load(pets.config.read_text())
    other.write_text(yaml.safe_dump({**data, "repo": {**data["repo"], "url": f"file://{moved}"}}))
    cli("--config", str(pets.config), "history")  # the state is the first config's (if new)
    before = snapshot(pets)

    code, _, err = cli("--config", str(other), "check")
    assert code == 1
    assert one_error(err).startswith(f"{other}: repo.url: file://{moved} is not the repository "
                                     f"state_dir {pets.state} belongs to ({pets.remote.url}, ")
    assert snapshot(pets) == before

    code, out, _ = cli("--config", str(other), "adopt")
    assert code == 0
    assert out.startswith(f"{pets.state} now belongs to file://{moved} (was {pets.remote.url})")
    code, out, _ = cli("--config", str(other), "check", "--json")
    assert json.loads(out)["source_sha"] == pets.remote.rev("main")
    cli("--config", str(pets.config), "adopt")  # and back, for the tests after this one
