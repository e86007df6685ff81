"""A `petkeeper run` killed at each step of its cycle, then run again: nothing is corrupt, no
report is lost or doubled, and nothing is applied twice.

Before the apply starts, a kill can lose only the report, the approval and the lock: there the
next cycle is a `petkeeper plan` (one check, no apply), which shows all three intact and the
approved plan still to apply. A kill at the apply's start is followed by a full run, which
applies once; every kill from the apply's journal on is followed by a full run.

The killed run is the real CLI in its own process group, armed by a small wrapper
(``KILLER``) that wraps one function, a step of ``RUN_STEPS`` or a point inside one, to
SIGKILL its whole process group when that function is called: no hook in the agent, and no
timing. Steps are read from ``RUN_STEPS``, so a step added later is killed too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from agent.adapters.state import StateDir, cycle_lock, read_pause, read_status
from agent.cycle.steps import RUN_STEPS, apply_step
from agent.testhosts import TestHost
from tests.conftest import GitRemote, processes_in, write_agent_config

pytestmark = pytest.mark.hosts

HOST, ADDRESS = "killpet", "127.0.86.11"
# Every real apply appends a line to COUNTER: its line count is how often the pet was applied.
# While SLOW exists, an apply waits (after counting) until the test removes it.
CONF, COUNTER, SLOW = "/etc/pet.conf", "/etc/pet-applies", "/etc/pet-slow"
PLAYBOOK = f"""\
- name: Keep the pet
  hosts: all
  gather_facts: false
  tasks:
    - name: Write the pet config
      ansible.builtin.copy:
        content: "mode=steady\\n"
        dest: {CONF}
        mode: "0644"
    - name: Count the applies
      ansible.builtin.shell: echo applied >> {COUNTER}
      when: not ansible_check_mode
    - name: Wait while the test holds the apply
      ansible.builtin.shell: while test -e {SLOW}; do sleep 0.2; done
      when: not ansible_check_mode
"""

# Runs the real CLI with one function (module:attribute) wrapped to SIGKILL the process group
# at its Nth call: a crash. Ansible's workers, which left the group with setsid, live on.
KILLER = """\
import importlib, os, signal, sys
from agent import cli
from agent.cycle import steps as cycle

where, nth = sys.argv[1], int(sys.argv[2])
module, _, attr = where.partition(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
original, calls = getattr(owner, name), []

def armed(*args, **kwargs):
    calls.append(1)
    if len(calls) == nth:
        os.killpg(0, signal.SIGKILL)
    return original(*args, **kwargs)

setattr(owner, name, armed)
cycle.RUN_STEPS = cli.RUN_STEPS = tuple(armed if s is original else s for s in cycle.RUN_STEPS)
sys.exit(cli.main(sys.argv[3:]))
"""

# How the apply is recorded in the end. INTERRUPTED_BEFORE: interrupted, but the killed run
# died after journaling the apply and before Ansible ran: nothing was applied.
CONVERGED, INTERRUPTED, INTERRUPTED_BEFORE = "converged", "interrupted", "interrupted before"


@dataclass(frozen=True)
class KillPoint:
    id: str
    where: str  # "module:attribute" of the function to kill at; "" for a kill from outside
    nth: int = 1  # at its Nth call
    applied: bool = False  # the killed run applied the pet before it died
    expect: str = CONVERGED
    then: str = "run"  # the next cycle: "plan" where the killed run cannot have begun an apply


def _kill_points() -> list[KillPoint]:
    """Each step's start, and the middle of the steps that write what must survive: the
    reports queue before its push, the apply between its journal and its approval's use, and
    during its Ansible run."""
    applying = RUN_STEPS.index(apply_step)
    push = "agent.adapters.gitrepo:Mirror.push"
    return [
        *(KillPoint(f"start of {s.__name__}", f"agent.cycle.steps:{s.__name__}",
                    applied=i > applying, then="plan" if i < applying else "run")
          for i, s in enumerate(RUN_STEPS)),
        KillPoint("record_step: queued, not pushed", push, then="plan"),
        KillPoint("record_applies_step: queued, not pushed", push, nth=2, applied=True),
        # The snapshot is taken, nothing is journaled nor applied: the next run applies once.
        KillPoint("apply_step: snapshot taken, apply not started",
                  "agent.cycle.apply:note_applying"),
        KillPoint("apply_step: journaled, approval not yet spent", "agent.cycle.apply:mark_used",
                  expect=INTERRUPTED_BEFORE),
        KillPoint("apply_step: during Ansible", "", applied=True, expect=INTERRUPTED),
    ]


KILL_POINTS = _kill_points()


@dataclass(frozen=True)
class Pet:
    host: TestHost
    remote: GitRemote
    plan_id: str


@pytest.fixture(scope="module")
def pet(host_pool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pet]:
    """One host on 127.0.86.x and a repo with a Git approval for its drift, for every case."""
    host = host_pool.start(HOST, ADDRESS)
    try:
        remote = GitRemote(tmp_path_factory.mktemp("kill-git"))
        inventory = {"all": {"vars": {"ansible_user": "root",
                                      "ansible_python_interpreter": "/usr/bin/python3"},
                             "children": {"pets": {"hosts": {HOST: {
                                 "ansible_host": host.address, "ansible_port": host.port}}}}}}
        remote.commit({"site.yml": PLAYBOOK, "inventory/hosts.yml": yaml.safe_dump(inventory)})
        drift(host_pool)
        tmp = tmp_path_factory.mktemp("kill-plan")
        cfg = write_agent_config(tmp / "agent.yml", remote.url, tmp / "state", host_pool)
        code, planned = run_json(cfg, "plan")
        plan = planned["plans"][HOST]
        assert code == 2 and plan["action"] == "wait", planned
        # A Git approval: every case's fresh state directory may spend it once.
        remote.commit({f"approvals/{HOST}.yml": yaml.safe_dump(
            {"host": HOST, "plan": plan["plan_id"], "expires": "8h"})}, "Approve the pet")
        yield Pet(host, remote, plan["plan_id"])
    finally:
        host_pool.stop(HOST)


def drift(pool) -> None:
    """The pet as a person left it: its config edited by hand, never applied."""
    pool.run(HOST, f"printf 'mode=hand-edited\\n' > {CONF}; rm -f {COUNTER} {SLOW}")


def run_json(config: Path, *args: str) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, "-m", "agent", "--config", str(config), *args, "--json"],
                       capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout)


def applies(pet: Pet) -> int:
    counter = pet.host.path(COUNTER)
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def run_and_kill(point: KillPoint, config: Path, pet: Pet, pool) -> None:
    """Start `petkeeper run` and have it killed at POINT, process group and all."""
    argv = ["--config", str(config), "run"]
    if point.where:
        cmd = [sys.executable, "-c", KILLER, point.where, str(point.nth), *argv]
    else:
        pool.run(HOST, f"touch {SLOW}")
        cmd = [sys.executable, "-m", "agent", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        if not point.where:  # the apply has counted itself and waits on SLOW: kill it there
            deadline = time.monotonic() + 300
            while applies(pet) == 0:
                assert proc.poll() is None and time.monotonic() < deadline, "no apply"
                time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"never reached {point.id}: {err}"


def assert_state_readable(state: StateDir) -> None:
    """Every state file parses and the lock is free."""
    for path in [*state.root.glob("*.json"), *state.journal.glob("*"),
                 *state.approvals.glob("*"), *state.undo.rglob("*.json")]:
        json.loads(path.read_text())
    read_status(state)
    read_pause(state)
    with cycle_lock(state, "test: the lock is free", wait=0):
        pass


@pytest.mark.parametrize("point", KILL_POINTS, ids=[p.id for p in KILL_POINTS])
def test_run_killed_at_any_step_loses_no_report_and_applies_at_most_once(
        pet, host_pool, tmp_path, point):
    drift(host_pool)
    branches = f"petkeeper/kill-{KILL_POINTS.index(point)}"
    config = write_agent_config(tmp_path / "agent.yml", pet.remote.url, tmp_path / "state",
                                host_pool, reports={"host_branches": branches},
                                ansible={"private_key_file": str(host_pool.client_key),
                                         "known_hosts_file": str(host_pool.known_hosts),
                                         "timeout": "3m"})
    state = StateDir(tmp_path / "state")
    try:
        run_and_kill(point, config, pet, host_pool)
        assert applies(pet) == (1 if point.applied else 0)
        strays = processes_in(state.trees)
        assert strays or point.where  # a kill during Ansible leaves its workers running
        assert_state_readable(state)  # at once: the lock died with its holder

        code, after = run_json(config, point.then)
        assert not set(strays) & set(processes_in(state.trees))
    finally:
        host_pool.run(HOST, f"rm -f {SLOW}")

    assert_state_readable(state)
    assert not list(state.journal.glob("*"))  # every apply recorded
    assert read_status(state)["last_run"]["run_id"] == after["run_id"]
    subjects = [s for s in pet.remote.log(HOST, branches=branches) if s.startswith(f"{HOST}:")]
    drifted = [s for s in subjects if s.startswith(f"{HOST}: drifted")]
    records = [s for s in subjects if s.startswith(f"{HOST}: apply of plan {pet.plan_id}: ")]
    if point.then == "plan":  # the report pushed once, the approval unspent, nothing applied
        assert len(drifted) == 1 and records == [] and subjects[0] == drifted[0], subjects
        plan = after["plans"][HOST]
        assert (plan["plan_id"], plan["action"]) == (pet.plan_id, "apply"), plan
        assert after["hosts"][HOST]["status"] == "drifted" and code == 2
        assert applies(pet) == 0
        assert host_pool.run(HOST, f"cat {CONF}").stdout == "mode=hand-edited\n"
        return
    result = CONVERGED if point.expect == CONVERGED else INTERRUPTED
    # none lost, none twice; after an interrupted apply the plan changes (the approval spent or
    # the apply to retry), and a report carries its plan: one more drifted report, not a copy
    assert len(records) == 1 and 1 <= len(drifted) <= (1 if result == CONVERGED else 2), \
        subjects
    assert records == [f"{HOST}: apply of plan {pet.plan_id}: {result}"], subjects
    if point.expect == INTERRUPTED_BEFORE:  # its approval is spent: the pet waits for a new one
        assert applies(pet) == 0
        assert host_pool.run(HOST, f"cat {CONF}").stdout == "mode=hand-edited\n"
        assert after["plans"][HOST]["action"] == "wait", after["plans"]
        assert "already used" in after["plans"][HOST]["reason"]
        # newest first: the interrupted record, then (reports carry the plan) the report whose
        # plan now waits for a new approval
        assert records[0] in subjects[:2] and code == 1
        return
    assert applies(pet) == 1  # once: by the killed run or by the next one, never by both
    assert host_pool.run(HOST, f"cat {CONF}").stdout == "mode=steady\n"
    assert after["hosts"][HOST]["status"] == "clean"
    assert subjects[0].startswith(f"{HOST}: clean")
    assert code == (1 if point.expect == INTERRUPTED else 0)
