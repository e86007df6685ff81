"""Drift detectability: Petkeeper's own check reports exactly the drift side_effect.yml made.

Molecule's verify step runs this file after converge and side_effect (see ../molecule.yml for
the sequence). It does what the agent does, through the agent's code: a check-mode run of the
same playbook with ``agent.adapters.runner.run_playbook``, read into per-host reports by
``agent.core.drift.build_host_reports`` (structured events, never printed output), then an apply
and a re-check. The fixtures chain in that order whatever order the tests run in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.adapters.runner import PlaybookRun, RunResult, run_playbook
from agent.core.drift import CLEAN, DRIFTED, HostReport, build_host_reports


def molecule_path(variable: str) -> Path:
    """A path Molecule passes to its verifier in the environment."""
    try:
        return Path(os.environ[variable])
    except KeyError:
        raise RuntimeError(f"${variable} is not set: run this file through Molecule "
                           "(molecule test -s drift, or molecule verify -s drift)") from None


SCENARIO = molecule_path("MOLECULE_SCENARIO_DIRECTORY")
EPHEMERAL = molecule_path("MOLECULE_EPHEMERAL_DIRECTORY")
INVENTORY = molecule_path("MOLECULE_INVENTORY_FILE").parent  # with the linked group_vars
TESTHOSTS = EPHEMERAL / "testhosts"  # create.yml's link to the hosts' folder
CONVERGE = (SCENARIO.parent / "default" / "converge.yml").resolve()  # what converge applied
HOSTS = ("mol1",)
RUN_TIMEOUT = 600.0  # each playbook run; about 40-130 s on 2 busy CPUs

# What side_effect.yml did, as the (role, task) that must put it back.
MOTD = ("baseline", "Write the message of the day")
SYSCTL = ("baseline", "Write the kernel parameters file (applied at next boot only)")
SSH_FOLDERS = ("users", "Create the admins' .ssh folders")
SSH_KEYS = ("users", "Write the admins' authorized keys")
EXPECTED_DRIFT = {
    "mol1": {
        MOTD,  # a note added to /etc/motd
        # alice removed, home kept (`userdel alice`): the account only; her ~/.ssh is still
        # there, and check mode must not fail on its owner, who does not exist yet;
        # bob removed with his home (`userdel -r bob`): the account, his ~/.ssh and its
        # authorized_keys (test_check_diffs_show_the_hand_edits: bob's alone)
        ("users", "Create or remove the admin users"),
        SSH_FOLDERS,
        SSH_KEYS,
        SYSCTL,  # tcp_syncookies turned off in /etc/sysctl.d/60-petkeeper.conf
    },
}


@dataclass(frozen=True)
class Reconciled:
    apply: RunResult
    recheck: dict[str, HostReport]


def run(ident: str, *, check: bool) -> tuple[RunResult, dict[str, HostReport]]:
    """Run converge.yml on the scenario's hosts as the agent does; return the run and reports."""
    assert os.environ.get("ANSIBLE_ROLES_PATH"), "run through `molecule verify`: it sets the " \
        "roles path and the inventory this test needs"
    playbook = PlaybookRun(
        tree=CONVERGE.parent, playbook=CONVERGE.name, inventory=INVENTORY, limit=",".join(HOSTS),
        check=check, ident=ident, timeout=RUN_TIMEOUT,
        private_key_file=str(TESTHOSTS / "client_key"),
        known_hosts_file=str(TESTHOSTS / "known_hosts"))
    result = run_playbook(playbook, EPHEMERAL / "petkeeper-runner")
    assert result.started, result.error
    reports = build_host_reports(result.events, HOSTS, tree_root=str(CONVERGE.parent),
                                 facts=result.facts)
    return result, reports


def drift_of(report: HostReport) -> set[tuple[str, str]]:
    """The (role, task) pairs that would change the host. Check-blind entries (tasks whose
    outcome check mode cannot know) do not make drift, so they are left out explicitly."""
    return {(c.role or "", c.task) for c in report.changes if not c.check_blind}


@pytest.fixture(scope="module")
def drift_check() -> dict[str, HostReport]:
    _, reports = run("drift-check", check=True)
    return reports


@pytest.fixture(scope="module")
def reconciled(drift_check: dict[str, HostReport]) -> Reconciled:
    # Depends on drift_check: the check must see the hand-made drift before the apply.
    applied, _ = run("drift-apply", check=False)
    _, recheck = run("drift-recheck", check=True)
    return Reconciled(applied, recheck)


def test_check_reports_exactly_the_injected_drift(drift_check: dict[str, HostReport]) -> None:
    assert set(drift_check) == set(HOSTS)
    found = {name: drift_of(report) for name, report in drift_check.items()}
    assert found == EXPECTED_DRIFT
    for name, report in drift_check.items():
        assert report.status == DRIFTED, (name, report.message)
        # Every task was checked: none failed in check mode on drift made by hand.
        assert not report.partial, (name, report.message)
        assert [c.task for c in report.changes if c.error] == [], name


def test_check_diffs_show_the_hand_edits(drift_check: dict[str, HostReport]) -> None:
    diffs = {(name, (c.role, c.task)): c.diff for name, report in drift_check.items()
             for c in report.changes}
    assert "\n-Back at 5pm -- bob\n" in diffs["mol1", MOTD]
    assert "\n-net.ipv4.tcp_syncookies = 0\n" in diffs["mol1", SYSCTL]
    assert "\n+net.ipv4.tcp_syncookies = 1\n" in diffs["mol1", SYSCTL]
    # The ~/.ssh tasks would recreate bob's, whose home went; alice's, kept, is not drift.
    for task in (SSH_FOLDERS, SSH_KEYS):
        assert "/home/bob/.ssh" in diffs["mol1", task], diffs["mol1", task]
        assert "/home/alice" not in diffs["mol1", task], diffs["mol1", task]


def test_apply_then_recheck_is_clean(reconciled: Reconciled) -> None:
    assert (reconciled.apply.status, reconciled.apply.rc) == ("successful", 0), \
        reconciled.apply.error
    assert {name: r.status for name, r in reconciled.recheck.items()} == \
        {name: CLEAN for name in HOSTS}
    assert {name: drift_of(r) for name, r in reconciled.recheck.items()} == \
        {name: set() for name in HOSTS}
