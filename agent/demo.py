"""The embedded demo: two pets, a bare Git repo of this project's playbooks, one check.

Starts the demo hosts of ``inventories/demo`` (pet1, pet2 on 127.0.80.11-12), serves
``playbooks/`` and ``inventories/`` from a bare repo it creates, converges both hosts, checks
them (clean), edits one file on pet2 by hand (the drift), then runs ``petkeeper check`` again
and shows the report commits.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import yaml

from agent.adapters.runner import PlaybookRun, Watcher, run_playbook
from agent.config import Config, load_config
from agent.cycle.detect import Targets
from agent.cycle.steps import EXIT_DRIFT, run_check
from agent.errors import AgentError
from agent.operate.output import render_check
from agent.testhosts import TestHostPool

PROJECT = Path(__file__).resolve().parent.parent
DEMO_HOSTS = {"pet1": "127.0.80.11", "pet2": "127.0.80.12"}
DEMO_PORT = 2222
PLAYBOOK = "playbooks/site.yml"
INVENTORY = "inventories/demo/hosts.yml"


Progress = Callable[[], AbstractContextManager[Watcher | None]]


def run_demo(workdir: Path, keep: bool = False, color: bool = False,
             progress: Progress = lambda: contextlib.nullcontext()) -> int:
    """Run the whole demo in WORKDIR (recreated); return 0 when it showed the drift. With KEEP,
    the hosts stay up until Ctrl-C, for trying plan, approve and run by hand. PROGRESS gives
    what watches the long Ansible runs (a progress line), COLOR paints the check's output."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, mode=0o700)
    _say(f"committing this project's playbooks/ and inventories/ to {workdir / 'pets.git'}")
    remote = seed_repo(workdir / "pets.git", workdir / "seed")
    with TestHostPool(workdir / "hosts") as pool:
        _say("starting the demo pets: " + ", ".join(f"{n} ({a}:{DEMO_PORT})" for n, a in
                                                    DEMO_HOSTS.items()) +
             ", each an sshd with its own /etc")
        for name, address in DEMO_HOSTS.items():
            pool.start(name, address, DEMO_PORT)
        config_path = write_config(workdir, remote, pool)
        config = load_config(config_path)
        _say(f"converging {', '.join(DEMO_HOSTS)} with {PLAYBOOK}, as their admin did before "
             "Petkeeper (about a minute)")
        with progress() as watch:
            converge(config, workdir, watch)
        # A first check sees both pets clean at this commit: the ledger keeps that, so the hand
        # edit below reads as corrective drift (the host moved), not as a new commit's change.
        _say(f"petkeeper --config {config_path} check    (both pets are clean; about 30 seconds)")
        with progress() as watch:
            run_check(config, watch=watch)
        _say("pet2: someone edits /etc/motd by hand")
        pool.run("pet2", "echo 'Back at 5pm -- bob' >> /etc/motd")
        _say(f"petkeeper --config {config_path} check    (check + diff mode: changes nothing; "
             "about 30 seconds)")
        with progress() as watch:
            cycle = run_check(config, watch=watch)
        print(render_check(cycle.as_json(), color=color))
        if keep:
            _say(f"the demo hosts stay up until Ctrl-C. In another shell, try:\n"
                 f"   petkeeper --config {config_path} plan\n"
                 f"   petkeeper --config {config_path} approve PLAN_ID\n"
                 f"   petkeeper --config {config_path} run\n"
                 f"   petkeeper --config {config_path} history pet2\n"
                 f"   petkeeper --config {config_path} fleet --html /tmp/fleet.html")
            _wait_for_interrupt()
    log = subprocess.run(["git", "--git-dir", str(remote), "log", "--format=%h %s%n%(trailers)",
                          "--branches=petkeeper/hosts/*"], capture_output=True, text=True,
                         check=True)
    _say(f"report commits on the branches petkeeper/hosts/<host> of {remote}:")
    print(log.stdout.rstrip())
    if cycle.exit_code != EXIT_DRIFT:
        print(f"demo: expected drift on pet2 (exit {EXIT_DRIFT}), got exit {cycle.exit_code}",
              file=sys.stderr)
        return 1
    _say(f"done. Try: petkeeper --config {config_path} status")
    return 0


def seed_repo(bare: Path, seed: Path) -> Path:
    """Create BARE with one commit on main holding this project's playbooks and inventories."""
    _git("init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    _git("init", "--quiet", "--initial-branch=main", str(seed))
    for folder in ("playbooks", "inventories"):
        shutil.copytree(PROJECT / folder, seed / folder,
                        ignore=shutil.ignore_patterns(".vault_pass", "__pycache__"))
    _git("-C", str(seed), "add", "--all")
    _git("-C", str(seed), "-c", "user.name=Demo Admin", "-c", "user.email=admin@demo.invalid",
         "commit", "--quiet", "-m", "Pets as code")
    _git("-C", str(seed), "push", "--quiet", str(bare), "main")
    shutil.rmtree(seed)
    return bare


def write_config(workdir: Path, remote: Path, pool: TestHostPool) -> Path:
    config = {
        "repo": {"url": f"file://{remote}", "branch": "main"},
        "playbooks": [PLAYBOOK],
        "inventory": INVENTORY,
        "limit": ",".join(DEMO_HOSTS),
        "state_dir": str(workdir / "state"),
        "ansible": {"private_key_file": str(pool.client_key),
                    "known_hosts_file": str(pool.known_hosts), "timeout": "10m"},
    }
    path = workdir / "agent.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def converge(config: Config, workdir: Path, watch: Watcher | None = None) -> None:
    """Apply the playbook to the demo hosts directly, as their admin did before Petkeeper."""
    tree = workdir / "converge-tree"
    shutil.copytree(PROJECT / "playbooks", tree / "playbooks")
    shutil.copytree(PROJECT / "inventories", tree / "inventories")
    targets = Targets((PLAYBOOK,), tree / INVENTORY, tuple(DEMO_HOSTS), ",".join(DEMO_HOSTS))
    run = PlaybookRun(tree=tree, playbook=PLAYBOOK, inventory=targets.inventory,
                      limit=targets.limit, check=False, ident="demo-converge",
                      private_key_file=config.ansible.private_key_file,
                      known_hosts_file=config.ansible.known_hosts_file, timeout=600)
    result = run_playbook(run, workdir / "converge-runner", watch=watch)
    if result.status != "successful":
        raise AgentError(f"demo: converging the demo hosts failed ({result.status}, rc "
                         f"{result.rc}): {result.error}")


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    _say("stopping the demo hosts")


def _git(*args: str) -> None:
    subprocess.run(["git", *args], check=True, timeout=60, stdin=subprocess.DEVNULL)


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)
