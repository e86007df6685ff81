"""Benchmark the daemon's kept SSH connection: a no-change check over a master kept from the
cycle before, against one that opens its own (issue #20, point 3).

Usage (as root, like the demo: needs unshare and /usr/sbin/sshd)::

    .venv/bin/python bench/bench_masters.py --runs 9 --playbook light
    .venv/bin/python bench/bench_masters.py --runs 5      # site.yml: 26 s a check, noisier

Setup (with bench_check.py's helpers): the demo's repo and inventory, one test host on
127.0.121.21, converged once. Then the daemon's check run (agent.adapters.runner.run_playbook,
what each cycle's check runs: the same PlaybookRun but for its SSH masters) is timed --runs
times per variant, interleaved:

  fresh          a control folder of the run's own, its master closed at the end: every
                 daemon cycle before this change, and every ad hoc CLI run still
  kept           the daemon's folder (agent.core.ssh_masters.Masters): the master opened by
                 the warm-up serves every run
  mitogen        Mitogen's strategy as ansible.accelerator auto runs it in ad hoc commands (its
                 own ssh per run)
  mitogen-kept   Mitogen's strategy as the daemon runs it: its ssh rides a kept master (the
                 shared ControlPath the daemon gives it in ssh_args)

Each run: wall time; CPU on the agent (every process the run started, the SSH master
included: this process is a child subreaper, so a master that daemonized is still reaped and
counted here, and a kept master's CPU is read from /proc while it lives); CPU on the pet (the
test host's process tree: sshd, its sessions, the modules). Medians, and kept minus fresh.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bench_check import (
    INVENTORY,
    PLAYBOOKS,
    add_inventory,
    bench_config,
    converge,
    git,
    tree_cpu,
)

from agent.adapters.accelerator import mitogen_plugins
from agent.adapters.masters import close_masters, master_pid, open_folder
from agent.adapters.runner import PlaybookRun, run_playbook
from agent.config import load_config
from agent.core.accelerator import STRATEGY
from agent.core.ssh_masters import Masters
from agent.demo import seed_repo
from agent.testhosts import TestHostPool

ADDRESS = "127.0.121.21"
NAME = "bench1"
VARIANTS = ("fresh", "kept", "mitogen", "mitogen-kept")
PR_SET_CHILD_SUBREAPER = 36


@dataclass
class Sample:
    wall: float
    agent_cpu: float
    pet_cpu: float


def proc_cpu(pid: int | None) -> float:
    """User + system seconds of PID so far (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reap() -> None:
    """Wait for the orphans reparented to us (daemonized SSH masters that ended)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def kept_pids(folder: Path) -> list[int]:
    return [pid for sock in folder.rglob("*") if sock.is_socket()
            if (pid := master_pid(sock)) is not None]


def timed(run: PlaybookRun, workdir: Path, pet: int, kept: Sequence[Path]) -> Sample:
    masters = [pid for folder in kept for pid in kept_pids(folder)]
    before = (time.monotonic(), children_cpu(), sum(map(proc_cpu, masters)), tree_cpu(pet))
    result = run_playbook(run, workdir / "runner")
    reap()
    after = (time.monotonic(), children_cpu(), sum(map(proc_cpu, masters)), tree_cpu(pet))
    if result.status != "successful" or result.rc != 0:
        raise SystemExit(f"bench: {run.ident} failed ({result.status}, rc {result.rc}): "
                         f"{result.error}")
    changed = [e for e in result.events if (e.get("event_data") or {}).get("res", {})
               .get("changed") and e.get("event") == "runner_on_ok"]
    if changed:
        raise SystemExit(f"bench: {run.ident}: not a no-change check ({len(changed)} changed)")
    return Sample(after[0] - before[0], after[1] - before[1] + after[2] - before[2],
                  after[3] - before[3])


def variants(base: PlaybookRun, kept: Path, mitogen_kept: Path) -> dict[str, PlaybookRun]:
    plugins = mitogen_plugins()
    if plugins is None:
        raise SystemExit("bench: Mitogen is not installed (pip install -e '.[fast]')")
    mitogen = replace(base, env={**base.env, "ANSIBLE_STRATEGY": STRATEGY,
                                 "ANSIBLE_STRATEGY_PLUGINS": str(plugins)})
    return {"fresh": base,
            "kept": replace(base, masters=Masters(kept, 600)),
            "mitogen": mitogen,
            "mitogen-kept": replace(mitogen, masters=Masters(mitogen_kept, 600))}


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, list[Sample]]:
    remote = seed_repo(workdir / "pets.git", workdir / "seed")
    with TestHostPool(workdir / "hosts") as pool:
        pool.start(NAME, ADDRESS)
        add_inventory(remote, workdir, pool, [NAME])
        config = load_config(bench_config(workdir, remote, pool, [NAME], "state",
                                          PLAYBOOKS[args.playbook]))
        converge(config, remote, workdir, [NAME])
        tree = workdir / "tree"
        git("clone", "--quiet", f"file://{remote}", str(tree))
        kept, mitogen_kept = workdir / "kept", workdir / "mitogen-kept"
        folders = (kept, mitogen_kept)
        for folder in folders:
            open_folder(folder)
        base = PlaybookRun(tree=tree, playbook=PLAYBOOKS[args.playbook],
                           inventory=tree / INVENTORY, limit=NAME, check=True, ident="bench",
                           private_key_file=config.ansible.private_key_file,
                           known_hosts_file=config.ansible.known_hosts_file, timeout=600)
        runs = variants(base, kept, mitogen_kept)
        pet = pool.hosts[NAME].pid
        samples: dict[str, list[Sample]] = {v: [] for v in VARIANTS}
        try:
            for name, run in runs.items():  # warm-up: opens the kept masters, not measured
                timed(replace(run, ident=f"warm-{name}"), workdir, pet, folders)
            print(f"masters after the warm-up: kept {kept_pids(kept)}, for Mitogen "
                  f"{kept_pids(mitogen_kept)}", flush=True)
            for i in range(args.runs):
                try:
                    round_ = {name: timed(replace(run, ident=f"{name}-{i}"), workdir, pet,
                                          folders) for name, run in runs.items()}
                except SystemExit:  # terminated (a timeout): report the whole rounds so far
                    if i == 0:
                        raise
                    print(f"cut short after {i} round(s)", flush=True)
                    break
                for name, sample in round_.items():
                    samples[name].append(sample)
                print(f"round {i + 1}: " + ", ".join(
                    f"{n} {samples[n][-1].wall:.2f}s" for n in VARIANTS), flush=True)
            print(f"masters at the end (same PIDs: kept across runs): kept {kept_pids(kept)}, "
                  f"for Mitogen {kept_pids(mitogen_kept)}", flush=True)
        finally:
            for folder in folders:
                close_masters(folder)
            reap()
    return samples


def report(samples: dict[str, list[Sample]]) -> None:
    def med(name: str, key: str) -> float:
        return statistics.median(getattr(s, key) for s in samples[name])

    print(f"\n{'variant':14} {'wall':>8} {'agent CPU':>10} {'pet CPU':>9}  (medians of "
          f"{len(samples['fresh'])})")
    for name in VARIANTS:
        walls = sorted(s.wall for s in samples[name])
        print(f"{name:14} {med(name, 'wall'):7.2f}s {med(name, 'agent_cpu'):9.2f}s "
              f"{med(name, 'pet_cpu'):8.2f}s  wall {walls[0]:.2f}-{walls[-1]:.2f}")
    for kept, fresh in (("kept", "fresh"), ("mitogen-kept", "mitogen")):
        print(f"{kept} - {fresh}: wall {med(kept, 'wall') - med(fresh, 'wall'):+.2f}s, agent "
              f"CPU {med(kept, 'agent_cpu') - med(fresh, 'agent_cpu'):+.2f}s, pet CPU "
              f"{med(kept, 'pet_cpu') - med(fresh, 'pet_cpu'):+.2f}s per check")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--playbook", choices=sorted(PLAYBOOKS), default="light",
                        help="light (four tasks, no facts: the handshake stands out; the "
                        "default), site (playbooks/site.yml) or wide (bench_check's)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench_masters: terminated"))
    # Daemonized SSH masters are reparented to us, reaped and counted in our children's CPU.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    workdir = Path(tempfile.mkdtemp(prefix="pkmasters-", dir="/tmp"))
    print(f"workdir {workdir}; {args.playbook} on 1 host; {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    try:
        report(measure(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
