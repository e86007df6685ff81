"""Undo an apply, end to end on a real SSH test host: snapshot before the apply, an undo plan
with its own id and diffs back to the hand edits, approved in Git, applied by run, recorded with
its trailer; the package and command changes it cannot put back listed before and after; the host
held until release; a conflict refused without --force-conflicts; a forced undo killed after
its restore recorded interrupted and never run twice.

One host of its own (127.0.103.x) and one state for the whole module: the tests run in order,
each from where the one before left the host. (Cheap pure parts are unit tests:
tests/unit/test_undo_core.py, test_undo_plans.py, test_output.py, test_fleet_cli.py.)"""

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
from tests.conftest import GitRemote, pets_repo_files, require_test_hosts, write_agent_config
from tests.integration.test_kill_each_step import KILLER

pytestmark = pytest.mark.hosts

ADDRESS = "127.0.103.11"
PROBE = "petkeeper-probe"  # a package of no content, built on the host: installing it is cheap
# The suite's playbook, whose pet config also sets its owner (an undo puts the hand-set one
# back), and a package install.
PLAYBOOK = conftest.PLAYBOOK.replace('''mode: "0644"
      tags: [conf]''', '''mode: "0644"
        owner: root
        group: root
      tags: [conf]''') + f"""\
    - name: Install the probe package
      ansible.builtin.apt:
        deb: /srv/{PROBE}.deb
      tags: [conf]
"""
HAND_MOTD = "Hand edit: the db fix of 3am, keep it\n"
HAND_CONF = "mode=emergency\n"
STAT = "stat -c '%a %U %G' /etc/motd /etc/pet.conf"
INSTALLED = f"dpkg-query -W -f='${{Status}}' {PROBE}"
IRREVERSIBLE = ["Refresh the package cache", "Install the probe package"]
ADMIN = "Admin <admin@test.invalid>"  # who commits to the test repo (tests.conftest.GitRemote)


class Pet:
    """The module's host, repo, config and the ids the tests pass on."""

    def __init__(self, pool: TestHostPool, remote: GitRemote, config: Path) -> None:
        self.pool, self.remote, self.config = pool, remote, config
        self.state = Path(yaml.safe_load(config.read_text())["state_dir"])
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
    """One fresh host whose motd and pet config a person wrote by hand (content, mode,
    owner), with etckeeper, and the probe package to install; the repo's policy is auto."""
    require_test_hosts()
    tmp = tmp_path_factory.mktemp("undo")
    with TestHostPool(tmp / "hosts") as pool:
        host = pool.start("pet", ADDRESS)
        install_etckeeper(pool)
        build_probe_package(pool)
        remote = GitRemote(tmp / "git")
        files = pets_repo_files({"pet": (host.address, host.port)})
        files["site.yml"] = PLAYBOOK
        files["petkeeper/policy.yml"] = yaml.safe_dump({"default": "auto"})
        remote.commit(files)
        config = write_agent_config(tmp / "agent.yml", remote.url, tmp / "state", pool,
                                    post_apply_tests=False)
        p = Pet(pool, remote, config)
        p.hand_edit()
        yield p


def build_probe_package(pool: TestHostPool) -> None:
    """The probe package's .deb, built on the host with its own dpkg-deb (no network). The
    host's apt lists go (its own overlay: the machine keeps them): with only dpkg's status
    to read, each run of the apt module takes 0.3 s instead of 4."""
    control = (f"Package: {PROBE}\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: Petkeeper "
               "tests <tests@petkeeper.invalid>\\nDescription: a package an undo cannot remove")
    pool.run("pet", f"mkdir -p /srv/probe/DEBIAN && printf '{control}\\n' > "
             f"/srv/probe/DEBIAN/control && dpkg-deb --build /srv/probe /srv/{PROBE}.deb && "
             "test \"$(hostname)\" = pet && find /var/lib/apt/lists -maxdepth 1 -type f -delete")


def install_etckeeper(pool: TestHostPool) -> None:
    """etckeeper in the host's own overlay (/usr, /var, /etc), from the package .ci/setup
    fetched: the machine itself does not get it."""
    debs = sorted(Path("/var/cache/apt/archives").glob("etckeeper_*.deb"))
    if not debs:
        pytest.fail("etckeeper's package is not in /var/cache/apt/archives: run .ci/setup")
    pool.run("pet", f"dpkg -i {debs[-1]} >/dev/null 2>&1 || dpkg -i {debs[-1]}")
    assert pool.run("pet", "test -x /usr/bin/etckeeper && git -C /etc log --format=%s").stdout


def reports_before_the_apply(pet: Pet) -> dict[str, Any]:
    """The host's newest drifted report: the one the run committed before applying."""
    commit = next(line.split()[0] for line in pet.remote.log("pet", "%H %s")
                  if line.split(" ", 1)[1].startswith("pet: drifted"))
    return yaml.safe_load(pet.remote.show(commit, "hosts/pet.yml"))


def test_auto_apply_snapshots_and_marks_the_package_and_the_command_irreversible(pet: Pet):
    _code, ran, err = pet.cli("run")
    [applied] = ran["applies"]
    assert applied["result"] == "converged", (applied["message"], err[-3000:])
    assert applied["apply_id"] == f"{ran['run_id']}/pet"
    pet.ids["apply"] = applied["apply_id"]
    assert pet.sh("cat /etc/motd") == "Managed by Petkeeper\n"
    assert pet.sh(INSTALLED) == "install ok installed"
    # Marked in the plan before it was applied (or, under policy approve, approved): the
    # report the run committed first shows the plan and each change's mark.
    planned = reports_before_the_apply(pet)
    assert planned["plan"]["id"] == applied["plan_id"]
    changes = {c["task"]: c for c in planned["changes"]}
    assert changes["Install the probe package"]["irreversible"] == \
        "a package install or removal"
    assert changes["Refresh the package cache"]["irreversible"].startswith("a command")
    assert changes["Write the pet config"]["paths"] == ["/etc/pet.conf"]
    assert "irreversible" not in changes["Write the pet config"]  # shown only when set

    files = {f["path"]: f for f in applied["snapshot"]["files"]}
    assert (files["/etc/motd"]["before"]["mode"], files["/etc/motd"]["after"]["mode"]) == \
        ("0600", "0644")
    conf = files["/etc/pet.conf"]
    assert (conf["before"]["owner"], conf["after"]["owner"]) == ("nobody", "root")
    assert [i["task"] for i in applied["snapshot"]["irreversible"]] == IRREVERSIBLE
    # Only hashes and metadata leave the state directory; the bytes stay in it.
    # (The record's diffs show the hand edit as every drift report does, masked alike.)
    record = yaml.safe_load(pet.remote.show("petkeeper/hosts/pet", "applies/pet.yml"))
    snapshot = yaml.safe_dump(record["snapshot"])
    assert "Hand edit" not in snapshot and files["/etc/motd"]["before"]["sha256"] in snapshot
    blob = pet.state / "undo" / "blobs" / files["/etc/motd"]["before"]["sha256"]
    assert blob.read_text() == HAND_MOTD
    assert oct(os.stat(pet.state).st_mode & 0o777) == "0o700"
    history = pet.cli("history", "pet")[1]  # its text: tests/unit/test_apply_records.py
    assert [e["trailers"]["Petkeeper-Apply"] for e in history
            if "Petkeeper-Apply" in e["trailers"]] == [pet.ids["apply"]]
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
    assert [i["task"] for i in plan["irreversible"]] == IRREVERSIBLE
    pet.ids["undo_plan"] = plan["plan_id"]
    # Not approved, it is not applied, policy auto or not: tests/unit/test_undo_plans.py.


def test_approved_undo_restores_bytes_mode_and_owner_and_holds_the_host(pet: Pet):
    # Approved in Git like any plan (`petkeeper approve`: the conflict case below).
    pet.remote.commit({"approvals/pet.yml": yaml.safe_dump(
        {"host": "pet", "plan": pet.ids["undo_plan"], "expires": "8h"})}, "Undo pet's apply")
    _code, ran, err = pet.cli("run")
    [undo] = ran["applies"]
    assert undo["result"] == "undone" and undo["undo_of"] == pet.ids["apply"], (undo, err)
    assert undo["approval"]["how"] == "git" and undo["approved_by"] == ADMIN, undo
    assert pet.sh("cat /etc/motd") == HAND_MOTD and pet.sh("cat /etc/pet.conf") == HAND_CONF
    assert pet.sh(STAT).split("\n")[:2] == ["600 nobody nogroup", "640 nobody nogroup"]
    # What the undo could not put back: still there, and listed again in its record.
    assert pet.sh(INSTALLED) == "install ok installed"
    [message] = [m for m in pet.remote.log("pet", "%B%x00")
                 if f"Petkeeper-Undo: {pet.ids['apply']}" in m]
    assert "Irreversible (an undo cannot put back): Refresh the package cache (a command" in \
        message and "Install the probe package (a package install or removal)" in message

    _code, held, _ = pet.cli("run")  # the host drifts from Git, and is held
    assert held["applies"] == [] and held["plans"]["pet"]["action"] == "wait"
    assert f"held by undo of {pet.ids['apply']} ({ADMIN}, " in held["plans"]["pet"]["reason"]
    assert pet.sh("cat /etc/motd") == HAND_MOTD
    status = pet.cli("status", json_out=False)[1]
    assert f"held by undo of {pet.ids['apply']}" in status
    report = pet.remote.show("petkeeper/hosts/pet", "hosts/pet.yml")
    assert f"# held by undo of {pet.ids['apply']} ({ADMIN}, " in report


def test_release_lets_the_correction_come_back(pet: Pet):
    code, out, err = pet.cli("release", "pet", json_out=False)
    assert code == 0 and "released pet" in out, err
    code, ran, err = pet.cli("run")
    [applied] = ran["applies"]
    assert applied["result"] == "converged", (applied["message"], err[-3000:])
    assert pet.sh("cat /etc/motd") == "Managed by Petkeeper\n"
    pet.ids["second"] = applied["apply_id"]


def test_a_conflict_is_refused_without_force_and_a_forced_undo_killed_is_never_run_twice(
        pet: Pet):
    pet.sh("printf 'changed again\\n' > /etc/motd")
    code, plan, err = pet.cli("undo", "--host", "pet")
    assert plan["apply_id"] == pet.ids["second"] and plan["conflicts"] == ["/etc/motd"], err
    assert {f["path"]: f["action"] for f in plan["files"]} == {
        "/etc/motd": "conflict", "/etc/pet.conf": "restore"}
    code, _, err = pet.cli("approve", plan["plan_id"], json_out=False)
    assert code == 1 and "--force-conflicts" in err and "/etc/motd" in err
    assert not (pet.state / "undo" / "approvals" / f"{plan['plan_id']}.json").exists()
    assert pet.sh("cat /etc/motd") == "changed again\n"  # untouched

    code, _out, err = pet.cli("approve", plan["plan_id"], "--force-conflicts", json_out=False)
    assert code == 0, err
    # Killed after its restore, where the undo reads the files again (its 2nd read; the 1st
    # is its re-survey): restored as forced, the approval spent, no record yet.
    killed = subprocess.run([sys.executable, "-c", KILLER, "agent.cycle.undo:read_files", "2",
                             "--config", str(pet.config), "run"], capture_output=True,
                            text=True, timeout=300, start_new_session=True,
                            stdin=subprocess.DEVNULL, env={**os.environ, "SUDO_USER": "alice"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert pet.sh("cat /etc/motd") == HAND_MOTD  # the conflict overwritten, as approved
    assert pet.sh("cat /etc/pet.conf") == HAND_CONF
    pet.sh("printf 'after the kill\\n' > /etc/motd")  # an undo run again would put it back

    _, ran, err = pet.cli("run")
    assert [(a["result"], a["undo_of"]) for a in ran["applies"]] == \
        [("interrupted", plan["apply_id"])], err
    assert pet.sh("cat /etc/motd") == "after the kill\n"  # the undo not run again
    held = ran["plans"]["pet"]  # held from the undo's start: nothing corrected either
    assert held["action"] == "wait" and f"held by undo of {plan['apply_id']}" in held["reason"]
    undone = [s for s in pet.remote.log("pet") if s.startswith(f"pet: undo of {plan['apply_id']}")]
    assert undone == [f"pet: undo of {plan['apply_id']} (plan {plan['plan_id']}): interrupted"]
