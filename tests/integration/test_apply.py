"""Approvals and apply, end to end: nothing changes on a pet that nobody approved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from agent.config import load_config
from agent.cycle.steps import CHECK_STEPS, RUN_STEPS, run_cycle
from tests.conftest import (
    GitRemote,
    git,
    pet_hosts,
    petkeeper,
    pets_repo_files,
    processes_in,
    settle,
    write_agent_config,
)

pytestmark = pytest.mark.hosts

MOTD = "cat /etc/motd"


@pytest.fixture
def pets(host_pool, remote: GitRemote, tmp_path: Path) -> Path:
    """alpha and beta converged (settled: a shell command each, not an Ansible run; the
    proofs of converging are the applies below); beta's motd then edited by hand."""
    remote.commit(pets_repo_files(pet_hosts(host_pool, "alpha", "beta")))
    settle(host_pool, "alpha", "beta")
    host_pool.run("beta", "echo 'edited by hand' >> /etc/motd")
    return write_agent_config(tmp_path / "agent.yml", remote.url, tmp_path / "state", host_pool)


def cli(config: Path, *args: str, approver: str = "alice") -> tuple[int, dict]:
    """Run a petkeeper command with --json; SUDO_USER stands for the person behind sudo."""
    env = {**os.environ, "SUDO_USER": approver}
    r = subprocess.run([sys.executable, "-m", "agent", "--config", str(config), *args,
                        "--json"], capture_output=True, text=True, timeout=300, env=env,
                       stdin=subprocess.DEVNULL)
    assert r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout)


def approve(config: Path, plan_id: str, *args: str,
            approver: str = "alice") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SUDO_USER": approver}
    return subprocess.run([sys.executable, "-m", "agent", "--config", str(config), "approve",
                           plan_id, *args], capture_output=True, text=True, timeout=120,
                          env=env, stdin=subprocess.DEVNULL)


def set_policy(remote: GitRemote, policy: dict) -> str:
    return remote.commit({"petkeeper/policy.yml": yaml.safe_dump(policy)}, "Set the policy")


def test_hand_drift_is_approved_on_the_host_applied_once_and_rechecked_clean(
        pets, remote, host_pool):
    code, unapproved = cli(pets, "run")  # its check plans as `plan` would
    plan = unapproved["plans"]["beta"]
    assert plan["action"] == "wait" and "awaiting approval" in plan["reason"]
    assert unapproved["plans"]["alpha"]["action"] == "nothing"
    [change] = [c for c in unapproved["hosts"]["beta"]["changes"] if not c["check_blind"]]
    assert change["class"] == "intentional"  # no converged apply known yet
    assert unapproved["applies"] == [] and code == 2
    assert "edited by hand" in host_pool.run("beta", MOTD).stdout  # nothing applied

    r = approve(pets, plan["plan_id"], "--comment", "put the motd back")
    assert r.returncode == 0, r.stderr
    assert f"approved plan {plan['plan_id']} for beta as alice" in r.stdout

    code, ran = cli(pets, "run")
    [applied] = ran["applies"]
    assert applied["result"] == "converged" and applied["approved_by"] == "alice"
    assert applied["before_status"] == "drifted" and applied["after_status"] == "clean"
    assert ran["hosts"]["beta"]["status"] == "clean" and code == 0
    assert "edited by hand" not in host_pool.run("beta", MOTD).stdout

    subjects = remote.log("beta")
    assert subjects[:4] == [
        "beta: clean (0 changes, 1 check-blind)",
        f"beta: apply of plan {plan['plan_id']}: converged",
        # the run's check: the plan's action turned from wait to apply (reports carry the plan)
        "beta: drifted (1 change, 1 check-blind)",
        f"beta: plan {plan['plan_id']} approved by alice"]
    record = yaml.safe_load(remote.show("petkeeper/hosts/beta", "applies/beta.yml"))
    assert record["approval"]["comment"] == "put the motd back"
    assert record["approval"]["how"] == "host"
    trailers = remote.log("beta", "%(trailers)%x00")[1]
    assert f"Petkeeper-Plan: {plan['plan_id']}" in trailers
    assert "Petkeeper-Approved-By: alice" in trailers

    history = petkeeper("--config", str(pets), "history", "beta")
    assert history.returncode == 0
    lines = history.stdout.splitlines()
    assert "apply of plan" in lines[1] and "approved by alice" in lines[1]

    # The approval is used once, never replayed: the very same drift again is the same plan,
    # and it waits.
    host_pool.run("beta", "echo 'edited by hand' >> /etc/motd")
    _, again = cli(pets, "run")
    assert again["plans"]["beta"]["plan_id"] == plan["plan_id"]
    assert again["applies"] == []
    assert again["plans"]["beta"]["action"] == "wait"
    assert "already used" in again["plans"]["beta"]["reason"]
    assert "edited by hand" in host_pool.run("beta", MOTD).stdout


def test_auto_corrects_without_asking_every_host_it_may_in_one_apply_run(pets, remote,
                                                                        host_pool):
    host_pool.run("alpha", "echo 'edited by hand' >> /etc/motd")
    set_policy(remote, {"rules": [{"name": "self-heal", "hosts": ["alpha", "beta"],
                                   "mode": "auto"}]})
    r = subprocess.run([sys.executable, "-m", "agent", "--config", str(pets), "run", "--json",
                        "-v"], capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    ran = json.loads(r.stdout)

    assert [(a["host"], a["result"], a["approved_by"]) for a in ran["applies"]] == [
        ("alpha", "converged", "policy: auto (self-heal)"),
        ("beta", "converged", "policy: auto (self-heal)")]
    for host in ("alpha", "beta"):
        assert "edited by hand" not in host_pool.run(host, MOTD).stdout
    # After the cycle's check, one run each for both hosts (issue 22, item 10): the re-check,
    # which reads the undo snapshot in its own ansible-playbook process, the apply, and the
    # re-check, which reads the snapshot's after state; each host judged on its own fingerprint.
    runs = [line.split("running ")[1].split(" mode (ident ") for line in r.stderr.splitlines()
            if "mode (ident" in line]
    assert [(what, ident.split(", limit ")[1].rstrip(")")) for what, ident in runs] == [
        ("site.yml in check", "pets"), ("site.yml then snapshot.yml in check", "alpha,beta"),
        ("site.yml in apply", "alpha,beta"),
        ("site.yml then snapshot.yml in check", "alpha,beta")], r.stderr
    assert all(step in ident for step, (_, ident) in zip(
        ["-check-", "-before-", "-apply-", "-after-"], runs, strict=True)), runs
    assert "Write the message of the day" in [c["task"] for c in ran["applies"][1]["changed"]]
    for apply in ran["applies"]:  # read before and after the apply, in the re-checks' runs
        [motd] = [f for f in apply["snapshot"]["files"] if f["path"] == "/etc/motd"]
        assert motd["blob"] and motd["before"]["sha256"] != motd["after"]["sha256"], motd


def test_report_only_never_applies_even_when_approved(pets, remote, host_pool):
    set_policy(remote, {"default": "auto", "rules": [{"groups": ["pets"], "tags": ["motd"],
                                                      "mode": "report"}]})
    _, planned = cli(pets, "plan")
    plan = planned["plans"]["beta"]
    assert plan["action"] == "report-only" and plan["rule"] == "rules[0]"
    r = approve(pets, plan["plan_id"])
    assert r.returncode == 1 and "report only" in r.stderr
    remote.commit({"approvals/beta.yml": yaml.safe_dump(
        {"host": "beta", "plan": plan["plan_id"], "expires": "8h"})}, "Approve beta")

    _, ran = cli(pets, "run")
    assert ran["applies"] == [] and ran["plans"]["beta"]["action"] == "report-only"
    assert "edited by hand" in host_pool.run("beta", MOTD).stdout


def test_closed_window_holds_an_approved_correction_until_it_opens(pets, remote, host_pool):
    set_policy(remote, {"windows": [{"name": "early", "start": "0 3 * * *",
                                     "duration": "1h", "timezone": "UTC"}]})
    _, planned = cli(pets, "plan")
    assert approve(pets, planned["plans"]["beta"]["plan_id"], "--expires", "3d").returncode == 0
    config = load_config(pets)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)

    closed = run_cycle(config, RUN_STEPS, "run", now=tomorrow.replace(hour=12, minute=0))
    plan = closed.plans["beta"]
    assert plan.action == "wait" and "approved by alice" in plan.reason
    assert "'early' opens" in plan.reason and closed.applies == []
    assert "edited by hand" in host_pool.run("beta", MOTD).stdout

    # Once it opens, the held approval makes the plan an apply (a check's decide, as a run's
    # decide: that a run applies what its decide says is proven by the approved applies
    # above, at five Ansible runs each).
    opened = run_cycle(config, CHECK_STEPS, "check",
                       now=(tomorrow + timedelta(days=1)).replace(hour=3, minute=30))
    plan = opened.plans["beta"]
    assert plan.action == "apply" and "approved by alice" in plan.reason, plan.reason
    assert opened.applies == []


@pytest.mark.parametrize("case", ["new commit", "different drift", "expired",
                                  "another host's plan"])
def test_void_approvals_apply_nothing_and_say_why(pets, remote, host_pool, case):
    _, planned = cli(pets, "plan")
    pid = planned["plans"]["beta"]["plan_id"]
    now = None
    if case == "another host's plan":
        host_pool.run("alpha", "echo 'alpha too' >> /etc/motd")
        _, planned = cli(pets, "plan")
        remote.commit({"approvals/beta.yml": yaml.safe_dump(
            {"host": "beta", "plan": planned["plans"]["alpha"]["plan_id"], "expires": "8h"})})
        expected = "not a current plan of beta"
    else:
        assert approve(pets, pid).returncode == 0
        if case == "new commit":
            remote.commit({"README.md": "pets\n"})
            expected = "a new commit voids an approval"
        elif case == "different drift":
            host_pool.run("beta", "echo 'and more' >> /etc/motd")
            expected = "drift changed since approval"
        else:
            now = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=5)
            expected = "expired at"
    cycle = run_cycle(load_config(pets), RUN_STEPS, "run", now=now)

    assert cycle.applies == []
    assert cycle.plans["beta"].action == "wait"
    assert expected in cycle.plans["beta"].reason
    assert "edited by hand" in host_pool.run("beta", MOTD).stdout


def ssh_signing_key(tmp: Path, name: str) -> tuple[Path, str]:
    key = tmp / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
                   check=True)
    return key, key.with_suffix(".pub").read_text().strip()


def commit_approval(remote: GitRemote, body: dict, key: Path | None) -> None:
    path = remote.work / "approvals" / "beta.yml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(body))
    git("-C", str(remote.work), "add", "--all")
    sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"] if key else []
    git("-C", str(remote.work), "-c", "user.name=Bob", "-c", "user.email=bob@test.invalid",
        *sign, "commit", "--quiet", *(["-S"] if key else []), "-m", "Approve beta")
    git("-C", str(remote.work), "push", "--quiet", str(remote.bare), "HEAD:refs/heads/main")


@pytest.mark.parametrize("signer", ["unsigned", "not allowed", "allowed"])
def test_git_approval_counts_only_from_an_allowed_signer_when_verification_is_on(
        pets, remote, host_pool, tmp_path, signer):
    allowed_key, allowed_pub = ssh_signing_key(tmp_path, "bob-key")
    other_key, _ = ssh_signing_key(tmp_path, "mallory-key")
    signers = tmp_path / "allowed_signers"
    signers.write_text(f'bob@test.invalid namespaces="git" {allowed_pub}\n')
    cfg = write_agent_config(tmp_path / "agent.yml", remote.url, tmp_path / "state", host_pool,
                             approvals={"verify": True, "allowed_signers": str(signers)})
    _, planned = cli(cfg, "plan")
    key = {"unsigned": None, "not allowed": other_key, "allowed": allowed_key}[signer]
    commit_approval(remote, {"host": "beta", "plan": planned["plans"]["beta"]["plan_id"],
                             "expires": "8h", "comment": "ticket OPS-42"}, key)

    _, ran = cli(cfg, "run")
    if signer == "allowed":
        [applied] = ran["applies"]
        assert applied["result"] == "converged"
        assert applied["approved_by"] == "Bob <bob@test.invalid>"
        assert applied["approval"]["how"] == "git"
    else:
        assert ran["applies"] == []
        assert "not signed by an allowed approver" in ran["plans"]["beta"]["reason"]
        assert "edited by hand" in host_pool.run("beta", MOTD).stdout


def test_crash_mid_apply_is_recorded_interrupted_and_not_reapplied(pets, remote, host_pool,
                                                                   tmp_path):
    files = pets_repo_files({})
    slow_first = files["roles/motd/tasks/main.yml"].replace(
        "- name: Write the message of the day",
        "- name: Take a while\n  ansible.builtin.command: sleep 120\n"
        "  when: not ansible_check_mode\n\n- name: Write the message of the day")
    remote.commit({"roles/motd/tasks/main.yml": slow_first})
    _, planned = cli(pets, "plan")
    pid = planned["plans"]["beta"]["plan_id"]
    assert approve(pets, pid).returncode == 0
    state = load_config(pets).state_dir

    proc = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(pets), "run"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while not (state / "journal" / f"{pid}.json").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    time.sleep(3)  # well inside the apply's 'sleep 120'
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    orphans = processes_in(state / "trees")
    assert orphans  # Ansible's workers outlive a killed agent...

    code, after = cli(pets, "run")
    [interrupted] = after["applies"]
    assert interrupted["result"] == "interrupted" and interrupted["plan_id"] == pid
    assert code == 1
    assert after["plans"]["beta"]["action"] == "wait"
    assert "already used" in after["plans"]["beta"]["reason"]
    assert "edited by hand" in host_pool.run("beta", MOTD).stdout  # not re-applied
    assert f"beta: apply of plan {pid}: interrupted" in remote.log()
    assert not (state / "journal" / f"{pid}.json").exists()
    assert set(orphans) & set(processes_in(state / "trees")) == set()  # ...until the next run
