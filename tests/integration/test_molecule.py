"""The Molecule scenarios (molecule/default, molecule/drift) and the test host command line
they start and stop their hosts with (``python -m agent.testhosts start|stop``).

Each scenario runs as a person runs it, ``molecule test -s NAME`` from the repository root,
with its own ephemeral directory under ``tmp_path``. Whatever happens, every host a scenario
started is stopped afterwards by the PIDs it recorded; nothing is found by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Imported as a module: pytest would try to collect the names TestHost and TestHostPool.
from agent import testhosts

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent  # not resolved: a venv's python is a symlink
# A `molecule test` takes minutes: up to 5.5 (default) and 9 (drift) on 2 CPUs at load 7-11.
SCENARIO_TIMEOUT = 1200
CLI_TIMEOUT = 60
# The CLI tests' hosts. 127.0.83.1x and .2x are the scenarios'; other ranges are other tests'.
CLI_ADDRESSES = {"cli1": "127.0.83.31", "cli2": "127.0.83.32"}
PRINTED_KEYS = {"name", "address", "port", "pid", "unshare_pid", "identity_file", "known_hosts"}


@pytest.fixture(autouse=True)
def _needs_test_host_tools() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or not Path(testhosts.SSHD).exists():
        pytest.fail("these tests need root, unshare and /usr/sbin/sshd "
                    "(apt-get install openssh-server): run .ci/run or the README's setup")


# --- The Molecule scenarios ---------------------------------------------------------------


@pytest.mark.hosts
@pytest.mark.parametrize("scenario", ["default", "drift"])
def test_molecule_scenario_passes_and_leaves_no_host_running(
        scenario: str, tmp_path: Path) -> None:
    ephemeral = tmp_path / "molecule"
    hosts_dir = scenario_hosts_dir(ephemeral)
    try:
        rc, output = run_molecule(["test", "-s", scenario], ephemeral)
        assert rc == 0, f"molecule test -s {scenario} exited {rc}:\n{output[-20000:]}"
        # destroy.yml stopped the hosts and removed their folder.
        assert not hosts_dir.exists(), sorted(p.name for p in hosts_dir.iterdir())
        assert processes_mentioning(hosts_dir) == []
    finally:
        stop_recorded_hosts(hosts_dir)
        shutil.rmtree(hosts_dir, ignore_errors=True)


def scenario_hosts_dir(ephemeral: Path) -> Path:
    """Where the scenarios' create.yml keeps its hosts (molecule/default/vars/testhosts.yml)."""
    digest = hashlib.sha1(str(ephemeral).encode()).hexdigest()[:12]
    return Path(f"/tmp/petkeeper-molecule-{digest}")


def run_molecule(args: list[str], ephemeral: Path) -> tuple[int, str]:
    """Run molecule ARGS from the repository root; return its exit code and output. On
    timeout its whole process group is stopped (the hosts are not in it: see the caller)."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
           "MOLECULE_EPHEMERAL_DIRECTORY": str(ephemeral), "NO_COLOR": "1",
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "PY_COLORS": "0"}
    proc = subprocess.Popen([str(VENV_BIN / "molecule"), *args], cwd=REPO, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=SCENARIO_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop_process_group(proc)
        output, _ = proc.communicate()
        pytest.fail(f"molecule {' '.join(args)} took over {SCENARIO_TIMEOUT}s:\n"
                    f"{output[-20000:]}")
    return proc.returncode, output


def stop_process_group(proc: subprocess.Popen[str]) -> None:
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
            return


def stop_recorded_hosts(hosts_dir: Path) -> None:
    """Stop every host recorded in HOSTS_DIR (a scenario that failed before destroy)."""
    for state in sorted(hosts_dir.glob("*.json")):
        testhosts.stop_detached(hosts_dir, state.stem)


def processes_mentioning(folder: Path) -> list[int]:
    """Live processes whose command line names FOLDER: a test host's unshare does."""
    needle = str(folder).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(int(entry.name)):
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


# --- The test host command line -----------------------------------------------------------


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.testhosts", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT,
                          stdin=subprocess.DEVNULL)


def start(workdir: Path, name: str, *extra: str) -> dict[str, Any]:
    done = cli("start", "--workdir", workdir, "--name", name, "--address", CLI_ADDRESSES[name],
               *extra)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def stop(workdir: Path, name: str) -> dict[str, Any]:
    done = cli("stop", "--workdir", workdir, "--name", name)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def ssh(host: dict[str, Any], command: str) -> subprocess.CompletedProcess[str]:
    """Run COMMAND on HOST with the identity and known_hosts that `start` printed."""
    argv = ["ssh", "-i", host["identity_file"], "-p", str(host["port"]),
            "-o", f"UserKnownHostsFile={host['known_hosts']}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", f"root@{host['address']}",
            command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT,
                          stdin=subprocess.DEVNULL)


def port_open(host: dict[str, Any]) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex((host["address"], host["port"])) == 0


def alive(pid: int) -> bool:
    """Whether PID runs: a zombie has ended (an orphan's may wait a while for init)."""
    fields = proc_stat(pid)
    return bool(fields) and fields[0] != "Z"


def parent_pid(pid: int) -> int:
    return int(proc_stat(pid)[1])


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state, parent, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return []


def namespace_pids(pid: int) -> list[str]:
    """PID as seen from each PID namespace it is in, outermost first ("NSpid:" in status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return line.split()[1:]
    return []


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "hosts"
    yield folder
    if folder.exists():
        stop_recorded_hosts(folder)


@pytest.mark.hosts
def test_cli_host_outlives_its_starter_and_stop_ends_it(workdir: Path) -> None:
    first, second = start(workdir, "cli1"), start(workdir, "cli2")

    # Both `start` commands have exited; their hosts run on, in sessions of their own.
    for host, name in ((first, "cli1"), (second, "cli2")):
        assert set(host) == PRINTED_KEYS
        assert (host["name"], host["address"]) == (name, CLI_ADDRESSES[name])
        assert namespace_pids(host["pid"])[-1] == "1"  # the namespace's PID 1
        assert parent_pid(host["pid"]) == host["unshare_pid"]
        assert os.getsid(host["unshare_pid"]) == host["unshare_pid"]
        reached = ssh(host, "hostname")
        assert (reached.returncode, reached.stdout) == (0, f"{name}\n"), reached.stderr
    # One client key and one known_hosts for the folder, with both host keys.
    assert first["identity_file"] == second["identity_file"] == str(workdir / "client_key")
    assert first["known_hosts"] == second["known_hosts"] == str(workdir / "known_hosts")
    assert len((workdir / "known_hosts").read_text().splitlines()) == 2

    assert stop(workdir, "cli1") == {"name": "cli1", "stopped": True}

    assert not alive(first["pid"])
    assert not alive(first["unshare_pid"])
    assert not port_open(first)
    assert not (workdir / "cli1.json").exists()
    known = (workdir / "known_hosts").read_text()
    assert f"[{first['address']}]:{first['port']} " not in known
    assert f"[{second['address']}]:{second['port']} " in known
    assert ssh(second, "true").returncode == 0  # the other host is untouched

    assert stop(workdir, "cli2") == {"name": "cli2", "stopped": True}
    assert not port_open(second)
    assert not any(alive(second[k]) for k in ("pid", "unshare_pid"))


@pytest.mark.hosts
def test_cli_start_of_a_running_host_fails_and_leaves_it_untouched(workdir: Path) -> None:
    host = start(workdir, "cli1")
    state = (workdir / "cli1.json").read_bytes()

    again = cli("start", "--workdir", workdir, "--name", "cli1", "--address", host["address"])

    assert again.returncode == 1
    assert again.stdout == ""
    assert "cli1 is already running" in again.stderr
    assert (workdir / "cli1.json").read_bytes() == state
    assert alive(host["pid"])
    assert ssh(host, "hostname").stdout == "cli1\n"


@pytest.mark.hosts
def test_cli_start_on_a_taken_port_fails_without_a_host(workdir: Path) -> None:
    host = start(workdir, "cli1")

    taken = cli("start", "--workdir", workdir, "--name", "cli2", "--address", host["address"],
                "--port", str(host["port"]))

    assert taken.returncode == 1
    assert "already in use" in taken.stderr
    assert not (workdir / "cli2.json").exists()
    assert ssh(host, "hostname").stdout == "cli1\n"


@pytest.mark.hosts
def test_cli_stop_of_a_host_not_running_changes_nothing(workdir: Path) -> None:
    assert stop(workdir, "cli1") == {"name": "cli1", "stopped": False}
    assert not workdir.exists()

    host = start(workdir, "cli1")
    assert stop(workdir, "cli1")["stopped"] is True
    before = sorted(p.name for p in workdir.iterdir())
    assert stop(workdir, "cli1") == {"name": "cli1", "stopped": False}  # a second stop
    assert sorted(p.name for p in workdir.iterdir()) == before
    assert not port_open(host)


@pytest.mark.hosts
def test_cli_stop_never_signals_a_process_it_did_not_start(workdir: Path) -> None:
    """A state file whose PIDs now belong to someone else (PID reuse) signals nobody."""
    host = start(workdir, "cli1")
    assert stop(workdir, "cli1")["stopped"] is True
    bystander = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
    try:
        stale = {**host, "schema": testhosts.STATE_SCHEMA, "pid": bystander.pid,
                 "unshare_pid": bystander.pid, "root": str(workdir / "cli1"),
                 "host_key": "ssh-ed25519 AAAA"}
        (workdir / "cli1.json").write_text(json.dumps(stale))

        assert stop(workdir, "cli1") == {"name": "cli1", "stopped": False}

        assert bystander.poll() is None
        assert alive(bystander.pid)
        assert not (workdir / "cli1.json").exists()
    finally:
        bystander.kill()
        bystander.wait(timeout=CLI_TIMEOUT)


@pytest.mark.hosts
def test_cli_refuses_a_workdir_under_a_folder_the_hosts_overlay(tmp_path: Path) -> None:
    workdir = Path("/srv") / f"petkeeper-test-{tmp_path.name}"

    refused = cli("start", "--workdir", workdir, "--name", "cli1", "--address",
                  CLI_ADDRESSES["cli1"])

    assert refused.returncode == 1
    assert "cannot be under /srv" in refused.stderr
    assert not workdir.exists()
