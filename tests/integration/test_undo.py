"""Undo an apply, end to end on a real SSH test host: snapshot before the apply, an undo plan
with its own id and diffs back to the hand edits, approved, applied by run, recorded with its
trailer; the host held until release; conflicts refused without --force-conflicts.

One host of its own (127.0.103.x) and one converged state for the whole module: the tests
run in order, each from where the one before left the host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.testhosts import TestHostPool
from tests import conftest
from tests.conftest import (
    GitRemote,
    converge,
    pets_repo_files,
    require_test_hosts,
    write_agent_config,
)
from tests.integration.test_kill_each_step import KILLER

pytestmark = pytest.mark.hosts

ADDRESS = "127.0.103.11"
# The suite's playbook, whose pet config also sets its owner: an undo puts the hand-set one back.
PLAYBOOK = conftest.PLAYBOOK.replace('''mode: "0644"
      tags: [conf]''', '''mode: "0644"
        owner: root
        group: root
      tags: [conf]''')
HAND_MOTD = "Hand edit: the db fix of 3am, keep it\n"
HAND_CONF = "mode=emergency\n"
STAT = "stat -c '%a %U %G' /etc/motd /etc/pet.conf"


class Pet:
    """The module's host, repo, config and the ids the tests pass on."""

    def __init__(self, pool: TestHostPool, remote: GitRemote, config: Path) -> None:
        self.pool, self.remote, self.config = pool, remote, config
        self.ids: dict[str, str] = {}

    def sh(self, command: str) -> str:
        return self.pool.run("pet", command).stdout

    def cli(self, *args: str, json_out: bool = True) -> tuple[int, Any, str]:
        env = {**os.environ, "SUDO_USER": "alice"}
        r = subprocess.run([sys.executable, "-m", "agent", "--config", str(self.config), *args,
                            *(["--json"] if json_out else [])], capture_output=True, text=True,
                           timeout=300, env=env, stdin=subprocess.DEVNULL)
        return r.returncode, json.loads(r.stdout) if json_out and r.stdout.strip() else \
            r.stdout, r.stderr

    def hand_edit(self) -> None:
        self.sh(f"printf '{HAND_MOTD}' > /etc/motd && printf '{HAND_CONF}' > /etc/pet.conf && "
                "chmod 0600 /etc/motd && chmod 0640 /etc/pet.conf && "
                "chown nobody:nogroup /etc/motd /etc/pet.conf")


@pytest.fixture(scope="module")
def pet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pet]:
    """One host converged by the repo, then edited by hand (content, mode, owner)."""
    require_test_hosts()
    tmp = tmp_path_factory.mktemp("undo")
    with TestHostPool(tmp / "hosts") as pool:
        host = pool.start("pet", ADDRESS)
        install_etckeeper(pool)
        remote = GitRemote(tmp / "git")
        files = pets_repo_files({"pet": (host.address, host.port)})
        files["site.yml"] = PLAYBOOK
        files["petkeeper/policy.yml"] = yaml.safe_dump({"default": "auto"})
        remote.commit(files)
        converge(pool, remote, "pet", tmp)
        config = write_agent_config(tmp / "agent.yml", remote.url, tmp / "state", pool,
                                    post_apply_tests=False)
        p = Pet(pool, remote, config)
        p.hand_edit()
        yield p


def install_etckeeper(pool: TestHostPool) -> None:
    """etckeeper in the host's own overlay (/usr, /var, /etc), from the package .ci/setup
    fetched: the machine itself does not get it."""
    debs = sorted(Path("/var/cache/apt/archives").glob("etckeeper_*.deb"))
    if not debs:
        pytest.fail("etckeeper's package is not in /var/cache/apt/archives: run .ci/setup")
    pool.run("pet", f"dpkg -i {debs[-1]} >/dev/null 2>&1 || dpkg -i {debs[-1]}")
    assert pool.run("pet", "test -x /usr/bin/etckeeper && git -C /etc log --format=%s").stdout


def test_auto_apply_snapshots_and_marks_the_command_irreversible(pet: Pet):
    _, planned, _ = pet.cli("plan")
    changes = {c["task"]: c for c in planned["hosts"]["pet"]["changes"]}
    assert changes["Refresh the package cache"]["irreversible"].startswith("a command")
    assert changes["Write the pet config"]["paths"] == ["/etc/pet.conf"]
    assert "irreversible" not in changes["Write the pet config"]  # shown only when set

    _code, ran, err = pet.cli("run")
    [applied] = ran["applies"]
    assert applied["result"] == "converged", (applied["message"], err[-3000:])
    assert applied["apply_id"] == f"{ran['run_id']}/pet"
    pet.ids["apply"] = applied["apply_id"]
    assert pet.sh("cat /etc/motd") == "Managed by Petkeeper\n"
    files = {f["path"]: f for f in applied["snapshot"]["files"]}
    assert (files["/etc/motd"]["before"]["mode"], files["/etc/motd"]["after"]["mode"]) == \
        ("0600", "0644")
    conf = files["/etc/pet.conf"]
    assert (conf["before"]["owner"], conf["after"]["owner"]) == ("nobody", "root")
    assert [i["task"] for i in applied["snapshot"]["irreversible"]] == \
        ["Refresh the package cache"]
    # Only hashes and metadata leave the state directory; the bytes stay in it.
    # (The record's diffs show the hand edit as every drift report does, masked alike.)
    record = yaml.safe_load(pet.remote.show("petkeeper/hosts/pet", "applies/pet.yml"))
    snapshot = yaml.safe_dump(record["snapshot"])
    assert "Hand edit" not in snapshot and files["/etc/motd"]["before"]["sha256"] in snapshot
    state = Path(yaml.safe_load(pet.config.read_text())["state_dir"])
    blob = state / "undo" / "blobs" / files["/etc/motd"]["before"]["sha256"]
    assert blob.read_text() == HAND_MOTD
    assert oct(os.stat(state).st_mode & 0o777) == "0o700"
    history = pet.cli("history", "pet", json_out=False)[1]
    assert f"apply id {pet.ids['apply']}" in history
    # undo.etckeeper: auto: the host's own history has the hand edit and the correction.
    etc = pet.sh("git -C /etc log --format=%s").splitlines()
    plan = applied["plan_id"]
    assert etc[:2] == [f"petkeeper: after plan {plan}", f"petkeeper: before plan {plan}"], etc
    assert HAND_MOTD.strip() in pet.sh("git -C /etc show HEAD~1:motd")


def test_undo_plan_shows_the_diffs_back_to_the_hand_edits_and_what_it_cannot_undo(pet: Pet):
    code, plan, err = pet.cli("undo", pet.ids["apply"])
    assert code == 2, err
    assert plan["action"] == "wait" and plan["conflicts"] == []
    assert {f["path"]: f["action"] for f in plan["files"]} == {
        "/etc/motd": "restore", "/etc/pet.conf": "restore"}
    diffs = "".join(c["diff"] for c in plan["changes"])
    assert "-Managed by Petkeeper" in diffs and f"+{HAND_MOTD.strip()}" in diffs
    assert [i["task"] for i in plan["irreversible"]] == ["Refresh the package cache"]
    pet.ids["undo_plan"] = plan["plan_id"]
    text = pet.cli("undo", "--host", "pet", json_out=False)[1]
    assert f"plan {plan['plan_id']}" in text and "irreversible: Refresh the package cache" in text

    code, ran, _ = pet.cli("run")  # not approved: policy auto never applies an undo
    assert ran["applies"] == [] and pet.sh("cat /etc/motd") == "Managed by Petkeeper\n"


def test_approved_undo_restores_bytes_mode_and_owner_and_holds_the_host(pet: Pet):
    code, _out, err = pet.cli("approve", pet.ids["undo_plan"], json_out=False)
    assert code == 0, err
    code, ran, err = pet.cli("run")
    [undo] = ran["applies"]
    assert undo["result"] == "undone" and undo["undo_of"] == pet.ids["apply"], (undo, err)
    assert pet.sh("cat /etc/motd") == HAND_MOTD and pet.sh("cat /etc/pet.conf") == HAND_CONF
    assert pet.sh(STAT).split("\n")[:2] == ["600 nobody nogroup", "640 nobody nogroup"]
    trailers = pet.remote.log("pet", "%(trailers)%x00")
    assert any(f"Petkeeper-Undo: {pet.ids['apply']}" in t for t in trailers)

    code, held, _ = pet.cli("run")  # the host drifts from Git, and is held
    assert held["applies"] == [] and held["plans"]["pet"]["action"] == "wait"
    assert f"held by undo of {pet.ids['apply']} (alice, " in held["plans"]["pet"]["reason"]
    assert pet.sh("cat /etc/motd") == HAND_MOTD
    status = pet.cli("status", json_out=False)[1]
    assert f"held by undo of {pet.ids['apply']}" in status
    report = pet.remote.show("petkeeper/hosts/pet", "hosts/pet.yml")
    assert f"# held by undo of {pet.ids['apply']} (alice, " in report


def test_release_lets_the_correction_come_back(pet: Pet):
    code, out, err = pet.cli("release", "pet", json_out=False)
    assert code == 0 and "released pet" in out, err
    code, ran, err = pet.cli("run")
    [applied] = ran["applies"]
    assert applied["result"] == "converged", (applied["message"], err[-3000:])
    assert pet.sh("cat /etc/motd") == "Managed by Petkeeper\n"
    pet.ids["second"] = applied["apply_id"]


def test_a_file_changed_again_since_the_apply_is_a_conflict_refused_without_force(pet: Pet):
    pet.sh("printf 'changed again\\n' > /etc/motd")
    code, plan, err = pet.cli("undo", "--host", "pet")
    assert plan["apply_id"] == pet.ids["second"] and plan["conflicts"] == ["/etc/motd"], err
    code, _, err = pet.cli("approve", plan["plan_id"], json_out=False)
    assert code == 1 and "--force-conflicts" in err and "/etc/motd" in err
    state = Path(yaml.safe_load(pet.config.read_text())["state_dir"])
    assert not (state / "undo" / "approvals" / f"{plan['plan_id']}.json").exists()
    assert pet.sh("cat /etc/motd") == "changed again\n"  # untouched

    code, _out, err = pet.cli("approve", plan["plan_id"], "--force-conflicts", json_out=False)
    assert code == 0, err
    code, ran, err = pet.cli("run")  # the undo first; the auto correction then waits
    assert [a["result"] for a in ran["applies"]] == ["undone"], (ran["applies"], err)
    assert pet.sh("cat /etc/motd") == HAND_MOTD


def test_an_undo_killed_while_restoring_is_recorded_interrupted_and_never_run_twice(pet: Pet):
    assert pet.cli("release", "pet", json_out=False)[0] == 0
    [applied] = pet.cli("run")[1]["applies"]
    _, plan, _ = pet.cli("undo", "--host", "pet")
    assert plan["apply_id"] == applied["apply_id"] and plan["conflicts"] == []
    assert pet.cli("approve", plan["plan_id"], json_out=False)[0] == 0
    # Killed where the restore play would start (its 1st call is the survey's check run).
    killed = subprocess.run([sys.executable, "-c", KILLER, "agent.cycle.undo:run_restore", "2",
                             "--config", str(pet.config), "run"], capture_output=True,
                            text=True, timeout=300, start_new_session=True,
                            stdin=subprocess.DEVNULL)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert pet.sh("cat /etc/motd") == "Managed by Petkeeper\n"  # nothing restored

    _, ran, err = pet.cli("run")
    assert [(a["result"], a["undo_of"]) for a in ran["applies"]] == \
        [("interrupted", plan["apply_id"])], err
    assert ran["plans"]["pet"]["action"] == "nothing"  # clean, and the undo not run again
    assert pet.sh("cat /etc/motd") == "Managed by Petkeeper\n"
    subjects = pet.remote.log("pet")
    assert f"pet: undo of {plan['apply_id']} (plan {plan['plan_id']}): interrupted" in subjects
    assert "held by undo" in pet.cli("status", json_out=False)[1]  # held from its start
