"""Content shaped like a widely used hardening collection, on a real SSH test host: what check
mode can and cannot see, and what happens to a check that stops at a check-mode failure.

The repo is tests/integration/hardening_shapes/ (its README says which shapes of the dev-sec
roles it reproduces), with `default: auto` as its policy. One host of this module's own
(127.0.96.21) is converged once, then edited by hand once: a line appended to the limits file
that a `when: not ansible_check_mode` task manages, and `userdel carol` (home kept). Everything
else reads the cycles the module runs, in order: a `run` whose check is partial, so that
policy auto applies nothing; approvals; a `run` that applies.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.adapters.state import StateDir, read_json
from agent.config import load_config
from agent.cycle.steps import RUN_STEPS, run_cycle
from agent.operate.output import render_check
from agent.testhosts import TestHostPool
from tests.conftest import GitRemote, converge, require_test_hosts, write_agent_config
from tests.unit.test_cli import Run, cli  # noqa: F401 (the in-process fixture)

pytestmark = pytest.mark.hosts

SHAPES = Path(__file__).parent / "hardening_shapes"
ADDRESS = "127.0.96.21"  # this module's own host (the drift work's address block)
LIMITS = "/etc/security/limits.d/10.hardcore.conf"
HAND_EDIT = "* soft nofile 1"
HIDDEN = "Create additional limits config file -> 10.hardcore.conf | sysctl"
ACCOUNT = ("accounts", "Create the operator account")
SSH_FOLDER = ("accounts", "Create the operator's .ssh folder")


@dataclass(frozen=True)
class Shapes:
    pool: TestHostPool
    config: Path
    first: dict[str, Any]  # the first `run --json`, after the hand edits
    first_exit: int
    carol_after_first: int  # `id carol`'s exit status right after it: 1, no such user


def run(config: Path) -> tuple[dict[str, Any], int]:
    cycle = run_cycle(load_config(config), RUN_STEPS, "run")
    return cycle.as_json(), cycle.exit_code


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shapes]:
    require_test_hosts()
    tmp = tmp_path_factory.mktemp("shapes")
    with TestHostPool(tmp / "hosts") as pool:
        host = pool.start("pet1", ADDRESS)
        remote = GitRemote(tmp / "git")
        files = {str(p.relative_to(SHAPES)): p.read_text() for p in SHAPES.rglob("*.yml")}
        inventory = {"all": {
            "vars": {"ansible_user": "root", "ansible_python_interpreter": "/usr/bin/python3"},
            "children": {"pets": {"hosts": {"pet1": {"ansible_host": host.address,
                                                      "ansible_port": host.port}}}}}}
        files["inventory/hosts.yml"] = yaml.safe_dump(inventory)
        files["petkeeper/policy.yml"] = "default: auto\n"
        remote.commit(files)
        converge(pool, remote, "pet1", tmp)
        pool.run("pet1", f"echo '{HAND_EDIT}' >> {LIMITS} && userdel carol")
        config = write_agent_config(tmp / "agent.yml", remote.url, tmp / "state", pool)
        first, code = run(config)
        carol = pool.run("pet1", "id carol", check=False).returncode
        yield Shapes(pool, config, first, code, carol)


def changes(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["role"], c["task"]): c for c in report["hosts"]["pet1"]["changes"]}


# --- what check mode can and cannot see (issue: real-world content, 1-3 and small things) ---

def test_an_empty_loop_and_a_changed_when_false_command_are_not_listed(shapes: Shapes):
    tasks = {task for _, task in changes(shapes.first)}

    assert "Remove the packages not wanted" not in tasks  # a loop over []
    assert "Find the cron folders" not in tasks  # changed_when: false


def test_a_task_hidden_from_check_mode_is_listed_as_check_blind_every_time(shapes: Shapes):
    hidden = changes(shapes.first)[("hardening", HIDDEN)]

    assert (hidden["check_blind"], hidden["diff"], hidden["module"]) == (
        True, "", "ansible.builtin.copy")
    # The hand edit of the file it manages cannot be seen: no change carries it.
    assert HAND_EDIT not in json.dumps(shapes.first["hosts"])


def test_tags_a_task_inherits_more_than_once_are_listed_once(shapes: Shapes):
    assert changes(shapes.first)[("hardening", HIDDEN)]["tags"] == ["hardening", "limits"]


# --- a check that stops at a check-mode failure (issue: check mode's blind spots) ---------

def test_a_check_mode_failure_after_a_change_is_check_blind_and_the_host_partial(
        shapes: Shapes):
    host = shapes.first["hosts"]["pet1"]
    found = changes(shapes.first)

    assert (host["status"], host["partial"], shapes.first_exit) == ("drifted", True, 2)
    assert found[ACCOUNT]["check_blind"] is False
    stopped = found[SSH_FOLDER]
    assert stopped["check_blind"] is True
    assert "failed to look up user carol" in stopped["error"]
    assert stopped["message"] == (
        "failed in check mode after 'accounts | Create the operator account' would change "
        "this host; may pass once that change is applied")
    assert host["message"].startswith("partial check: 'accounts | Create the operator's .ssh "
                                      "folder' failed in check mode after an earlier change")


def test_policy_auto_never_applies_a_partial_plan(shapes: Shapes):
    plan = shapes.first["plans"]["pet1"]

    assert (plan["action"], plan["mode"], plan["partial"]) == ("wait", "auto", True)
    assert plan["reason"].endswith(f"petkeeper approve --partial {plan['plan_id']}")
    assert shapes.first["applies"] == []
    assert shapes.carol_after_first == 1  # nothing was applied: carol is still gone


def test_a_partial_plan_applies_once_an_approval_acknowledges_it(
        shapes: Shapes, cli: Run):  # noqa: F811
    pid = shapes.first["plans"]["pet1"]["plan_id"]
    approvals = StateDir(load_config(shapes.config).state_dir).approvals

    code, _, err = cli("--config", str(shapes.config), "approve", pid)
    assert code == 1
    assert f"plan {pid} (pet1) is partial" in err
    assert f"approve with --partial {pid}" in err
    assert not approvals.exists() or not any(approvals.iterdir())

    code, _, err = cli("--config", str(shapes.config), "approve", pid, "--partial")
    assert code == 0, err
    assert read_json(approvals / f"{pid}.json", {})["partial"] is True

    after, code = run(shapes.config)
    [applied] = after["applies"]
    assert (applied["plan_id"], applied["result"], code) == (pid, "converged", 0)
    assert shapes.pool.run("pet1", "id carol", check=False).returncode == 0
    assert HAND_EDIT not in shapes.pool.run("pet1", f"cat {LIMITS}").stdout  # the apply saw it
    # Its record (applies/pet1.yml holds this result) names what it changed (issue 22, 9).
    # (carol comes back with her old uid, so her .ssh folder, kept by userdel, is hers again.)
    done = {(c["role"], c["task"]): c for c in applied["changed"]}
    assert {ACCOUNT, ("hardening", HIDDEN)} <= set(done), list(done)
    assert f"-{HAND_EDIT}" in done[("hardening", HIDDEN)]["diff"]
    # Converged, the host lists exactly one entry: the task check mode never sees.
    host = after["hosts"]["pet1"]
    assert (host["status"], host["partial"]) == ("clean", False)
    assert list(changes(after)) == [("hardening", HIDDEN)]
    assert '  ? hardening | "Create additional limits config file -> 10.hardcore.conf | ' \
           'sysctl" (ansible.builtin.copy)  (check mode cannot tell)' in render_check(after)
