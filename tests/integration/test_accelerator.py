"""The accelerator on real SSH test hosts (127.0.101.x, this module's own): Mitogen's strategy
by default, the plain one when Mitogen cannot load, and no second run once a task ran."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
import yaml

from agent.adapters import inventory_cache
from agent.adapters.accelerator import Accelerator
from agent.adapters.inventory import Listing
from agent.adapters.masters import close_masters, master_pid, remove_folder
from agent.adapters.state import StateDir
from agent.config import load_config
from agent.core.accelerator import choose_strategy
from agent.core.drift import CLEAN, UNKNOWN
from agent.core.ssh_masters import Masters
from agent.cycle.detect import Targets, check_drift
from agent.cycle.source import Source
from agent.cycle.steps import CHECK_STEPS, RUN_STEPS, Cycle, run_check, run_cycle
from agent.operate.output import render_check
from agent.testhosts import TestHostPool
from tests.conftest import (
    GitRemote,
    pets_repo_files,
    require_test_hosts,
    settle,
    write_agent_config,
)

pytestmark = pytest.mark.hosts

# A package that shadows Mitogen's: importing it fails, as a broken or half-removed install
# would. Mitogen's strategy plugin catches ImportError (and then finds its own copy), so this
# raises another error, the way a Mitogen too old or too new for ansible-core does.
BROKEN_MITOGEN = 'raise RuntimeError("Mitogen was removed by the test")\n'
# A strategy that fails after the first task's results came back: an accelerator that broke
# mid-run (it is Ansible's linear strategy with a fault added, not Mitogen).
BROKEN_MID_RUN = '''\
from ansible.plugins.strategy.linear import StrategyModule as Linear


class StrategyModule(Linear):
    def _process_pending_results(self, *args, **kwargs):
        results = super()._process_pending_results(*args, **kwargs)
        if results:
            raise RuntimeError("the test strategy broke after a task")
        return results
'''


@pytest.fixture(scope="module")
def pets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestHostPool, GitRemote,
                                                                      Path]]:
    """web1 converged (clean), web2 fresh (drifted), and an agent.yml with accelerator auto."""
    require_test_hosts()
    tmp = tmp_path_factory.mktemp("accel")
    with TestHostPool(tmp / "hosts") as pool:
        pool.start("web1", "127.0.101.11")
        pool.start("web2", "127.0.101.12")
        remote = GitRemote(tmp / "git")
        remote.commit(pets_repo_files({n: (h.address, h.port) for n, h in pool.hosts.items()}))
        settle(pool, "web1")
        yield pool, remote, write_agent_config(
            tmp / "agent.yml", remote.url, tmp / "state", pool,
            ansible={"private_key_file": str(pool.client_key),
                     "known_hosts_file": str(pool.known_hosts), "timeout": "5m",
                     "accelerator": "auto"})


def check(config: Path, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    r = subprocess.run([sys.executable, "-m", "agent", "--config", str(config), "check",
                        "--json"], capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    assert r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout), r.stderr


def hosts_of(report: dict[str, Any]) -> dict[str, Any]:
    """What a host's report says: its status, changes with diffs, fingerprint, message."""
    return {n: {k: h[k] for k in ("status", "fingerprint", "changes", "message")}
            for n, h in report["hosts"].items()}


@pytest.fixture(scope="module")
def baseline(pets) -> tuple[int, dict[str, Any]]:
    """A check with accelerator auto: Mitogen's strategy."""
    code, report, _ = check(pets[2])
    assert report["accelerator"]["strategy"] == "mitogen"
    assert {n: h["status"] for n, h in report["hosts"].items()} == {"web1": CLEAN,
                                                                    "web2": "drifted"}
    return code, report


@pytest.fixture
def shadow(tmp_path: Path) -> Path:
    """A folder whose ansible_mitogen shadows the installed one and cannot be imported."""
    package = tmp_path / "shadow" / "ansible_mitogen"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(BROKEN_MITOGEN)
    return package.parent


def test_mitogen_gone_from_the_path_gives_the_same_report_one_warning_and_exit_code(
        pets, baseline, shadow: Path, tmp_path: Path):
    pool, remote, _ = pets
    config = write_agent_config(tmp_path / "agent.yml", remote.url, tmp_path / "state", pool,
                                ansible={"private_key_file": str(pool.client_key),
                                         "known_hosts_file": str(pool.known_hosts),
                                         "accelerator": "mitogen"})

    code, report, stderr = check(config, {"PYTHONPATH": str(shadow)})

    assert (code, hosts_of(report)) == (baseline[0], hosts_of(baseline[1])) == (2, ANY)
    assert report["accelerator"]["strategy"] == "plain" and report["accelerator"]["warning"]
    warnings = [line for line in stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and "Mitogen is not installed" in warnings[0]


def test_mitogen_failing_to_load_in_ansible_runs_again_plain_with_one_warning(
        pets, baseline, shadow: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture):
    # Petkeeper finds Mitogen (this process's path), Ansible's import of it fails (its path).
    monkeypatch.setenv("PYTHONPATH", str(shadow))
    caplog.set_level(logging.WARNING)

    cycle = run_check(load_config(pets[2]))

    report = cycle.as_json()
    assert (cycle.exit_code, hosts_of(report)) == (baseline[0], hosts_of(baseline[1]))
    assert report["accelerator"]["strategy"] == "plain" and report["accelerator"]["warning"]
    assert "Mitogen was removed by the test" in report["accelerator"]["reason"]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "the run was repeated with the plain strategy" in warning
    assert render_check(report).count("\nwarning: accelerator: ") == 1


def test_a_strategy_failing_after_a_task_ran_is_not_run_again_and_no_host_is_clean(
        pets, tmp_path: Path):
    _, remote, config_path = pets
    plugins = tmp_path / "strategy"
    plugins.mkdir()
    (plugins / "mitogen_linear.py").write_text(BROKEN_MID_RUN)
    config = load_config(config_path)
    state = StateDir(tmp_path / "state")
    state.ensure()
    accel = Accelerator(choose_strategy("mitogen", "0.3.54", "2.19.0"), plugins)
    targets = Targets(("site.yml",), remote.work / "inventory/hosts.yml", ("web1",), "web1",
                      accelerator=accel)

    reports = check_drift(config, Source("0" * 40, remote.work), targets, state, "mid")

    assert reports["web1"].status == UNKNOWN  # converged, yet never reported clean
    assert "the test strategy broke after a task" in str(reports["web1"].message)
    runs = sorted(p.name for p in (state.runner / "artifacts").iterdir())
    assert runs == ["mid-check-0"]  # one run: none repeated with the plain strategy
    assert accel.choice.strategy == "mitogen" and not accel.choice.warning


def test_a_no_change_cycle_runs_no_ansible_inventory_and_writes_no_facts(
        pets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pool, remote, _ = pets
    config = load_config(write_agent_config(tmp_path / "agent.yml", remote.url,
                                            tmp_path / "state", pool))
    real, listed = inventory_cache.list_inventory, []

    def list_inventory(*args: Any, **kwargs: Any) -> Listing:
        listed.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(inventory_cache, "list_inventory", list_inventory)
    first = run_check(config)
    second = run_check(config)

    assert listed == ["pets"]  # the real ansible-inventory, once: the second cycle kept it
    assert second.targets is not None and first.targets is not None
    assert second.targets.groups == first.targets.groups == {"web1": ("pets",),
                                                             "web2": ("pets",)}
    artifacts = tmp_path / "state" / "runner" / "artifacts"
    assert not list(artifacts.glob("*/fact_cache")), "facts must stay in memory"


def test_the_daemons_kept_masters_carry_mitogens_ssh_between_cycles_until_a_host_leaves(
        pets, tmp_path: Path):
    pool, remote, _ = pets
    # A short folder, as the daemon's (agent.core.ssh_masters.choose_folder): a socket's path
    # is 107 bytes at most. The default accelerator: Mitogen's strategy.
    folder = Path(tempfile.mkdtemp(prefix="pk-ms-"))
    masters = Masters(folder, 600)
    both = load_config(write_agent_config(tmp_path / "both.yml", remote.url,
                                          tmp_path / "state", pool))
    try:
        first = run_cycle(both, CHECK_STEPS, "check", masters=masters)
        assert first.as_json()["accelerator"]["strategy"] == "mitogen"
        kept = shared_masters(folder)
        assert len(kept) == 2 and all(map(alive_master, kept.values()))  # web1's, web2's
        second = run_cycle(both, CHECK_STEPS, "check", masters=masters)
        assert shared_masters(folder) == kept  # the next cycle rode them: same masters
        assert hosts_of(second.as_json()) == hosts_of(first.as_json())

        # web2 leaves the targets: which shared master was its is not known, so both close,
        # and web1's next run opens its own again.
        web1 = load_config(write_agent_config(tmp_path / "web1.yml", remote.url,
                                              tmp_path / "state", pool, limit="web1"))
        third = run_cycle(web1, CHECK_STEPS, "check", masters=masters)
        assert list(third.hosts) == ["web1"]
        assert not any(map(alive_master, kept.values()))
        [new] = shared_masters(folder).values()
        assert new not in kept.values() and alive_master(new)
        assert masters.host_folder("web1").is_dir() and not masters.host_folder("web2").exists()
    finally:
        close_masters(folder)
        remove_folder(folder)
    assert not folder.exists() and not alive_master(new)


def shared_masters(folder: Path) -> dict[str, int | None]:
    """Mitogen's kept masters in FOLDER: socket name -> the PID `ssh -O check` tells."""
    return {sock.name: master_pid(sock) for sock in folder.iterdir() if sock.is_socket()}


def alive_master(pid: int | None) -> bool:
    """Whether PID is a running SSH master (not gone, not a reused PID)."""
    try:
        return pid is not None and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ssh: ")
    except OSError:
        return False


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestHostPool, GitRemote,
                                                                        Path]]:
    """web3 and web4, both fresh (the same drift), and a policy that heals them (auto)."""
    require_test_hosts()
    tmp = tmp_path_factory.mktemp("twins")
    with TestHostPool(tmp / "hosts") as pool:
        pool.start("web3", "127.0.101.13")
        pool.start("web4", "127.0.101.14")
        remote = GitRemote(tmp / "git")
        remote.commit({**pets_repo_files({n: (h.address, h.port) for n, h in pool.hosts.items()}),
                       "petkeeper/policy.yml": yaml.safe_dump({"rules": [
                           {"name": "heal", "hosts": ["web3", "web4"], "mode": "auto"}]})})
        yield pool, remote, tmp


def same_apart_from_the_host(cycle: Cycle) -> dict[str, Any]:
    """What must not depend on the strategy: the exit code, the host's report, its applies."""
    report = cycle.as_json()
    [host] = report["hosts"]
    applies = [{k: a[k] for k in ("result", "approved_by", "before_status", "after_status",
                                  "leftovers", "message")} for a in report["applies"]]
    return {"exit_code": cycle.exit_code, "host": report["hosts"][host], "applies": applies}


def test_an_apply_with_mitogen_gives_the_plain_ones_result_and_ledger(twins):
    # web3 is healed with Mitogen's strategy, web4 with the plain one, from the same drift:
    # the re-check before, the apply, the re-check after (the report the run ends with). The
    # test playbook's "Refresh the package cache" (a command) changes on every apply and is
    # blind in check mode: its leftovers and ledger entry (flapping tasks) must match too.
    pool, remote, tmp = twins
    seen = {}
    for host, setting in (("web3", "mitogen"), ("web4", "off")):
        config = load_config(write_agent_config(
            tmp / f"{host}.yml", remote.url, tmp / f"state-{host}", pool, limit=host,
            ansible={"private_key_file": str(pool.client_key),
                     "known_hosts_file": str(pool.known_hosts), "accelerator": setting}))
        ran = run_cycle(config, RUN_STEPS, "run")
        ledger = json.loads((tmp / f"state-{host}" / "ledger.json").read_text())
        seen[host] = (ran.as_json()["accelerator"]["strategy"], same_apart_from_the_host(ran),
                      ledger[host].get("flapping"))

    (mitogen, *accelerated), (plain, *not_accelerated) = seen["web3"], seen["web4"]
    assert (mitogen, plain) == ("mitogen", "plain")
    assert accelerated == not_accelerated
    ran, _ = accelerated
    assert [(a["result"], a["before_status"], a["after_status"]) for a in ran["applies"]] == [
        ("converged", "drifted", CLEAN)]
    assert (ran["host"]["status"], ran["exit_code"]) == (CLEAN, 0)
    assert "Managed by Petkeeper" in pool.run("web3", "cat /etc/motd").stdout
