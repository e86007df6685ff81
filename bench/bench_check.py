"""Benchmark a no-change ``petkeeper check`` against bare ansible-playbook and ansible-pull.

Usage (as root, like the demo: needs unshare and /usr/sbin/sshd)::

    .venv/bin/python bench/bench_check.py --runs 5 --hosts 2
    .venv/bin/python bench/bench_check.py --scale 1,2,4 --runs 3
    .venv/bin/python bench/bench_check.py --scale 1,2 --runs 5 --playbook wide \
        --tools petkeeper,petkeeper-plain,ansible-playbook    # the accelerator (issue #20)
    .venv/bin/python bench/bench_check.py --scale 1,10,50,100,200 --runs 3 --playbook light \
        --tools petkeeper,ansible-playbook --forks 20      # beside mode: one agent, many pets

It sets up what the demo sets up, in a temp workdir: a bare repo of this project's playbooks/
and inventories/ (``agent.demo.seed_repo``) plus a commit adding ``inventories/bench/``,
``soak/light.yml`` and ``playbooks/bench.yml``, and test hosts bench1..N on 127.0.110.11..
(200 per /24, up to 127.0.113.x; ``TestHostPool``), converged once so that every check is a
no-change check. Then, for each host count (most first), the same commit, hosts, inventory,
playbook (--playbook: playbooks/site.yml; light: four tasks without facts; wide: full facts,
site.yml's roles and ten more tasks, 32 task results per host) and limit are checked --runs
times by each of (--tools), interleaved (each round starts with the next tool):

  petkeeper         petkeeper -v --config agent-N.yml check      (the real CLI; exit 0 asserted)
                    with the defaults (ansible.accelerator auto: Mitogen's strategy)
  petkeeper-plain   the same with ansible.accelerator: off (Ansible's own linear strategy)
  ansible-playbook  ansible-playbook --check --diff -i INV --limit L PLAYBOOK
                    in a clone, with the environment Petkeeper gives Ansible (runner.build_env:
                    pipelining on, ControlPersist as Ansible sets it)
  ansible-pull      ansible-pull -U file://REPO -C main -d DIR -i DIR/INV -l L --check --diff
                    PLAYBOOK, same environment

All run with --forks parallel hosts (Petkeeper's ansible.forks, ANSIBLE_FORKS for the others;
default 5, the default of both).

ansible-pull passes ``-c local`` to ansible-playbook; the inventory's ``ansible_connection:
ssh`` (group_vars/all.yml) takes precedence, so it checks the SSH hosts: the warm-up runs it
with -vvv and fails unless every host was reached over SSH. Its own git step needs this machine
in the inventory (``localhost``, left out by every limit) and a non-strict host pattern check.

Not measured: the converge, and one warm-up (Petkeeper's first cycle: mirror clone, first
report commits; ansible-pull's first clone); nor compiling agent/'s sources, whose bytecode is
written first, as installing Petkeeper writes it (``compile_agent``). SSH connections are
opened by each run and reused within it, as Petkeeper's runner does (a ControlPersist folder
per run, its masters closed at the end): the bare tools get a fresh folder per run too, closed
after their time is taken (``--cold`` turns ControlMaster off for all three). Petkeeper's run
is split with the arrival times of its -v log lines; its fetch step and ansible-inventory call
are also timed alone, in process. Hosts are stopped and the workdir removed on exit
(``--keep`` keeps the workdir).
"""

from __future__ import annotations

import argparse
import compileall
import itertools
import os
import pstats
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import yaml

import agent
from agent.adapters.accelerator import mitogen_version
from agent.adapters.inventory import list_hosts
from agent.adapters.masters import close_masters
from agent.adapters.runner import PlaybookRun, build_env, run_playbook
from agent.adapters.state import StateDir
from agent.config import Config, load_config
from agent.cycle.source import open_mirror, sync_source
from agent.demo import PLAYBOOK, seed_repo, write_config
from agent.testhosts import TestHostPool

HOSTS_PER_NET = 200
NETS = range(110, 114)  # 127.0.110.x to 127.0.113.x: the beside-mode block, up to 800 hosts
LIGHT = "soak/light.yml"
# --playbook light (here and in bench/soak.py): four tasks, seven results per host, committed
# to the bench remote beside the project's playbooks. The same kinds
# of task as site.yml (files with diffs, a loop, a tagged task per policy rule), no fact
# gathering, no package module: a cycle of seconds rather than of tens of seconds.
LIGHT_PLAYBOOK = """\
---
- name: Soak pets, lightly
  hosts: pets
  gather_facts: false
  tasks:
    - name: Write the message of the day
      ansible.builtin.copy:
        dest: /etc/motd
        content: "{{ inventory_hostname }}: {{ baseline_motd_purpose }}\\n"
        mode: "0644"
      tags: [baseline]
    - name: Create the application folders
      ansible.builtin.file:
        path: "/srv/soak/{{ item }}"
        state: directory
        mode: "0755"
      loop: [conf, data, logs, spool]
      tags: [baseline]
    - name: Write the application config
      ansible.builtin.copy:
        dest: /srv/soak/conf/app.conf
        content: "workers = 4\\nfeatures = compression,static_files\\n"
        mode: "0644"
      tags: [baseline]
    - name: Schedule the backup
      ansible.builtin.copy:
        dest: /etc/cron.d/petkeeper-backup
        content: "17 3 * * * root /usr/local/sbin/petkeeper-backup\\n"
        mode: "0644"
      tags: [backup_job]
"""
WIDE = "playbooks/bench.yml"
# --playbook wide: what a pet's play often looks like: full facts, the project's roles, and
# ten more tasks of the usual kinds (files, lines, blocks, reads). Check-mode honest and
# idempotent like site.yml: after the converge, every check of it is a no-change check.
WIDE_PLAYBOOK = """\
---
- name: Benchmark pets
  hosts: pets
  gather_facts: true
  roles: [baseline, users, sshd, backup_job]
  tasks:
    - name: Create the bench folder
      ansible.builtin.file: {path: /srv/bench, state: directory, mode: "0755"}
    - name: Create the bench data folder
      ansible.builtin.file: {path: /srv/bench/data, state: directory, mode: "0750"}
    - name: Write the bench config
      ansible.builtin.copy:
        dest: /srv/bench/app.conf
        content: "host = {{ ansible_hostname }}\\nworkers = {{ ansible_processor_vcpus }}\\n"
        mode: "0644"
    - name: Write the bench environment
      ansible.builtin.copy: {dest: /srv/bench/env, content: "LANG=C.UTF-8\\n", mode: "0644"}
    - name: Set the bench log level
      ansible.builtin.lineinfile:
        path: /srv/bench/log.conf
        line: "log_level = info"
        create: true
        mode: "0644"
    - name: Keep the bench limits
      ansible.builtin.blockinfile:
        path: /srv/bench/limits.conf
        create: true
        mode: "0644"
        block: "nofile 65536\\nnproc 4096"
    - name: Mark the bench as managed
      ansible.builtin.replace: {path: /srv/bench/env, regexp: "^LANGUAGE=.*$", replace: ""}
    - name: Read the password file's metadata
      ansible.builtin.stat: {path: /etc/passwd}
    - name: Look the admins up
      ansible.builtin.getent: {database: passwd, key: alice}
    - name: Read the hostname
      ansible.builtin.command: cat /etc/hostname
      changed_when: false
      check_mode: false
"""
PLAYBOOKS = {"site": PLAYBOOK, "light": LIGHT, "wide": WIDE}


INVENTORY = "inventories/bench/hosts.yml"
BRANCH = "main"
TIMEOUT = 600.0
BIN = Path(sys.executable).parent


def address(i: int) -> str:
    """The loopback address of test host I (1-based): 127.0.110.11, ... 127.0.110.210,
    127.0.111.11, ..."""
    net, host = divmod(i - 1, HOSTS_PER_NET)
    return f"127.0.{NETS[net]}.{11 + host}"


@dataclass
class Sample:
    wall: float
    rc: int
    out: str
    err: list[tuple[float, str]]  # (seconds since start, line) of stderr, as it arrived
    own_rss_kb: int  # VmHWM of the process itself, sampled every 20 ms
    own_cpu: float  # user + system seconds of the process itself, sampled likewise
    tree_rss_kb: int  # wait4 ru_maxrss: largest RSS of the process or any reaped descendant
    cpu: float  # user + system seconds of the process and its reaped descendants (this side)


TOOLS = ("petkeeper", "petkeeper-plain", "ansible-playbook", "ansible-pull")
PETKEEPERS = ("petkeeper", "petkeeper-plain")


@dataclass
class Point:
    """The figures for one host count."""

    hosts: int
    tools: tuple[str, ...] = TOOLS
    runs: dict[str, list[Sample]] = field(default_factory=lambda: {t: [] for t in TOOLS})
    disk: list[tuple[int, int, int]] = field(default_factory=list)  # before run 1, after each
    parts: list[dict[str, int]] = field(default_factory=list)  # state dir by part: before, after
    fetch: list[float] = field(default_factory=list)
    inventory: list[float] = field(default_factory=list)
    inventory_cpu: list[float] = field(default_factory=list)
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before, after
    artifacts_keep: int = 0
    host_cpu: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in TOOLS})

    def wall(self, tool: str) -> list[float]:
        return [s.wall for s in self.runs[tool]]

    def median(self, tool: str) -> float:
        return statistics.median(self.wall(tool))

    def cpu_ratio(self, tool: str, other: str, hosts: bool = False) -> float:
        """TOOL's median CPU (on this side, or on the hosts) over OTHER's."""
        def cpu(t: str) -> float:
            return statistics.median(self.host_cpu[t] if hosts else
                                     [s.cpu for s in self.runs[t]])
        return cpu(tool) / max(cpu(other), 1e-9)


# -- processes -------------------------------------------------------------------------------

def run_timed(argv: Sequence[str], env: dict[str, str], cwd: Path) -> Sample:
    """Run ARGV; return its wall time, rc, output, stamped stderr lines and peak RSS."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    out: list[bytes] = []
    err: list[tuple[float, str]] = []
    own = [0.0, 0.0]
    done = threading.Event()
    stdout = proc.stdout
    assert stdout is not None
    readers = [threading.Thread(target=lambda: out.append(stdout.read()), daemon=True),
               threading.Thread(target=_stamp_lines, args=(proc, start, err), daemon=True),
               threading.Thread(target=_sample_own, args=(proc.pid, own, done), daemon=True)]
    for t in readers:
        t.start()
    killer = threading.Timer(TIMEOUT, os.killpg, (proc.pid, signal.SIGKILL))
    killer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:  # interrupted: leave no Ansible behind
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        killer.cancel()
        done.set()
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join(timeout=5)  # a ControlPersist master may hold a pipe: don't wait for it
    return Sample(wall, proc.returncode, b"".join(out).decode(errors="replace"), err,
                  int(own[0]), own[1], usage.ru_maxrss, usage.ru_utime + usage.ru_stime)


def _stamp_lines(proc: subprocess.Popen[bytes], start: float,
                 lines: list[tuple[float, str]]) -> None:
    assert proc.stderr is not None
    for raw in proc.stderr:
        lines.append((time.monotonic() - start, raw.decode(errors="replace").rstrip()))


def _sample_own(pid: int, own: list[float], done: threading.Event) -> None:
    """Every 20 ms until DONE: OWN = [VmHWM kB, user + system seconds] of PID itself."""
    tick = os.sysconf("SC_CLK_TCK")
    while not done.wait(0.02):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return
        m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        if m:  # a zombie has none
            own[0] = max(own[0], int(m.group(1)))
            own[1] = (int(stat[11]) + int(stat[12])) / tick


def expect(sample: Sample, what: str) -> Sample:
    if sample.rc != 0:
        tail = "\n".join([sample.out[-3000:], *(line for _, line in sample.err[-30:])])
        raise SystemExit(f"bench: {what} exited {sample.rc}, expected 0:\n{tail}")
    return sample


def git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, timeout=60, stdin=subprocess.DEVNULL,
                   capture_output=True)


# -- setup -----------------------------------------------------------------------------------

def start_hosts(pool: TestHostPool, count: int) -> list[str]:
    names = [f"bench{i}" for i in range(1, count + 1)]
    for i, name in enumerate(names, start=1):
        pool.start(name, address(i))
    return names


def add_inventory(remote: Path, workdir: Path, pool: TestHostPool, names: list[str]) -> None:
    """Commit inventories/bench/ (the hosts as started, the demo's group_vars) and the light
    playbook to REMOTE."""
    clone = workdir / "inventory-clone"
    git("clone", "--quiet", "--branch", BRANCH, f"file://{remote}", str(clone))
    folder = clone / Path(INVENTORY).parent
    shutil.copytree(clone / "inventories/demo/group_vars", folder / "group_vars")
    hosts = {n: {"ansible_host": pool.hosts[n].address, "ansible_port": pool.hosts[n].port}
             for n in names}
    # localhost is for ansible-pull alone: its git step runs `ansible -c local all -l
    # localhost,<this host>` on the inventory given once the checkout has it, and fails on an
    # inventory without this machine. Every limit below leaves it out.
    local = {"localhost": {"ansible_connection": "local",
                           "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}
    (clone / INVENTORY).write_text(yaml.safe_dump({"all": {"hosts": local, "children": {
        "pets": {"hosts": hosts, "vars": {"baseline_motd_purpose": "benchmark pet"}}}}}))
    (clone / LIGHT).parent.mkdir(parents=True, exist_ok=True)
    (clone / LIGHT).write_text(LIGHT_PLAYBOOK)
    (clone / WIDE).write_text(WIDE_PLAYBOOK)
    git("add", "--all", cwd=clone)
    git("-c", "user.name=Bench", "-c", "user.email=bench@bench.invalid", "commit", "--quiet",
        "-m", "Benchmark inventory", cwd=clone)
    git("push", "--quiet", "origin", BRANCH, cwd=clone)
    shutil.rmtree(clone)


def bench_config(workdir: Path, remote: Path, pool: TestHostPool, names: list[str],
                 state: str, playbook: str = PLAYBOOK, forks: int = 5,
                 accelerator: str | None = None) -> Path:
    """The demo's agent.yml (agent.demo.write_config), pointed at the bench inventory and
    PLAYBOOK, limited to NAMES, FORKS hosts at a time, with state in WORKDIR/STATE and
    ansible.accelerator set to ACCELERATOR (None: the default, auto)."""
    data = yaml.safe_load(write_config(workdir, remote, pool).read_text())
    data.update(inventory=INVENTORY, limit=",".join(names), state_dir=str(workdir / state),
                playbooks=[playbook])
    data["ansible"]["forks"] = forks
    if accelerator is not None:
        data["ansible"]["accelerator"] = accelerator
    path = workdir / f"agent-{state}.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def converge(config: Config, remote: Path, workdir: Path, names: list[str]) -> None:
    """Apply the config's playbook once, as agent.demo.converge does (it is tied to the demo
    hosts)."""
    tree = workdir / "converge-tree"
    git("clone", "--quiet", "--branch", BRANCH, f"file://{remote}", str(tree))
    run = PlaybookRun(tree=tree, playbook=config.playbooks[0], inventory=tree / INVENTORY,
                      limit=",".join(names), check=False, ident="bench-converge",
                      forks=config.ansible.forks,
                      private_key_file=config.ansible.private_key_file,
                      known_hosts_file=config.ansible.known_hosts_file, timeout=TIMEOUT)
    result = run_playbook(run, workdir / "converge-runner")
    if result.status != "successful":
        raise SystemExit(f"bench: converge failed ({result.status}, rc {result.rc}): "
                         f"{result.error}")


@dataclass(frozen=True)
class Bench:
    """One repo, one set of converged hosts, and how each tool is run against them."""

    workdir: Path
    remote: Path
    pool: TestHostPool
    names: list[str]
    base_env: dict[str, str]  # petkeeper's: it builds its Ansible environment itself
    playbook: str = PLAYBOOK
    tools: tuple[str, ...] = TOOLS
    forks: int = 5

    @property
    def tree(self) -> Path:
        return self.workdir / "tree"  # the commit petkeeper checks; bare ansible-playbook's

    @property
    def pull_dir(self) -> Path:
        return self.workdir / "pull"

    def config(self, names: list[str], state: str, accelerator: str | None = None) -> Path:
        return bench_config(self.workdir, self.remote, self.pool, names, state,
                            self.playbook, self.forks, accelerator)

    def ansible_env(self, config: Config) -> dict[str, str]:
        """Petkeeper's Ansible environment (agent.adapters.runner.build_env) over the base one."""
        run = PlaybookRun(tree=self.tree, playbook=self.playbook,
                          inventory=self.tree / INVENTORY, limit="", check=True, ident="bench",
                          private_key_file=config.ansible.private_key_file,
                          known_hosts_file=config.ansible.known_hosts_file)
        return {**self.base_env, **build_env(run), "ANSIBLE_FORKS": str(self.forks)}

    def commands(self, names: list[str], state: str
                 ) -> dict[str, tuple[list[str], dict[str, str], Path]]:
        """Per tool: argv, environment and working directory of a check of NAMES (Petkeeper's
        with its state directory in WORKDIR/STATE)."""
        config_path = self.config(names, state)
        plain_path = self.config(names, f"{state}-plain", "off")
        env = self.ansible_env(load_config(config_path))
        # ansible-pull's own git step limits to "localhost,<this host's names>,127.0.0.1",
        # which Petkeeper's strict ANSIBLE_HOST_PATTERN_MISMATCH=error turns into a failure.
        pull_env = {**env, "ANSIBLE_HOST_PATTERN_MISMATCH": "warning"}
        limit = ",".join(names)
        return {
            "petkeeper": ([str(BIN / "petkeeper"), "-v", "--config", str(config_path),
                           "check"], self.base_env, self.workdir),
            "petkeeper-plain": ([str(BIN / "petkeeper"), "-v", "--config", str(plain_path),
                                 "check"], self.base_env, self.workdir),
            "ansible-playbook": ([str(BIN / "ansible-playbook"), "--check", "--diff", "-i",
                                  INVENTORY, "--limit", limit, self.playbook], env,
                                 self.tree),
            "ansible-pull": ([str(BIN / "ansible-pull"), "-U", f"file://{self.remote}", "-C",
                              BRANCH, "-d", str(self.pull_dir), "-i",
                              str(self.pull_dir / INVENTORY), "-l", limit, "--check", "--diff",
                              self.playbook], pull_env, self.workdir),
        }

    def warm_up(self) -> None:
        """Petkeeper's first cycle clones its mirror and commits the first reports;
        ansible-pull's first clones its checkout (here with -vvv and a tag that selects no
        task: facts only, to see where it connects)."""
        git("clone", "--quiet", "--branch", BRANCH, f"file://{self.remote}", str(self.tree))
        cmd = self.commands(self.names, "state")
        argv, env, cwd = cmd["petkeeper"]
        pk = expect(run_timed(argv, env, cwd), "petkeeper first check")
        if "ansible-pull" not in self.tools:
            say(f"warm-up on {len(self.names)} host(s), not measured: petkeeper first check "
                f"{pk.wall:.2f}s")
            return
        argv, env, cwd = cmd["ansible-pull"]
        pull = expect(run_timed([*argv, "-vvv", "--tags", "bench-selects-no-task"], env, cwd),
                      "ansible-pull first run")
        expect_ssh(pull, self.pool, self.names)
        say(f"warm-up on {len(self.names)} host(s), not measured: petkeeper first check "
            f"{pk.wall:.2f}s; ansible-pull clone + facts {pull.wall:.2f}s")


def settle_light(pool: TestHostPool, names: list[str]) -> None:
    """Leave NAMES as a converge of --playbook light leaves them, with one shell command per
    host instead of an Ansible run (its four tasks' files, contents and modes), so that the
    first check is a no-change check: hundreds of hosts converge in seconds, not minutes."""
    files = (("/etc/motd", "{name}: benchmark pet\n"),
             ("/srv/soak/conf/app.conf", "workers = 4\nfeatures = compression,static_files\n"),
             ("/etc/cron.d/petkeeper-backup", "17 3 * * * root /usr/local/sbin/petkeeper-backup\n"))
    folders = " ".join(f"/srv/soak/{f}" for f in ("conf", "data", "logs", "spool"))
    for name in names:
        writes = " && ".join(f"printf %s {shlex.quote(text.format(name=name))} > {path} && "
                             f"chmod 0644 {path}" for path, text in files)
        pool.run(name, f"mkdir -p {folders} /etc/cron.d && chmod 0755 {folders} && {writes}")


def measure_memory(bench: Bench) -> Sample:
    """One petkeeper check of every host, the agent's first (it clones its mirror and
    commits every host's first report), for its time and peak memory."""
    argv, env, cwd = bench.commands(bench.names, "state")["petkeeper"]
    sample = run_timed(argv, env, cwd)
    if sample.rc not in (0, 2):  # 2: drift, which the settle should have left none of
        expect(sample, "petkeeper check")
    hosts = len(bench.names)
    print(f"\n== memory: one petkeeper check of {hosts} host(s), its first (mirror clone, "
          f"{hosts} first reports committed and pushed), exit {sample.rc}"
          f"{' (drift: the settle left something to change)' if sample.rc else ''}")
    print(f"  wall {sample.wall:.1f}s; CPU on this side {sample.cpu:.1f}s, of its own process "
          f"{sample.own_cpu:.1f}s")
    print(f"  petkeeper peak RSS: its own process {sample.own_rss_kb / 1024:.1f} MiB (VmHWM, "
          f"sampled every 20 ms); largest process of its tree {sample.tree_rss_kb / 1024:.1f} "
          "MiB (wait4 ru_maxrss)")
    return sample


# -- measures --------------------------------------------------------------------------------

def measure_point(bench: Bench, names: list[str], runs: int) -> Point:
    """Check NAMES RUNS times with each tool, interleaved."""
    point = Point(len(names), bench.tools, load=(os.getloadavg()[0], 0.0))
    # Each host count starts from a copy of the state the warm-up left (mirror, tree, reports
    # committed and pushed, one artifact folder), so that its disk figures are its own.
    cmd = bench.commands(names, f"state-{len(names)}")
    config = load_config(bench.config(names, f"state-{len(names)}"))
    state = StateDir(config.state_dir)
    shutil.copytree(bench.workdir / "state", state.root, symlinks=True)
    shutil.copytree(bench.workdir / "state", f"{state.root}-plain", symlinks=True)
    point.artifacts_keep = config.ansible.artifacts_keep
    point.disk.append(disk_usage(state.root))
    point.parts.append(disk_by_part(state.root))
    pids = [bench.pool.hosts[n].pid for n in names]
    for i in range(runs):
        # Each round starts with the next tool: none always runs right after the same one
        # (the machine's caches and the hosts' state favour whichever follows which).
        for tool in bench.tools[i % len(bench.tools):] + bench.tools[:i % len(bench.tools)]:
            before = sum(map(tree_cpu, pids))
            sample = expect(run_tool(tool, *cmd[tool]), tool)
            point.host_cpu[tool].append(sum(map(tree_cpu, pids)) - before)
            if tool == "petkeeper":
                point.disk.append(disk_usage(state.root))
            elif tool not in PETKEEPERS:
                expect_clean(sample, names)
            point.runs[tool].append(sample)
        say(f"{len(names)} host(s): run {i + 1}/{runs}: " + ", ".join(
            f"{t} {point.runs[t][-1].wall:.2f}s" for t in bench.tools))
    point.parts.append(disk_by_part(state.root))
    time_cycle_parts(point, config, state, runs)
    point.load = (point.load[0], os.getloadavg()[0])
    return point


def run_tool(tool: str, argv: list[str], env: dict[str, str], cwd: Path) -> Sample:
    """Run one check. A bare tool gets what Petkeeper's runner gives each of its runs: a new
    SSH ControlPersist folder, its masters closed at the end (after the time is taken: left
    alone they would linger for 60 s, costing the bare tool nothing)."""
    if tool in PETKEEPERS:
        return run_timed(argv, env, cwd)
    with tempfile.TemporaryDirectory(prefix="pk-cp-") as folder:
        try:
            return run_timed(argv, {**env, "ANSIBLE_SSH_CONTROL_PATH_DIR": folder}, cwd)
        finally:
            close_masters(Path(folder))


def profile_check(bench: Bench, names: list[str], out: Path, tool: str = "petkeeper") -> None:
    """One more no-change check of NAMES by TOOL (petkeeper or petkeeper-plain), in a process
    run under cProfile: where Petkeeper's own process spends its time (Ansible runs in
    children, not profiled)."""
    argv, env, cwd = bench.commands(names, f"state-{len(names)}")[tool]
    profiled = [sys.executable, "-m", "cProfile", "-o", str(out.resolve()), "-m", "agent",
                *argv[1:]]
    sample = expect(run_timed(profiled, env, cwd), "petkeeper check under cProfile")
    stats = pstats.Stats(str(out.resolve()), stream=sys.stdout)
    print(f"\n== profile of {tool}'s own process, {len(names)} host(s): {sample.wall:.2f}s "
          f"wall, {sample.own_cpu:.2f}s CPU; top 25 by cumulative time ({out})")
    stats.sort_stats("cumulative").print_stats(25)


def time_cycle_parts(point: Point, config: Config, state: StateDir, runs: int) -> None:
    """Time the fetch step alone (open the mirror, fetch, resolve; the tree exists) and the
    one ansible-inventory call of the target step, in process, RUNS times each."""
    for _ in range(runs):
        t = time.monotonic()
        source = sync_source(config, state, open_mirror(config, state))
        point.fetch.append(time.monotonic() - t)
        t, cpu = time.monotonic(), _children_cpu()
        list_hosts(source.tree, source.tree / INVENTORY, config.limit)
        point.inventory.append(time.monotonic() - t)
        point.inventory_cpu.append(_children_cpu() - cpu)


def tree_cpu(pid: int) -> float:
    """User + system seconds used so far by PID's process tree (a test host: its sshd, the
    sessions, the modules they ran): each live process's own and reaped children's time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0  # it ended between two reads: its parent's cutime has it now
    own = sum(int(v) for v in stat[11:15]) / os.sysconf("SC_CLK_TCK")
    return own + sum(tree_cpu(int(child)) for child in children)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def say(text: str) -> None:
    print(f"bench: {text}", flush=True)


def expect_clean(sample: Sample, names: list[str]) -> Sample:
    """A sanity check of the printed recap (not how Petkeeper reads drift): changed=0 each."""
    for name in names:
        if not re.search(rf"^{name}\s+:\s+ok=\d+\s+changed=0\s+unreachable=0\s+failed=0",
                         sample.out, re.M):
            raise SystemExit(f"bench: {name} is not clean in the recap:\n{sample.out[-3000:]}")
    return sample


def expect_ssh(sample: Sample, pool: TestHostPool, names: list[str]) -> None:
    """ansible-pull passes -c local to ansible-playbook: check (in its -vvv output) that the
    inventory's ansible_connection: ssh won, so that it checked the test hosts, not this one."""
    play = sample.out.split("PLAY [", 1)[-1]  # after the git step, which is local
    missing = [n for n in names if f"<{pool.hosts[n].address}> ESTABLISH SSH CONNECTION"
               not in play]
    if missing or "ESTABLISH LOCAL CONNECTION" in play:
        raise SystemExit(f"bench: ansible-pull did not check {missing or names} over SSH")


def disk_usage(root: Path) -> tuple[int, int, int]:
    """Return (apparent bytes, allocated bytes, files) under ROOT."""
    size = blocks = files = 0
    for folder, _, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(folder, name))
            size, blocks, files = size + st.st_size, blocks + st.st_blocks * 512, files + 1
    return size, blocks, files


def disk_by_part(root: Path) -> dict[str, int]:
    return {p.name: disk_usage(p)[0] if p.is_dir() else p.stat().st_size
            for p in sorted(root.iterdir())}


# -- report ----------------------------------------------------------------------------------

def spread(values: Sequence[float], unit: str = "s") -> str:
    return (f"{statistics.median(values):6.2f}{unit} "
            f"({min(values):.2f}-{max(values):.2f})")


def split_of(sample: Sample) -> dict[str, float] | None:
    """From petkeeper -v stderr stamps: start-up, fetch+target, Ansible (up to the next line
    logged after its run started: none in a no-change cycle, so up to the exit), the rest."""
    cycle = running = after = None
    for at, line in sample.err:
        if cycle is None and ": cycle " in line:
            cycle = at
        elif running is None and ": running " in line:
            running = at
        elif running is not None and after is None:
            after = at
    if cycle is None or running is None:
        return None
    end = sample.wall if after is None else after
    return {"start-up (imports, config, lock)": cycle, "fetch + target": running - cycle,
            "ansible-runner + ansible-playbook": end - running,
            "later steps (record, save) + exit": sample.wall - end}


def print_point(p: Point) -> None:
    n = len(p.runs["petkeeper"])
    print(f"\n== {p.hosts} host(s), {n} runs each, median (min-max); load average "
          f"{p.load[0]:.1f} -> {p.load[1]:.1f}")
    print(f"  {'':18} {'wall':>22}   {'CPU on this side':>22}   {'CPU on the hosts':>22}")
    for tool in p.tools:
        cpu = [s.cpu for s in p.runs[tool]]
        print(f"  {tool:18} {spread(p.wall(tool)):>22}   {spread(cpu):>22}   "
              f"{spread(p.host_cpu[tool]):>22}")
    for mine in (t for t in PETKEEPERS if t in p.tools):
        for other in (t for t in p.tools if t not in PETKEEPERS):
            paired = [a / b for a, b in zip(p.wall(mine), p.wall(other), strict=True)]
            print(f"  {mine}/{other}: wall {p.median(mine) / p.median(other):.2f}x (per round "
                  f"{spread(paired, 'x')}), CPU here {p.cpu_ratio(mine, other):.2f}x, "
                  f"CPU on the hosts {p.cpu_ratio(mine, other, hosts=True):.2f}x")
    own_cpu = [s.own_cpu for s in p.runs["petkeeper"]]
    print(f"  petkeeper's own process CPU (imports, GitPython, runner events) {spread(own_cpu)}")
    print_split(p)
    print_disk(p)
    own = max(s.own_rss_kb for s in p.runs["petkeeper"]) / 1024
    tree = max(s.tree_rss_kb for s in p.runs["petkeeper"]) / 1024
    print(f"  petkeeper peak RSS: its own process {own:.1f} MiB (VmHWM, sampled every 20 ms); "
          f"largest process of its tree {tree:.1f} MiB (wait4 ru_maxrss)")


def print_split(p: Point) -> None:
    for tool in (t for t in PETKEEPERS if t in p.tools):
        print_split_of(p, tool)


def print_split_of(p: Point, tool: str) -> None:
    rounds = [(s, ap.wall) for s, ap in zip(map(split_of, p.runs[tool]),
                                            p.runs["ansible-playbook"], strict=True) if s]
    splits = [s for s, _ in rounds]
    if not splits:
        print(f"  {tool} cycle split: not found in its -v log")
        return
    print(f"  {tool} cycle split (median of -v log line arrival times):")
    for key in splits[0]:
        print(f"    {key:34} {statistics.median(s[key] for s in splits):6.2f}s")
    if tool == "petkeeper":  # timed once per host count, in process: the same for both
        print(f"      fetch step alone, in process   {statistics.median(p.fetch):6.2f}s")
        print(f"      ansible-inventory, in process  {statistics.median(p.inventory):6.2f}s "
              f"(CPU {statistics.median(p.inventory_cpu):.2f}s)")
    alone = [sum(v for k, v in s.items() if not k.startswith("ansible")) for s in splits]
    print(f"    {tool} alone (all but the Ansible part) {statistics.median(alone):6.2f}s")
    paired = [s["ansible-runner + ansible-playbook"] - ap for s, ap in rounds]
    print(f"    Ansible part minus bare ansible-playbook, paired per round, median "
          f"{statistics.median(paired):+.2f}s")
    own_cpu = [s.own_cpu for s in p.runs[tool]]
    print(f"    {tool}'s own process CPU {spread(own_cpu)}")


def print_disk(p: Point) -> None:
    grow = [b[0] - a[0] for a, b in itertools.pairwise(p.disk)]
    allocated = (p.disk[-1][1] - p.disk[0][1]) / len(grow)
    print(f"  state dir growth per no-change cycle: {statistics.mean(grow):,.0f} B apparent, "
          f"{allocated:,.0f} B allocated (per run: {', '.join(f'{g:+,}' for g in grow)}); "
          f"files {p.disk[0][2]} -> {p.disk[-1][2]}")
    print(f"    (ansible-runner keeps {p.artifacts_keep} artifact folders, one per run: growth "
          "stops once they rotate)")
    before, after = p.parts
    print("    bytes by part: " + ", ".join(f"{k} {before.get(k, 0):,} -> {v:,}"
                                          for k, v in after.items()))


def print_table(points: list[Point]) -> None:
    tools = points[0].tools
    print("\n== summary: medians of a no-change check: wall seconds; CPU seconds on this side "
          "and on the hosts; ratios to ansible-playbook --check --diff")
    head = (f"{'hosts':>5} {'tool':18} {'wall':>7} {'CPU':>7} {'host CPU':>8} {'wall/ap':>8} "
            f"{'CPU/ap':>7} {'host/ap':>8}")
    print(head)
    print("-" * len(head))
    ap = "ansible-playbook"
    for p in points:
        for tool in tools:
            cpu = statistics.median(s.cpu for s in p.runs[tool])
            print(f"{p.hosts:>5} {tool:18} {p.median(tool):>7.2f} {cpu:>7.2f} "
                  f"{statistics.median(p.host_cpu[tool]):>8.2f} "
                  f"{p.median(tool) / p.median(ap):>7.2f}x {p.cpu_ratio(tool, ap):>6.2f}x "
                  f"{p.cpu_ratio(tool, ap, hosts=True):>7.2f}x")
    grow = ", ".join(f"{p.hosts} host(s) {(p.disk[-1][0] - p.disk[0][0]) / (len(p.disk) - 1):,.0f}"
                     for p in points)
    rss = ", ".join(f"{p.hosts} host(s) {max(s.own_rss_kb for s in p.runs['petkeeper']) / 1024:.1f}"
                    for p in points)
    print(f"state directory growth per petkeeper cycle (apparent bytes): {grow}; petkeeper's own "
          f"peak RSS (VmHWM, MiB): {rss}")
    print("petkeeper: ansible.accelerator auto (Mitogen's strategy); petkeeper-plain: "
          "ansible.accelerator off; ap: ansible-playbook --check --diff, pipelining on")


def compile_agent() -> None:
    """Write the bytecode of the agent/ this imports, as installing Petkeeper does (pip compiles
    what it installs, Ansible's files included): a checkout used with PYTHONDONTWRITEBYTECODE=1
    has none, and each petkeeper run would compile its ~70 modules again (0.08 s of a 0.25 s
    start-up, measured on 2026-12-02), which no installed agent does."""
    compileall.compile_dir(Path(agent.__file__).parent, quiet=1)


def code_commit() -> str:
    """The commit of the agent/ this imports, and whether agent/ differs from it."""
    root = Path(agent.__file__).resolve().parents[1]

    def out(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True, timeout=60).stdout.strip()

    try:
        sha = out("rev-parse", "--short=12", "HEAD")
        dirty = out("status", "--porcelain", "--untracked-files=no", "--", "agent")
    except (subprocess.CalledProcessError, OSError):
        return "unknown"
    return sha + (" (with uncommitted changes to agent/)" if dirty else "")


# -- main ------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs per tool (default 5)")
    parser.add_argument("--hosts", type=int, default=2, help="test hosts (default 2)")
    parser.add_argument("--scale", help="host counts to measure, e.g. 1,2,4 (overrides --hosts)")
    parser.add_argument("--cold", action="store_true",
                        help="no SSH connection reuse (ControlMaster=no) for all three tools")
    parser.add_argument("--playbook", choices=sorted(PLAYBOOKS), default="site",
                        help=f"what is checked: {PLAYBOOK} (default), {LIGHT} (four tasks, "
                        f"no facts) or wide, {WIDE} (32 tasks, full facts)")
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help="what is measured: petkeeper,ansible-playbook and any of "
                        "petkeeper-plain, ansible-pull (default all four)")
    parser.add_argument("--forks", type=int, default=5,
                        help="hosts checked in parallel by each tool (default 5)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="after the largest host count, one more petkeeper check under "
                        "cProfile: its stats go to PROFILE, the top entries are printed")
    parser.add_argument("--profile-tool", choices=PETKEEPERS, default="petkeeper",
                        help="whose check --profile runs (default petkeeper)")
    parser.add_argument("--settle", action="store_true",
                        help="--playbook light only: the hosts settled by one shell command "
                        "each, the files its converge writes, instead of converged by Ansible "
                        "(setup in seconds, not minutes)")
    parser.add_argument("--memory-only", action="store_true",
                        help="with --settle: one petkeeper check of the largest host count, "
                        "its time and peak RSS (the agent's memory at that size); no other "
                        "tool")
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    args = parser.parse_args(argv)
    args.counts = sorted({int(n) for n in args.scale.split(",")}) if args.scale else [args.hosts]
    most = HOSTS_PER_NET * len(NETS)
    if args.runs < 1 or min(args.counts) < 1 or max(args.counts) > most:
        parser.error(f"--runs and host counts must be >= 1, host counts <= {most}")
    wanted = set(args.tools.split(","))
    if not {"petkeeper", "ansible-playbook"} <= wanted <= set(TOOLS):
        parser.error("--tools: petkeeper and ansible-playbook, and optionally petkeeper-plain "
                     f"and ansible-pull; got {args.tools!r}")
    args.tools = tuple(t for t in TOOLS if t in wanted)
    args.settle = args.settle or args.memory_only
    if args.settle and args.playbook != "light":
        parser.error("--settle, --memory-only: only with --playbook light (its settle is a "
                     "shell command)")
    args.playbook = PLAYBOOKS[args.playbook]
    if args.forks < 1:
        parser.error("--forks must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a timeout, a kill) leaves through the finally blocks: hosts stopped, workdir gone.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench_check: terminated"))
    workdir = Path(tempfile.mkdtemp(prefix="pkbench-", dir="/tmp"))
    base_env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    if args.cold:
        base_env["ANSIBLE_SSH_ARGS"] = "-C -o ControlMaster=no"
    began = time.monotonic()
    compile_agent()
    say(f"agent from {Path(agent.__file__).parent} at {code_commit()}; workdir {workdir}; "
        f"{args.playbook}, forks {args.forks}; SSH connections "
        f"{'never reused' if args.cold else 'reused within each run'}; ansible-core "
        f"{version('ansible-core')}; Mitogen {mitogen_version() or 'not installed'}; "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    points = []
    try:
        remote = seed_repo(workdir / "pets.git", workdir / "seed")
        with TestHostPool(workdir / "hosts") as pool:  # stops every host, however we leave
            names = start_hosts(pool, max(args.counts))
            add_inventory(remote, workdir, pool, names)
            t = time.monotonic()
            bench = Bench(workdir, remote, pool, names, base_env, args.playbook, args.tools,
                          args.forks)
            if args.settle:
                settle_light(pool, names)
            else:
                converge(load_config(bench.config(names, "state")), remote, workdir, names)
            say(f"{len(names)} host(s) on {address(1)}.. "
                f"{'settled by shell' if args.settle else 'converged'} in "
                f"{time.monotonic() - t:.1f}s (setup, not measured)")
            if args.memory_only:
                measure_memory(bench)
                say(f"total {time.monotonic() - began:.0f}s")
                return 0
            bench.warm_up()
            # Most hosts first: each smaller set is a subset whose SSH sockets stay warm.
            for count in sorted(args.counts, reverse=True):
                points.append(measure_point(bench, names[:count], args.runs))
                print_point(points[-1])
                if args.profile and count == max(args.counts):
                    profile_check(bench, names[:count], args.profile, args.profile_tool)
        print_table(sorted(points, key=lambda p: p.hosts))
        say(f"total {time.monotonic() - began:.0f}s")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
