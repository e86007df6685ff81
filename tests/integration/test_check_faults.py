"""Faults and bad input: one clear error, and nothing lost or changed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from agent.adapters.state import StateDir, cycle_lock
from agent.config import load_config
from agent.cycle.steps import run_check
from agent.operate.output import render_check
from tests.baseline import Saved, ensure_converged
from tests.conftest import (
    GitRemote,
    check_json,
    git,
    pet_hosts,
    petkeeper,
    pets_repo_files,
    processes_in,
    write_agent_config,
)

pytestmark = pytest.mark.hosts
BETA_REPORTS = "petkeeper/hosts/beta"


@dataclass
class Baseline:
    config: Path
    remote: GitRemote
    report: dict
    saved: Saved


@pytest.fixture(scope="module")
def baseline(host_pool, tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    """alpha and beta converged, checked once (their clean reports pushed): built once for the
    module; each test gets it back as it was built (the `pets` fixture)."""
    root = tmp_path_factory.mktemp("check-faults")
    remote = GitRemote(root / "git")
    remote.commit(pets_repo_files(pet_hosts(host_pool, "alpha", "beta")))
    ensure_converged(host_pool, remote, ("alpha", "beta"), root)
    config = write_agent_config(root / "agent.yml", remote.url, root / "state", host_pool)
    code, report = check_json(config)
    assert code == 0, report
    saved = Saved(root / "saved", root / "state", remote.bare, remote.work)
    return Baseline(config, remote, report, saved)


@pytest.fixture
def pets(baseline: Baseline, host_pool) -> Path:
    """The baseline's agent config, with its state, remote and hosts as the baseline left them."""
    baseline.saved.restore()
    ensure_converged(host_pool, baseline.remote, ("alpha", "beta"), baseline.config.parent)
    return baseline.config


@pytest.fixture
def remote(pets: Path, baseline: Baseline) -> GitRemote:
    """The baseline's remote (restored by `pets`), in place of tests.conftest's fresh one."""
    return baseline.remote


def push_as_other_writer(remote: GitRemote, tmp: Path, path: str, content: str) -> str:
    """Another writer pushes to beta's reports branch (a second agent for beta, say)."""
    clone = tmp / "other-writer"
    git("clone", "--quiet", "--branch", BETA_REPORTS, str(remote.bare), str(clone))
    (clone / path).parent.mkdir(parents=True, exist_ok=True)
    (clone / path).write_text(content)
    git("-C", str(clone), "add", "--all")
    git("-C", str(clone), "-c", "user.name=Other", "-c", "user.email=o@test.invalid", "commit",
        "--quiet", "-m", "other: report")
    git("-C", str(clone), "push", "--quiet", "origin", f"HEAD:{BETA_REPORTS}")
    return git("-C", str(clone), "rev-parse", "HEAD").strip()


def reject_next_push(remote: GitRemote, tmp: Path) -> Path:
    flag = tmp / "reject-once"
    flag.touch()
    hook = remote.bare / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\nif [ -e {flag} ]; then rm {flag}; echo 'remote busy' >&2; "
                    "exit 1; fi\n")
    hook.chmod(0o755)
    return flag


def test_rejected_push_stays_queued_then_is_rebased_and_pushed_without_force(pets, remote,
                                                                          host_pool, tmp_path):
    first_tip = remote.rev(BETA_REPORTS)  # the baseline's clean report
    reject_next_push(remote, tmp_path)
    host_pool.run("beta", "echo 'edited by hand' >> /etc/motd")
    try:
        rejected_push_then_rebased(pets, remote, tmp_path, first_tip)
    finally:
        host_pool.run("beta", "sed -i '/edited by hand/d' /etc/motd")


def rejected_push_then_rebased(pets: Path, remote: GitRemote, tmp_path: Path,
                               first_tip: str) -> None:
    code, rejected = check_json(pets)
    assert code == 2
    assert rejected["reports"]["committed"] == {"beta": ["hosts/beta.yml"]}
    assert rejected["reports"]["push"] == "rejected"
    assert rejected["reports"]["queued"] == 1 and not rejected["reports"]["pushed"]
    assert "rejected" in rejected["reports"]["error"]
    assert remote.rev(BETA_REPORTS) == first_tip
    status = json.loads(petkeeper("--config", str(pets), "status", "--json").stdout)
    assert status["last_run"]["reports"]["queued"] == 1

    mirror = load_config(pets).state_dir / "mirror.git"
    queued = git("--git-dir", str(mirror), "show",
                 f"refs/petkeeper/queue/{BETA_REPORTS}:hosts/beta.yml")
    other = push_as_other_writer(remote, tmp_path, "notes/other.yml", "status: clean\n")
    _, later = check_json(pets)

    assert later["reports"]["committed"] == {} and later["reports"]["pushed"]
    tip = remote.rev(BETA_REPORTS)
    git("--git-dir", str(remote.bare), "merge-base", "--is-ancestor", other, tip)  # no force
    assert remote.log("beta")[:3] == ["beta: drifted (1 change, 1 check-blind)",
                                      "other: report", "beta: clean (0 changes, 1 check-blind)"]
    assert remote.show(BETA_REPORTS, "notes/other.yml") == "status: clean\n"
    assert "edited by hand" in remote.show("petkeeper/hosts/beta", "hosts/beta.yml")
    assert remote.show("petkeeper/hosts/beta", "hosts/beta.yml") == queued  # rebased byte for byte


def test_unreachable_report_remote_keeps_commits_queued_until_it_answers(pets, remote,
                                                                      host_pool, tmp_path):
    elsewhere = GitRemote(tmp_path / "reports-remote")
    moved = tmp_path / "reports-remote" / "moved.git"
    cfg = write_agent_config(tmp_path / "agent.yml", remote.url, tmp_path / "state", host_pool,
                             reports={"url": elsewhere.url})
    elsewhere.bare.rename(moved)
    source_refs = remote.refs()
    code, down = check_json(cfg)
    assert code == 0 and down["reports"]["queued"] == 2 and not down["reports"]["pushed"]
    assert down["reports"]["push"] == "failed" and down["reports"]["error"]

    moved.rename(elsewhere.bare)
    _, up = check_json(cfg)
    assert up["reports"]["pushed"] and up["reports"]["queued"] == 0
    assert (up["reports"]["push"], up["reports"]["committed"]) == ("pushed", {})
    assert sorted(elsewhere.log()) == ["alpha: clean (0 changes, 1 check-blind)",
                                       "beta: clean (0 changes, 1 check-blind)"]
    assert remote.refs() == source_refs  # reports went only where configured


def test_failed_fetch_checks_the_last_good_commit_and_says_so(pets, remote, baseline,
                                                              tmp_path):
    good = baseline.report
    moved = tmp_path / "away.git"
    remote.bare.rename(moved)
    try:
        code, stale = check_json(pets)
    finally:
        moved.rename(remote.bare)
    human = render_check(stale)  # what `petkeeper check` prints for this cycle (--json's data)

    assert code == 1
    assert stale["source_sha"] == good["source_sha"]
    assert "git fetch" in stale["fetch_error"] and str(remote.bare) in stale["fetch_error"]
    assert {h["status"] for h in stale["hosts"].values()} == {"clean"}
    assert "checked the last good commit" in human


def snapshot(config: Path, remote: GitRemote, pool) -> tuple[bytes, str, str]:
    state = load_config(config).state_dir
    status = (state / "status.json").read_bytes() if (state / "status.json").exists() else b""
    return status, remote.refs(), pool.run("alpha", "md5sum /etc/motd /etc/pet.conf").stdout


BAD_INPUT = [
    ("unknown config key", {"repo": {"url": "URL", "brnach": "main"}}, [],
     "repo.brnach: unknown key; did you mean repo.branch?"),
    ("missing branch", {"repo": {"url": "URL", "branch": "nope"}}, [],
     "branch 'nope' not found"),
    ("missing playbook", {"playbooks": ["nope.yml"]}, [],
     "playbooks[0]: 'nope.yml' not found in the repository"),
    ("playbook outside the repo", {"playbooks": ["../site.yml"]}, [],
     "playbooks[0]: '../site.yml' leaves the repository"),
    ("host not in the inventory", {}, ["--limit", "nothere"],
     "command line: --limit: 'nothere' matches no host or group of inventory/hosts.yml, which "
     "has 2 host(s): alpha, beta; groups: pets; fix the limit"),
    ("playbook on the command line missing", {}, ["nope.yml"],
     "command line: PLAYBOOK #1: 'nope.yml' not found in the repository at this commit "
     "(playbooks at its top: site.yml); name one of them"),
]


@pytest.mark.parametrize(("case", "settings", "args", "expected"), BAD_INPUT,
                         ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gives_one_clear_error_and_changes_nothing(pets, remote, host_pool, tmp_path,
                                                             case, settings, args, expected):
    before = snapshot(pets, remote, host_pool)
    for key, value in settings.items():
        if isinstance(value, dict):
            settings[key] = {k: remote.url if v == "URL" else v for k, v in value.items()}
    bad = write_agent_config(tmp_path / "bad.yml", remote.url, load_config(pets).state_dir,
                             host_pool, **settings)
    r = petkeeper("--config", str(bad), "check", *args)

    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("petkeeper: error: "), r.stderr
    assert expected in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert snapshot(pets, remote, host_pool) == before


@pytest.mark.parametrize(("case", "files", "expected"), [
    ("symlinked playbook leaving the repo", {},
     "security: {CONFIG}: playbooks[0]: 'site.yml' resolves outside the "
     "repository (to /etc/passwd), so the whole commit is refused"),
    ("inventory Ansible cannot parse", {"inventory/hosts.yml": "all: [\n"},
     "inventory/hosts.yml: "),
    ("playbook Ansible refuses", {"site.yml": "- hosts: all\n  tasks: {bad\n"},
     "site.yml: Ansible refused to run it"),
], ids=["symlink", "inventory", "playbook"])
def test_bad_repo_content_is_refused_and_the_last_good_commit_checked_and_reported(
        pets, remote, host_pool, case, files, expected):
    good = remote.rev("main")  # the module baseline checked it
    _, _, before_host = snapshot(pets, remote, host_pool)
    if not files:  # a symlink cannot be written as text: make it in the clone
        (remote.work / "site.yml").unlink()
        os.symlink("/etc/passwd", remote.work / "site.yml")
    bad = remote.commit(files, f"Break the repo: {case}")
    r = petkeeper("--config", str(pets), "check")

    # Issue 22, item 6: the refusal is one clear error line, and the last good commit is
    # still checked: its reports, status and exit 1 say the head was refused and why.
    why = f"source commit {bad[:12]} refused: " + expected.replace("{CONFIG}", str(pets))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    [line] = [ln for ln in r.stderr.splitlines() if "refused" in ln]
    assert line.startswith(f"petkeeper: error: {why}") and line.endswith(
        f"; checking the last good commit {good[:12]}"), r.stderr
    report = yaml.safe_load(remote.show(BETA_REPORTS, "hosts/beta.yml"))
    assert report["source_sha"] == good and report["source_refused"].startswith(why)
    status = json.loads(petkeeper("--config", str(pets), "status", "--json").stdout)
    assert status["hosts"]["beta"]["source_rejected"].startswith(why)
    assert status["last_run"]["exit_code"] == 1
    assert snapshot(pets, remote, host_pool)[2] == before_host  # nothing applied


def test_unreachable_repo_on_first_run_is_one_clear_error(host_pool, tmp_path):
    cfg = write_agent_config(tmp_path / "agent.yml", f"file://{tmp_path}/missing.git",
                             tmp_path / "state", host_pool)
    r = petkeeper("--config", str(cfg), "check")
    assert r.returncode == 1
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("petkeeper: error: git fetch file://") and "missing.git" in line
    assert not (tmp_path / "state" / "status.json").exists()


def test_second_cycle_is_refused_while_one_runs_and_a_killed_holder_frees_the_lock(pets):
    state = load_config(pets).state_dir
    state.mkdir(mode=0o700, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from agent.adapters.state import StateDir, cycle_lock\n"
         f"with cycle_lock(StateDir(Path({str(state)!r})), 'petkeeper check'):\n"
         "    print('locked', flush=True); time.sleep(120)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        r = petkeeper("--config", str(pets), "check")
        assert r.returncode == 1
        assert f"another cycle is running (pid {holder.pid}" in r.stderr
        assert "--wait" in r.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    with cycle_lock(StateDir(state), "the next cycle"):  # LockedError if it were still held
        pass


def test_hung_playbook_is_killed_at_the_timeout_and_releases_the_lock(pets, remote, host_pool,
                                                                     tmp_path):
    remote.commit({"site.yml": "- hosts: all\n  gather_facts: false\n  tasks:\n"
                               "    - name: Hang\n      ansible.builtin.command: sleep 600\n"
                               "      check_mode: false\n"})
    cfg = write_agent_config(tmp_path / "agent.yml", remote.url, tmp_path / "state", host_pool,
                             limit="alpha", ansible={
                                 "private_key_file": str(host_pool.client_key),
                                 "known_hosts_file": str(host_pool.known_hosts),
                                 "timeout": "4s"})
    config = load_config(cfg)
    started = time.monotonic()
    cycle = run_check(config)
    elapsed = time.monotonic() - started

    assert cycle.hosts["alpha"].status == "unknown"
    assert cycle.exit_code == 1
    assert elapsed < 60
    assert processes_in(config.state_dir / "trees") == {}
    with cycle_lock(StateDir(config.state_dir), "the next cycle"):  # the lock is free again
        pass
