"""Shared test fixtures: real SSH test hosts, real bare Git remotes, agent configs."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.testhosts import TestHostPool


def _session_block() -> str:
    """The session pool's addresses: 127.0.82.x, and for each further pytest-xdist worker a
    block of its own (127.0.121.x for gw1, ...), so that workers never share a host. Modules
    with hosts of their own use their own blocks and run whole on one worker (--dist loadfile).
    The demo uses 127.0.80.x, the playbook tests 127.0.81.x."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    return "127.0.82" if worker == 0 else f"127.0.{120 + worker}"


BLOCK = _session_block()
ALPHA, BETA, GAMMA = f"{BLOCK}.11", f"{BLOCK}.12", f"{BLOCK}.13"
GHOST = f"{BLOCK}.99"  # nothing listens there: an unreachable host


class GitRemote:
    """A real bare repository, plus a clone to commit to it as a person would."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "remote.git"
        self.work = root / "work"
        git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        git("init", "--quiet", "--initial-branch=main", str(self.work))

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def commit(self, files: dict[str, str | None], message: str = "Change pets",
               branch: str = "main") -> str:
        """Write FILES (None deletes) in the clone, commit and push BRANCH; return the sha."""
        self.write(files)
        git("-C", str(self.work), "add", "--all")
        git("-C", str(self.work), "-c", "user.name=Admin", "-c", "user.email=admin@test.invalid",
            "commit", "--quiet", "--allow-empty", "-m", message)
        git("-C", str(self.work), "push", "--quiet", str(self.bare), f"HEAD:refs/heads/{branch}")
        return self.rev(branch)

    def write(self, files: Mapping[str, str | bytes | None]) -> None:
        """Write FILES into the clone (None deletes), without committing."""
        for path, content in files.items():
            target = self.work / path
            if content is None:
                target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content if isinstance(content, bytes) else content.encode())

    def rev(self, ref: str) -> str:
        return git("--git-dir", str(self.bare), "rev-parse", ref).strip()

    def has(self, ref: str) -> bool:
        r = subprocess.run(["git", "--git-dir", str(self.bare), "rev-parse", "--verify", "--quiet",
                            ref], capture_output=True, text=True)
        return r.returncode == 0

    def log(self, host: str | None = None, fmt: str = "%s",
            branches: str = "petkeeper/hosts") -> list[str]:
        """The reports of HOST's branch, or of every host's (merged by date), newest first."""
        refs = [f"refs/heads/{branches}/{host}"] if host else \
            self.refs_under(f"refs/heads/{branches}/")
        refs = [ref for ref in refs if self.has(ref)]
        if not refs:
            return []
        out = git("--git-dir", str(self.bare), "log", f"--format={fmt}", *refs)
        return [line for line in out.split("\x00" if "%x00" in fmt else "\n") if line.strip()]

    def show(self, ref: str, path: str) -> str:
        return git("--git-dir", str(self.bare), "show", f"{ref}:{path}")

    def refs(self) -> str:
        return git("--git-dir", str(self.bare), "for-each-ref")

    def refs_under(self, prefix: str) -> list[str]:
        return git("--git-dir", str(self.bare), "for-each-ref", "--format=%(refname)",
                   prefix).split()


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True,
                          timeout=60).stdout


PLAYBOOK = """\
- name: Keep the test pets
  hosts: all
  gather_facts: false
  roles:
    - role: motd
      tags: [motd]
  tasks:
    - name: Write the pet config
      ansible.builtin.copy:
        content: "mode={{ pet_mode }}\\n"
        dest: /etc/pet.conf
        mode: "0644"
      tags: [conf]
    - name: Refresh the package cache
      ansible.builtin.command: /bin/true
      tags: [conf]
"""
MOTD_ROLE = """\
- name: Write the message of the day
  ansible.builtin.copy:
    content: "{{ motd_text }}"
    dest: /etc/motd
    mode: "0644"
"""
MOTD_DEFAULTS = 'motd_text: "Managed by Petkeeper\\n"\npet_mode: steady\n'


def pets_repo_files(hosts: dict[str, tuple[str, int]]) -> dict[str, str]:
    """The files of a small GitOps repo for HOSTS (name: (address, port))."""
    inventory = {"all": {
        "vars": {"ansible_user": "root", "ansible_python_interpreter": "/usr/bin/python3"},
        "children": {"pets": {"hosts": {
            name: {"ansible_host": address, "ansible_port": port}
            for name, (address, port) in hosts.items()}}}}}
    return {
        "site.yml": PLAYBOOK,
        "roles/motd/tasks/main.yml": MOTD_ROLE,
        "roles/motd/defaults/main.yml": MOTD_DEFAULTS,
        "inventory/hosts.yml": yaml.safe_dump(inventory, sort_keys=False),
    }


def require_test_hosts() -> None:
    """Fail at once, saying what to install, where SSH test hosts cannot run."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or not Path("/usr/sbin/sshd").exists():
        pytest.fail("the integration tests need root, unshare and /usr/sbin/sshd "
                    "(apt-get install openssh-server): run .ci/run or the README's setup")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo, after the test, the logging that the CLI's main() or setup_logging set up in
    this process (the root logger's handlers and level, the agent logger's level)."""
    root, agent = logging.getLogger(), logging.getLogger("agent")
    saved = root.handlers[:], root.level, agent.level
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    agent.setLevel(saved[2])


@pytest.fixture(scope="session")
def host_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestHostPool]:
    """Three real SSH hosts with their own /etc, for the whole session."""
    require_test_hosts()
    with TestHostPool(tmp_path_factory.mktemp("hosts")) as pool:
        for name, address in (("alpha", ALPHA), ("beta", BETA), ("gamma", GAMMA)):
            pool.start(name, address)
        yield pool


@pytest.fixture
def receiver() -> Iterator[Any]:
    """A webhook receiver on loopback that answers 202 (tests.receivers)."""
    from tests.receivers import HttpReceiver  # its test-only libraries load where used

    r = HttpReceiver()
    yield r
    r.close()


@pytest.fixture
def remote(tmp_path: Path) -> GitRemote:
    return GitRemote(tmp_path / "git")


def write_agent_config(path: Path, remote_url: str, state_dir: Path, pool: TestHostPool,
                       **extra: object) -> Path:
    """Write an agent.yml for the test repo; EXTRA keys replace or add top-level settings."""
    config: dict[str, object] = {
        "repo": {"url": remote_url, "branch": "main", "timeout": "30s"},
        "playbooks": ["site.yml"],
        "inventory": "inventory/hosts.yml",
        "limit": "pets",
        "state_dir": str(state_dir),
        "ansible": {"private_key_file": str(pool.client_key),
                    "known_hosts_file": str(pool.known_hosts), "timeout": "5m"},
    }
    config.update(extra)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def check_json(config: Path, *args: str) -> tuple[int, dict]:
    """Run `petkeeper check --json`; return its exit code and report."""
    r = petkeeper("--config", str(config), "check", "--json", *args)
    assert r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout)


def petkeeper(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child process, as a person or cron would."""
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def converge(pool: TestHostPool, remote: GitRemote, limit: str, tmp: Path) -> None:
    """Bring LIMIT's hosts to the repo's state with a real (non-check) run, as an admin would."""
    from agent.adapters.runner import PlaybookRun, run_playbook

    run = PlaybookRun(tree=remote.work, playbook="site.yml",
                      inventory=remote.work / "inventory/hosts.yml", limit=limit, check=False,
                      ident="converge", private_key_file=str(pool.client_key),
                      known_hosts_file=str(pool.known_hosts), timeout=300)
    result = run_playbook(run, tmp / "converge-runner")
    assert result.status == "successful", result.error


def settle(pool: TestHostPool, *names: str, motd: str = "Managed by Petkeeper\n",
           mode: str = "steady") -> None:
    """Leave NAMES' managed files as `converge` of the repo of pets_repo_files leaves them
    (its /etc/motd and /etc/pet.conf, 0644), with one shell command each: for a fixture that
    needs a converged start, not a proof of converging (an Ansible run costs seconds)."""
    for name in names:
        pool.run(name, f"printf %s {shlex.quote(motd)} > /etc/motd && "
                       f"printf 'mode=%s\\n' {shlex.quote(mode)} > /etc/pet.conf && "
                       "chmod 0644 /etc/motd /etc/pet.conf")


def pet_hosts(pool: TestHostPool, *names: str, ghost: bool = False) -> dict[str, tuple[str, int]]:
    hosts = {n: (pool.hosts[n].address, pool.hosts[n].port) for n in names}
    if ghost:
        hosts["ghost"] = (GHOST, 22)
    return hosts


def processes_in(folder: Path) -> dict[str, str]:
    """PID -> command line of every process whose working directory is inside FOLDER."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmdline = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
        except OSError:
            continue
        if cwd.startswith(f"{folder}{os.sep}"):
            found[pid] = cmdline
    return found


def proc_file(pid: int | str, name: str) -> bytes:
    """/proc/PID/NAME's bytes, or b"" for a process that is gone."""
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return b""
