"""The shipped demo playbook (playbooks/site.yml) against real SSH test hosts.

Petkeeper reads drift from a ``--check --diff`` run, so the content it ships must be check-mode
honest (drift reported, nothing failed, nothing written) and idempotent (a second converge
changes nothing). Playbooks run through the ansible-runner CLI, as the agent runs them, and
results are read from its job events (``event_data["res"]["changed"]``, the stats event),
never from printed text. ansible-core 2.19 ships no JSON stdout callback
(``ansible.posix.json`` lives in a collection that is not installed), which is one more reason
to read runner's events.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

# Imported as a module: pytest would try to collect the names TestHost and TestHostPool.
from agent import testhosts

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
DEMO_INVENTORY = REPO / "inventories" / "demo"
VENV_BIN = Path(sys.executable).parent  # not resolved: a venv's python is a symlink

# The demo's pets on addresses of their own, so that a running demo (127.0.80.11 and
# 127.0.80.12, port 2222) and these tests do not clash.
TEST_ADDRESSES = {"pet1": "127.0.81.11", "pet2": "127.0.81.12"}
PLAYBOOK_TIMEOUT = 240  # seconds per run; one took 20-75 s on a loaded 2-CPU machine

# Where the playbook writes, as overlay upper dirs of a test host. /root is left out: every
# SSH login may write there (Ansible's remote tmp, the login shell's own files).
MANAGED_TREES = ("etc", "home", "usr", "var/backups")

# The file test_hand_edit... changes by hand inside pet1, and the task that manages it.
HAND_EDITED = "/etc/petkeeper-demo/app.conf"
HAND_EDIT_TASK = ("baseline", "Write the demo application config")
HAND_EDIT_LINE = "# edited by hand"
TOKEN_TASK = ("backup_job", "Write the backup token")  # no_log: true
CENSORED = ("the output has been hidden due to the fact that 'no_log: true' was specified"
            " for this result")

Task = tuple[str, str, str]  # (host, role, task name)


@dataclass(frozen=True)
class Pets:
    """The running test hosts and how to reach them with Ansible."""

    pool: testhosts.TestHostPool
    inventory: Path
    workdir: Path
    env: dict[str, str]


@dataclass(frozen=True)
class PlaybookRun:
    """One ansible-runner run of site.yml: its return code, job events and printed output."""

    ident: str
    returncode: int
    events: list[dict[str, Any]]
    output: str  # only for failure messages

    @property
    def stats(self) -> dict[str, Any]:
        found = [e["event_data"] for e in self.events if e["event"] == "playbook_on_stats"]
        assert len(found) == 1, f"{self.ident}: no stats event\n{self.output}"
        return found[0]

    def changed(self, host: str) -> int:
        return int(self.stats.get("changed", {}).get(host, 0))

    def changed_tasks(self) -> list[Task]:
        """Every (host, role, task) whose result says changed, in run order."""
        return [
            (e["event_data"]["host"], e["event_data"].get("role", ""), e["event_data"]["task"])
            for e in self.events
            if e["event"] == "runner_on_ok" and e["event_data"].get("res", {}).get("changed")
        ]

    def result(self, host: str, task: tuple[str, str]) -> dict[str, Any]:
        """The result of TASK (role, name) on HOST."""
        for e in self.events:
            data = e["event_data"]
            if (e["event"] == "runner_on_ok" and data["host"] == host
                    and (data.get("role", ""), data["task"]) == task):
                return dict(data["res"])
        raise AssertionError(f"{self.ident}: no result for {task} on {host}\n{self.output}")


@dataclass(frozen=True)
class FreshCheck:
    """The check run on never-converged hosts, and what it wrote on each (should be nothing)."""

    run: PlaybookRun
    written: dict[str, list[str]]


def assert_clean(run: PlaybookRun) -> None:
    """Assert RUN reached both pets and failed nowhere."""
    stats = run.stats
    assert run.returncode == 0, f"{run.ident}: rc={run.returncode}\n{run.output}"
    assert stats.get("failures", {}) == {}, f"{run.ident}: failed\n{run.output}"
    assert stats.get("dark", {}) == {}, f"{run.ident}: unreachable\n{run.output}"
    assert set(stats.get("processed", {})) == set(TEST_ADDRESSES), run.output


def run_playbook(pets: Pets, ident: str, *, check: bool) -> PlaybookRun:
    """Run site.yml on the test pets through the ansible-runner CLI; return what it reported."""
    # A fresh private data dir per run: without --omit-env-files, ansible-runner saves
    # --cmdline to env/cmdline and replays it in later runs from the same dir, which quietly
    # turns an apply into a check.
    private = pets.workdir / "runs" / ident
    (private / "env").mkdir(parents=True)
    (private / "env" / "settings").write_text(json.dumps({"job_timeout": PLAYBOOK_TIMEOUT}))
    runner = shutil.which("ansible-runner", path=pets.env["PATH"])
    assert runner, f"ansible-runner not found on {pets.env['PATH']}"
    argv = [runner, "run", str(private), "--ident", ident, "--omit-env-files", "--quiet",
            "--project-dir", str(PLAYBOOKS), "--playbook", "site.yml",
            "--inventory", str(pets.inventory)]
    if check:
        argv.append("--cmdline=--check --diff")
    proc = subprocess.Popen(argv, env=pets.env, cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        printed, _ = proc.communicate(timeout=PLAYBOOK_TIMEOUT + 30)
    except subprocess.TimeoutExpired:
        _kill_session(proc)
        raise
    artifacts = private / "artifacts" / ident
    events = [json.loads(p.read_text()) for p in (artifacts / "job_events").glob("*.json")]
    events.sort(key=lambda e: int(e["counter"]))
    stdout = artifacts / "stdout"
    output = printed + (stdout.read_text() if stdout.exists() else "")
    return PlaybookRun(ident, proc.returncode, events, output)


def _kill_session(proc: subprocess.Popen[str]) -> None:
    # SIGTERM first: ansible-runner then kills ansible-playbook's own process group (pexpect
    # starts it in a new session, out of reach of a killpg on ours).
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def playbook_env(pool: testhosts.TestHostPool, workdir: Path) -> dict[str, str]:
    """Given the pool, return the environment that makes Ansible reach its hosts, and only them."""
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
        ANSIBLE_PRIVATE_KEY_FILE=str(pool.client_key),
        ANSIBLE_SSH_COMMON_ARGS=(f"-o UserKnownHostsFile={pool.known_hosts}"
                                 " -o StrictHostKeyChecking=yes"),
        ANSIBLE_PIPELINING="True",
        ANSIBLE_HOST_KEY_CHECKING="True",
        ANSIBLE_SSH_CONTROL_PATH_DIR=str(workdir / "cp"),
        ANSIBLE_LOCAL_TEMP=str(workdir / "ansible-local"),
        ANSIBLE_NOCOLOR="1",
    )
    return env


def write_inventory(folder: Path, hosts: dict[str, testhosts.TestHost]) -> Path:
    """Copy the demo inventory to FOLDER with its pets moved to HOSTS; return its hosts.yml."""
    shutil.copytree(DEMO_INVENTORY, folder)
    path = folder / "hosts.yml"
    tree = yaml.safe_load(path.read_text())
    moved = set()
    for group in _groups(tree["all"]):
        for name, host_vars in (group.get("hosts") or {}).items():
            if name in hosts:
                group["hosts"][name] = {**(host_vars or {}), "ansible_host": hosts[name].address,
                                        "ansible_port": hosts[name].port}
                moved.add(name)
    assert moved == set(hosts), f"the demo inventory lacks {sorted(set(hosts) - moved)}"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def _groups(group: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield group
    for child in (group.get("children") or {}).values():
        yield from _groups(child or {})


def snapshot(host: testhosts.TestHost) -> dict[str, str]:
    """Every file, folder and link the host wrote under MANAGED_TREES, with mode and content."""
    upper = host.path("/")
    found = {}
    for tree in MANAGED_TREES:
        for path in sorted((upper / tree).rglob("*")):
            st = path.lstat()
            if path.is_symlink():
                what = f"-> {os.readlink(path)}"
            elif path.is_file():
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = "dir"
            found[str(path.relative_to(upper))] = f"{st.st_mode:o} {st.st_uid}:{st.st_gid} {what}"
    return found


def demo_token() -> str:
    return str(yaml.safe_load((DEMO_INVENTORY / "group_vars" / "all.yml").read_text())
               ["backup_job_token"])


@pytest.fixture(scope="module")
def pets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pets]:
    workdir = tmp_path_factory.mktemp("pets")
    pool = testhosts.TestHostPool(workdir / "hosts")
    try:
        for name, address in TEST_ADDRESSES.items():
            pool.start(name, address)
        inventory = write_inventory(workdir / "inventory", pool.hosts)
        yield Pets(pool, inventory, workdir, playbook_env(pool, workdir))
    finally:
        pool.stop_all()


@pytest.fixture(scope="module")
def fresh_check(pets: Pets) -> FreshCheck:
    before = {name: snapshot(host) for name, host in pets.pool.hosts.items()}
    run = run_playbook(pets, "check-fresh", check=True)
    written = {}
    for name, host in pets.pool.hosts.items():
        after = snapshot(host)
        written[name] = sorted(p for p in before[name].keys() | after.keys()
                               if before[name].get(p) != after.get(p))
    return FreshCheck(run, written)


@pytest.fixture(scope="module")
def converged(pets: Pets, fresh_check: FreshCheck) -> tuple[PlaybookRun, PlaybookRun]:
    # Depends on fresh_check so that, whatever the test order, that check sees fresh hosts.
    first = run_playbook(pets, "converge-1", check=False)
    second = run_playbook(pets, "converge-2", check=False)
    return first, second


@pytest.fixture(scope="module")
def converged_check(pets: Pets, converged: tuple[PlaybookRun, PlaybookRun]) -> PlaybookRun:
    """One check after the converge, with one file edited by hand on pet1: every other task
    of both pets must report no drift, and that file's task its drift (one run, not two)."""
    pets.pool.run("pet1", f"echo '{HAND_EDIT_LINE}' >> {HAND_EDITED}")
    return run_playbook(pets, "check-converged", check=True)


@pytest.mark.hosts
def test_check_on_fresh_hosts_reports_drift_and_fails_nothing(fresh_check: FreshCheck) -> None:
    run = fresh_check.run
    assert_clean(run)
    for host in TEST_ADDRESSES:
        assert run.changed(host) > 0, run.output


@pytest.mark.hosts
def test_check_on_fresh_hosts_writes_nothing(fresh_check: FreshCheck) -> None:
    assert_clean(fresh_check.run)
    assert fresh_check.written == {host: [] for host in TEST_ADDRESSES}


@pytest.mark.hosts
def test_check_diff_never_shows_the_backup_token(fresh_check: FreshCheck) -> None:
    run = fresh_check.run
    token = demo_token()
    for host in TEST_ADDRESSES:
        assert "censored" in run.result(host, TOKEN_TASK)  # the task ran, and was hidden
    assert token not in json.dumps(run.events)
    assert token not in run.output


@pytest.mark.hosts
def test_no_log_drift_is_counted_in_stats_but_not_in_events(fresh_check: FreshCheck) -> None:
    """ansible-runner replaces a no_log result with {"censored": ...}, "changed" included.

    Whoever reads drift from events must also read the stats, or miss the token's drift.
    """
    run = fresh_check.run
    for host in TEST_ADDRESSES:
        assert run.result(host, TOKEN_TASK) == {"censored": CENSORED}
        changed_events = [t for t in run.changed_tasks() if t[0] == host]
        assert (host, *TOKEN_TASK) not in changed_events
        assert run.changed(host) == len(changed_events) + 1


@pytest.mark.hosts
def test_converge_changes_exactly_what_check_reported(
        fresh_check: FreshCheck, converged: tuple[PlaybookRun, PlaybookRun]) -> None:
    first, _ = converged
    assert_clean(first)
    assert first.changed_tasks(), first.output
    assert sorted(first.changed_tasks()) == sorted(fresh_check.run.changed_tasks())
    for host in TEST_ADDRESSES:
        assert first.changed(host) == fresh_check.run.changed(host)


@pytest.mark.hosts
def test_converge_leaves_configs_that_their_own_tools_accept(
        pets: Pets, converged: tuple[PlaybookRun, PlaybookRun]) -> None:
    checks = {
        "visudo -c": "/usr/sbin/visudo -c",
        "sshd drop-in": ("/usr/local/sbin/petkeeper-sshd-validate"
                         " /etc/ssh/sshd_config.d/50-petkeeper.conf"),
        "time zone": "test \"$(readlink /etc/localtime)\" = /usr/share/zoneinfo/Europe/Paris",
        "admin in group": "id -nG alice | grep -qw admins",
        "token mode": "test \"$(stat -c %a /etc/petkeeper-backup/token)\" = 600",
        "backup runs": "/usr/local/sbin/petkeeper-backup && ls /var/backups/petkeeper/*.tar.gz",
    }
    for host in TEST_ADDRESSES:
        for what, command in checks.items():
            done = pets.pool.run(host, command, check=False)
            assert done.returncode == 0, f"{host}: {what}: {done.stdout}{done.stderr}"


@pytest.mark.hosts
def test_second_converge_changes_nothing(converged: tuple[PlaybookRun, PlaybookRun]) -> None:
    _, second = converged
    assert_clean(second)
    assert {host: second.changed(host) for host in TEST_ADDRESSES} == {"pet1": 0, "pet2": 0}
    assert second.changed_tasks() == []


@pytest.mark.hosts
def test_check_after_converge_reports_no_drift(converged_check: PlaybookRun) -> None:
    assert_clean(converged_check)
    others = [t for t in converged_check.changed_tasks() if t != ("pet1", *HAND_EDIT_TASK)]
    assert others == [], converged_check.output
    # the stats count hidden (no_log) drift too: pet1 the hand edit alone, pet2 nothing
    assert {h: converged_check.changed(h) for h in TEST_ADDRESSES} == {"pet1": 1, "pet2": 0}


@pytest.mark.hosts
def test_hand_edit_is_reported_on_its_task_and_host_only(
        pets: Pets, converged_check: PlaybookRun) -> None:
    run = converged_check

    assert_clean(run)
    assert run.changed_tasks() == [("pet1", *HAND_EDIT_TASK)]
    assert {host: run.changed(host) for host in TEST_ADDRESSES} == {"pet1": 1, "pet2": 0}
    diff = run.result("pet1", HAND_EDIT_TASK)["diff"]
    assert any(HAND_EDIT_LINE in d.get("before", "") and HAND_EDIT_LINE not in d.get("after", "")
               for d in diff), diff
    # The check left the hand edit in place.
    tail = pets.pool.run("pet1", f"tail -n 1 {HAND_EDITED}").stdout
    assert tail == f"{HAND_EDIT_LINE}\n"
