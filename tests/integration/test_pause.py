"""Stop means stop: `petkeeper pause` written while a cycle runs stops every apply that has not
started, on a real SSH host, with the real CLI in separate processes. (That the next cycle
after `petkeeper resume` applies is tests/integration/test_daemon.py's: its daemon pauses,
resumes and applies on the same kind of host; here a resume lets the next run plan the
apply and start its re-check.)

The playbook's first task holds a chosen Ansible run on the host until the test says go: the
test writes the limit of the run to hold into ARMED (the cycle's check runs with the config's
limit, `pets`; the re-check before an apply with the host's own, `alpha`), sees the held task's
shell on the host, pauses, and only then creates GO.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent.cli import approver_name
from tests.conftest import (
    PLAYBOOK,
    GitRemote,
    pet_hosts,
    petkeeper,
    pets_repo_files,
    proc_file,
    settle,
    write_agent_config,
)

pytestmark = pytest.mark.hosts

MOTD = "cat /etc/motd"
ARMED, GO = f"/etc/pk-pause-armed-{os.getpid()}", f"/etc/pk-pause-go-{os.getpid()}"
HOLD = f"""\
  pre_tasks:
    - name: Hold this run until the test says go (only the run it armed)
      ansible.builtin.shell: |
        test "$(cat {ARMED} 2>/dev/null)" = "{{{{ ansible_limit }}}}" || exit 0
        until test -e {GO}; do sleep 0.1; done
        rm -f {ARMED} {GO}
      check_mode: false
      changed_when: false
"""


@pytest.fixture
def pets(host_pool, remote: GitRemote, tmp_path: Path) -> Iterator[Path]:
    """alpha, drifted by hand, under a policy that would correct it at once (auto)."""
    files = pets_repo_files(pet_hosts(host_pool, "alpha"))
    remote.commit({**files, "site.yml": PLAYBOOK.replace("  roles:\n", HOLD + "  roles:\n", 1),
                   "petkeeper/policy.yml": yaml.safe_dump({"default": "auto"})})
    host_pool.run("alpha", "echo 'edited by hand' >> /etc/motd")
    try:
        yield write_agent_config(tmp_path / "agent.yml", remote.url, tmp_path / "state",
                                 host_pool, limit="pets")
    finally:
        host_pool.run("alpha", f"rm -f {ARMED} {GO}")
        settle(host_pool, "alpha")  # the hand edit, which no apply here corrects


def run_paused_while_held(config: Path, pool, limit: str) -> tuple[str, int, dict, str, int]:
    """Hold the Ansible run of LIMIT in a `petkeeper run`, pause from another process while
    it waits, then let it go; return what pause printed, the run's exit code, JSON, log and
    PID."""
    pool.run("alpha", f"echo {limit} > {ARMED}")
    proc = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(config), "run",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not any(GO.encode() in (cmdline := proc_file(pid, "cmdline")) and
                      b"until" in cmdline for pid in os.listdir("/proc") if pid.isdigit()):
            assert proc.poll() is None, "the run ended before it was held"
            assert time.monotonic() < deadline, "the armed run never reached the host"
            time.sleep(0.2)
        started = time.monotonic()
        r = petkeeper("--config", str(config), "pause", "--reason", "test", timeout=60)
        print(f"petkeeper pause returned in {time.monotonic() - started:.2f}s:\n{r.stdout}")
        assert r.returncode == 0, r.stderr
        assert proc.poll() is None  # it returned while the cycle still waits: it took no lock
        pool.run("alpha", f"touch {GO}")
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.strip(), err
    return r.stdout, proc.returncode, json.loads(out), err, proc.pid


def test_a_pause_mid_cycle_stops_every_apply_not_started_and_resume_lets_the_next_run_plan_it(
        pets, remote, host_pool, tmp_path):
    # 1. Paused during the cycle's check: decide, under the lock, turns the apply into a wait.
    said, code, ran, _, pid = run_paused_while_held(pets, host_pool, "pets")
    me = approver_name()
    assert said.splitlines() == [
        f"paused applies (checks go on) as {me}: test; petkeeper resume to undo",
        f"a cycle is running (PID {pid}, run {ran['run_id']}); it will apply nothing "
        "that has not started; no apply is running"]
    plan = ran["plans"]["alpha"]
    assert (plan["action"], plan["mode"]) == ("wait", "auto") and ran["applies"] == []
    assert plan["reason"].startswith(f"paused by {me} since ") and plan["reason"].endswith(
        ": test")
    assert ran["paused"]["reason"] == "test" and code == 2
    assert ran["hosts"]["alpha"]["status"] == "drifted"
    assert "edited by hand" in host_pool.run("alpha", MOTD).stdout
    report = yaml.safe_load(remote.show("petkeeper/hosts/alpha", "hosts/alpha.yml"))
    assert report["paused"]["reason"] == "test" and report["run_id"] == ran["run_id"]

    # 2. `petkeeper apply PLAN_ID` while paused: refused at once, and no cycle runs.
    status = (tmp_path / "state" / "status.json").read_bytes()
    refused = petkeeper("--config", str(pets), "apply", plan["plan_id"])
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"petkeeper: error: apply {plan['plan_id']}: {plan['reason']}; nothing is applied "
        "until petkeeper resume"]
    assert (tmp_path / "state" / "status.json").read_bytes() == status

    # 3. Resumed, the next run plans the apply (its re-check, limited to alpha, is the run
    # held here: a run still paused would plan a wait and never start it); paused again
    # during that re-check, the apply does not start.
    assert petkeeper("--config", str(pets), "resume").returncode == 0
    said, code, ran, log, pid = run_paused_while_held(pets, host_pool, "alpha")
    assert said.splitlines()[1].startswith(f"a cycle is running (PID {pid}, run ")
    assert ran["applies"] == [] and ran["plans"]["alpha"]["action"] == "wait", ran["plans"]
    assert ran["plans"]["alpha"]["reason"].endswith(": test") and code == 2
    assert "edited by hand" in host_pool.run("alpha", MOTD).stdout
    assert f"alpha: not applied, paused by {me} since " in log

