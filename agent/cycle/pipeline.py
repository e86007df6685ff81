"""Applying from a CI pipeline (`petkeeper run --state-dir DIR`): the state directory must
persist (used approvals, the journal, the no-rollback mark and the lock live there: a fresh
one would let an approval be replayed), and no host is applied whose reports show another
agent manages it, unless --take-over: a pipeline and a pet's daemon never both apply. Such a
host's report is not written either: were the pipeline's report the newest, it would name the
pipeline as the host's agent, and the next run would apply."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.adapters.runner import Watcher
from agent.config import COMMAND_LINE, Config
from agent.cycle.decide import APPLY, WAIT, Plan
from agent.cycle.preview import Reports
from agent.cycle.steps import (
    RUN_STEPS,
    Cycle,
    Finish,
    Step,
    decide_step,
    run_cycle,
)
from agent.errors import FetchError, RepoError

log = logging.getLogger(__name__)

TEMPORARY = ("/tmp", "/var/tmp", "/dev/shm", "/run/user")
# Folders each CI system empties or drops after a job: its temp, its checkout.
CI_FOLDERS = ("RUNNER_TEMP", "GITHUB_WORKSPACE", "CI_PROJECT_DIR", "CI_BUILDS_DIR",
              "WORKSPACE")


def temporary_reason(path: Path, env: Mapping[str, str]) -> str | None:
    """Why PATH would not outlive the job (under /tmp, $RUNNER_TEMP, the checkout...), or
    None when it is a persistent folder."""
    real = os.path.realpath(path)
    roots = [(root, root) for root in (*TEMPORARY, tempfile.gettempdir())]
    roots += [(env[name], f"${name}") for name in CI_FOLDERS if env.get(name)]
    for root, name in roots:
        base = os.path.realpath(root)
        if real == base or real.startswith(base.rstrip("/") + "/"):
            return f"it is under {name}, which does not outlive the job"
    return None


def require_persistent(path: Path, env: Mapping[str, str]) -> None:
    """RepoError naming --state-dir when PATH is temporary."""
    why = temporary_reason(path, env)
    if why:
        raise RepoError(f"{COMMAND_LINE}: --state-dir {path}: {why}; run keeps used approvals, "
                        "the journal, the no-rollback mark and the lock there, and a fresh one "
                        "would let an approval be replayed: give a folder of the runner that "
                        "persists (e.g. /var/lib/petkeeper-ci)")


def foreign(owners: Mapping[str, str], me: str) -> set[str]:
    """The hosts whose last report another agent than ME wrote (OWNERS: host -> its agent)."""
    return {host for host, owner in owners.items() if owner != me}


def hold_foreign(plans: Mapping[str, Plan], owners: Mapping[str, str], me: str,
                 take_over: bool) -> dict[str, Plan]:
    """PLANS with each apply of a host whose last report another agent (OWNERS: host -> the
    agent that checked it) wrote turned into a wait; with TAKE_OVER, only said."""
    held = {}
    for host, plan in plans.items():
        owner = owners.get(host)
        if plan.action != APPLY or owner in (None, me):
            held[host] = plan
        elif take_over:
            log.warning("%s: taking over from agent %s (--take-over)", host, owner)
            held[host] = plan
        else:
            held[host] = replace(plan, action=WAIT, reason=(
                f"managed by agent {owner} (its last report); run --take-over to apply from "
                f"here ({me}), once that agent is stopped"))
    return held


def owner_step(take_over: bool) -> Step:
    """After decide: the agents that checked each host last, read from the reports branch
    before this cycle's reports are written."""
    def step(c: Cycle) -> None:
        assert c.mirror is not None
        reports = Reports(c.mirror, c.config)
        try:
            reports.fetch()
        except FetchError as e:
            log.warning("%s; the agents that checked each host are read as last fetched", e)
        owners = {}
        for host in {*c.hosts, *c.plans}:
            report: dict[str, Any] | None = reports.newest(host)
            if report and report.get("checked_by"):
                owners[host] = str(report["checked_by"])
        me = socket.gethostname()
        c.plans = hold_foreign(c.plans, owners, me, take_over)
        if not take_over:
            c.unrecorded = frozenset(foreign(owners, me))

    return step


def pipeline_run(config: Config, env: Mapping[str, str], *, take_over: bool = False,
                 wait: float = 0.0, finish: Finish | None = None,
                 watch: Watcher | None = None,
                 cancel: Callable[[], bool] | None = None) -> Cycle:
    """`run --state-dir`: one full cycle in CONFIG's (persistent) state directory, holding
    the applies of hosts another agent manages."""
    require_persistent(config.state_dir, env)
    at = RUN_STEPS.index(decide_step) + 1
    steps = (*RUN_STEPS[:at], owner_step(take_over), *RUN_STEPS[at:])
    return run_cycle(config, steps, "run", wait=wait, finish=finish, watch=watch,
                     cancel=cancel)
