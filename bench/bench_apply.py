"""Benchmark correcting many hosts: the batched apply beside the one-host-at-a-time path it
replaced (issue 22, item 10), and beside a bare ansible-playbook run.

Usage (as root, like the demo: needs unshare and /usr/sbin/sshd)::

    .venv/bin/python bench/bench_apply.py --hosts 4 --runs 2

Hosts bench1..N on 127.0.96.11.. (``TestHostPool``), this project's playbooks and the bench
inventory of bench/bench_check.py, converged once, with ``default: auto`` as the policy and
``ansible.accelerator`` at its default (off). Each round edits /etc/motd on every host by
hand, then corrects all of them with, interleaved:

  batched           a real ``petkeeper run`` cycle, in process (run_cycle, RUN_STEPS): one
                    re-check (its run also reads the undo snapshot), one apply and one
                    re-check (its run also reads what the apply left) for all the hosts
  one-by-one        the same cycle with the apply step as it was: those three runs per host
                    (apply_plans with one plan at a time)
  ansible-playbook  ansible-playbook PLAYBOOK --diff --limit ALL in a clone, with the
                    environment Petkeeper gives Ansible: no check, no re-check (the floor)

Printed per tool: the median total seconds, the apply step's seconds (for Petkeeper), and that
time per host. Every correction is asserted (each host converged, the hand edit gone).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_check import BRANCH, INVENTORY, TIMEOUT, add_inventory, bench_config, converge, git

from agent.adapters.runner import PlaybookRun, run_playbook
from agent.config import load_config
from agent.cycle.apply import apply_plans, apply_record
from agent.cycle.decide import APPLY
from agent.cycle.steps import RUN_STEPS, Cycle, Stage, Step, apply_step, run_cycle
from agent.demo import PLAYBOOK, seed_repo
from agent.testhosts import TestHostPool

EDIT = "echo 'Back at 5pm -- bob' >> /etc/motd"


def one_by_one_apply_step(c: Cycle) -> None:
    """The apply step before batching: each plan's host re-checked, applied and re-checked
    alone (no pause in this benchmark)."""
    assert c.source is not None and c.targets is not None
    for plan in [p for p in c.plans.values() if p.action == APPLY]:
        [(result, _)] = apply_plans(c.config, c.source, c.targets, c.state, [plan], c.run_id,
                                    c.clock, c.cancel)
        c.applies.append(result)
        c.pending.append(apply_record(result))
    c.advance(Stage.APPLIED)


def timed(step: Step, into: list[float]) -> Step:
    def run(c: Cycle) -> None:
        start = time.monotonic()
        step(c)
        into.append(time.monotonic() - start)
    return run


def petkeeper_round(config_path: Path, apply: Step, names: list[str]) -> tuple[float, float]:
    """One corrective cycle: (total seconds, apply step seconds); every host converged."""
    spent: list[float] = []
    steps = tuple(timed(apply, spent) if s is apply_step else s for s in RUN_STEPS)
    start = time.monotonic()
    cycle = run_cycle(load_config(config_path), steps, "run")
    total = time.monotonic() - start
    results = sorted((a.host, a.result) for a in cycle.applies)
    if results != [(n, "converged") for n in sorted(names)]:
        raise SystemExit(f"bench: expected every host converged, got {results}")
    return total, spent[0]


def playbook_round(tree: Path, config_path: Path, names: list[str], work: Path) -> float:
    config = load_config(config_path)
    run = PlaybookRun(tree=tree, playbook=PLAYBOOK, inventory=tree / INVENTORY,
                      limit=",".join(names), check=False, ident=f"bench-apply-{time.time()}",
                      private_key_file=config.ansible.private_key_file,
                      known_hosts_file=config.ansible.known_hosts_file, timeout=TIMEOUT)
    start = time.monotonic()
    result = run_playbook(run, work)
    if result.status != "successful":
        raise SystemExit(f"bench: ansible-playbook failed ({result.status}): {result.error}")
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pkbench-apply-") as tmp, \
            TestHostPool(Path(tmp) / "hosts") as pool:
        work = Path(tmp)
        names = [f"bench{i}" for i in range(1, args.hosts + 1)]
        for i, name in enumerate(names, start=11):
            pool.start(name, f"127.0.96.{i}")
        remote = seed_repo(work / "pets.git", work / "seed")
        add_inventory(remote, work, pool, names)
        clone = work / "policy-clone"
        git("clone", "--quiet", "--branch", BRANCH, f"file://{remote}", str(clone))
        (clone / "petkeeper").mkdir()
        (clone / "petkeeper" / "policy.yml").write_text("default: auto\n")
        git("add", "--all", cwd=clone)
        git("-c", "user.name=Bench", "-c", "user.email=bench@bench.invalid", "commit",
            "--quiet", "-m", "Policy: auto", cwd=clone)
        git("push", "--quiet", "origin", BRANCH, cwd=clone)
        config = bench_config(work, remote, pool, names, "state", accelerator="off")
        converge(load_config(config), remote, work, names)
        tools: dict[str, Callable[[], tuple[float, float | None]]] = {
            "batched": lambda: petkeeper_round(config, apply_step, names),
            "one-by-one": lambda: petkeeper_round(config, one_by_one_apply_step, names),
            "ansible-playbook": lambda: (playbook_round(clone, config, names,
                                                        work / "pb-runner"), None),
        }
        times: dict[str, list[tuple[float, float | None]]] = {t: [] for t in tools}
        for _ in range(args.runs):
            for tool, measure in tools.items():
                for name in names:
                    pool.run(name, EDIT)
                times[tool].append(measure())
                print(f"  {tool}: {times[tool][-1][0]:.1f}s", file=sys.stderr, flush=True)
        print(f"correcting /etc/motd on {args.hosts} hosts, median of {args.runs} run(s):")
        for tool, samples in times.items():
            total = statistics.median(s[0] for s in samples)
            applied = [s[1] for s in samples if s[1] is not None]
            part = statistics.median(applied) if applied else total
            print(f"  {tool:17} total {total:6.1f}s   apply {part:6.1f}s   per host "
                  f"{part / args.hosts:5.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
