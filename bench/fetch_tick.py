"""Measure the daemon's fetch tick when nothing is new: its CPU, and that it starts no Ansible.

Usage (as root: needs unshare and /usr/sbin/sshd for the one test host)::

    .venv/bin/python bench/fetch_tick.py --ticks 50

It sets up a bare repo (a one-task site.yml, an inventory of one SSH test host on
127.0.101.21) and a real ``agent.daemon.service.Daemon`` on it, in this process, with its
ticker not started: the first tick runs a real cycle (in a child interpreter, as the daemon
does). Then it calls the tick --ticks more times with nothing new (same commit, no approval,
no pause, check interval not reached): each is the cheap fetch (``git fetch`` from the bare
repo, resolve the branch) and the decision that no cycle is due. Per tick it prints the median
and the largest CPU (user + system, this process and its reaped children: git) and wall
time, and it lists every process the ticks started (every ``subprocess.Popen``): a tick that
started Ansible, or a cycle, fails the bench.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from agent.adapters.state import StateDir
from agent.config import load_config
from agent.daemon.service import Daemon
from agent.testhosts import TestHostPool

ADDRESS = "127.0.101.21"  # the accel block, beside tests/integration/test_accelerator.py's
PLAYBOOK = """\
- name: Keep the pet
  hosts: pets
  gather_facts: false
  tasks:
    - name: Write the message of the day
      ansible.builtin.copy: {content: "Managed by Petkeeper\\n", dest: /etc/motd, mode: "0644"}
"""


def git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, timeout=60, capture_output=True,
                   stdin=subprocess.DEVNULL)


def make_repo(workdir: Path, pool: TestHostPool) -> Path:
    bare, seed = workdir / "pets.git", workdir / "seed"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    git("init", "--quiet", "--initial-branch=main", str(seed))
    host = pool.hosts["pet1"]
    (seed / "site.yml").write_text(PLAYBOOK)
    (seed / "hosts.yml").write_text(yaml.safe_dump({"all": {
        "vars": {"ansible_user": "root", "ansible_python_interpreter": "/usr/bin/python3"},
        "children": {"pets": {"hosts": {"pet1": {"ansible_host": host.address,
                                                 "ansible_port": host.port}}}}}}))
    git("add", "--all", cwd=seed)
    git("-c", "user.name=Bench", "-c", "user.email=bench@bench.invalid", "commit", "--quiet",
        "-m", "One pet", cwd=seed)
    git("push", "--quiet", str(bare), "main", cwd=seed)
    return bare


def write_config(workdir: Path, bare: Path, pool: TestHostPool) -> Path:
    path = workdir / "agent.yml"
    path.write_text(yaml.safe_dump({
        "repo": {"url": f"file://{bare}", "branch": "main"}, "playbooks": ["site.yml"],
        "inventory": "hosts.yml", "limit": "pets", "state_dir": str(workdir / "state"),
        "daemon": {"fetch_interval": "1h", "check_interval": "24h", "splay": "0s"},
        "ansible": {"private_key_file": str(pool.client_key),
                    "known_hosts_file": str(pool.known_hosts)}}, sort_keys=False))
    return path


def cpu() -> float:
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Started:
    """Every subprocess.Popen's argv while installed (GitPython's git commands among them)."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []
        self.real = subprocess.Popen.__init__

    def __enter__(self) -> Started:
        seen, real = self.argvs, self.real

        def init(popen: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
            seen.append([str(a) for a in args] if isinstance(args, list | tuple) else [str(args)])
            real(popen, args, *rest, **kwargs)

        subprocess.Popen.__init__ = init  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.Popen.__init__ = self.real  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ticks", type=int, default=50, help="ticks measured (default 50)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pk-tick-", dir="/tmp"))
    try:
        with TestHostPool(workdir / "hosts") as pool:
            pool.start("pet1", ADDRESS)
            config_path = write_config(workdir, make_repo(workdir, pool), pool)
            config = load_config(config_path)
            StateDir(config.state_dir).ensure()
            daemon = Daemon(config_path, config)
            t = time.monotonic()
            daemon.tick()  # the first cycle, in a child interpreter
            if daemon.last is None:
                raise SystemExit("bench: the first tick ran no cycle")
            print(f"first tick (a real cycle, not measured): {time.monotonic() - t:.2f}s")
            walls, cpus, cycled = [], [], daemon.last_cycle_at
            with Started() as started:
                for _ in range(args.ticks):
                    t, c = time.monotonic(), cpu()
                    daemon.tick()
                    walls.append(time.monotonic() - t)
                    cpus.append(cpu() - c)
            ansible = [a for a in started.argvs if any("ansible" in part for part in a)]
            commands = sorted({" ".join(a[:2]) for a in started.argvs})
            print(f"{args.ticks} fetch ticks with nothing new: CPU median "
                  f"{statistics.median(cpus) * 1000:.0f} ms (max {max(cpus) * 1000:.0f} ms), "
                  f"wall median {statistics.median(walls) * 1000:.0f} ms (max "
                  f"{max(walls) * 1000:.0f} ms)")
            print(f"processes started: {len(started.argvs)} ({', '.join(commands)}); "
                  f"Ansible: {len(ansible)}")
            if ansible or daemon.last_cycle_at != cycled:
                raise SystemExit(f"bench: a tick started Ansible: {ansible[:3]}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
