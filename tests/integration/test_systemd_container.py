"""systemd/petkeeper.service under a real systemd, installed the way an operator installs it.

A Debian 12 container (podman, systemd as PID 1) gets Petkeeper installed by the commands of
the README's "Installing on a server", run as they are written: a virtual environment in
/opt/petkeeper/.venv, pip-installed from a copy of this working tree in /opt/petkeeper/src (its
dependencies from a wheelhouse, at the versions this environment runs), /usr/local/bin/petkeeper
linked to it, the unit installed as shipped and enabled; then an /etc/petkeeper/agent.yml, and
a real bare Git remote from tmp_path bind-mounted at /srv/git/pets.git. The pet is the container
itself: no inventory, so Petkeeper checks and corrects its own host through a local connection,
under the unit's hardening.

The container has no network but its own loopback (--network=none): the remote is a path and
the pet is local, so nothing needs more, and nothing in it can reach the host's network. The
image comes from .ci/container-image: built on first use (about two minutes), then reused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

from tests.conftest import GitRemote, git
from tests.integration.conftest import Wheelhouse, copy_source, readme_install_lines

PROJECT = Path(__file__).resolve().parents[2]
PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": str(Path(__file__).with_name("containers.conf"))}
PET = "pet-in-a-box"  # the container's hostname, so the name of its report
REMOTE = "/srv/git/pets.git"  # where the bare remote is mounted in the container
WHEELS, SETUP = "/mnt/petkeeper-wheels", "/mnt/petkeeper-setup"  # read-only mounts
# petkeeper/policy.yml: correct motd drift without asking. A rule by tag: the tags come from
# Petkeeper's own Ansible callback, so this also proves the installed wheel ships it.
AUTO = "rules:\n  - {tags: [motd], mode: auto}\n"
MOTD, NEW_MOTD = "Kept by Petkeeper under systemd\n", "Kept, and followed to a new commit\n"
AGENT_YML = {
    "repo": {"url": f"file://{REMOTE}", "branch": "main", "timeout": "30s"},
    # check_interval is long: every cycle these tests see was caused by what they did.
    "daemon": {"fetch_interval": "2s", "check_interval": "1h", "splay": "0s"},
    "ansible": {"timeout": "5m"},
}
SOURCE = "/opt/petkeeper/src"  # the README installs from a clone there
INSTALL = "\n".join([
    "set -eu",
    f"export PIP_NO_INDEX=1 PIP_FIND_LINKS={WHEELS} PIP_DISABLE_PIP_VERSION_CHECK=1",
    *readme_install_lines(),
    "install -d -m 0700 /etc/petkeeper",
    f"install -m 0600 {SETUP}/agent.yml /etc/petkeeper/agent.yml",
])
PROCESS_EXIT = "98e322203f7a4ed290d09fe03c09fe15"  # systemd: "Main process exited, code=..."
RUN_STATUS = re.compile(r"run (\S+): exit (\d+), (.*), (\d+) apply\(s\)")
T = TypeVar("T")


def local_yml(motd: str) -> str:
    """ansible-pull's default playbook, writing MOTD to the pet's /etc/motd."""
    return ("- name: Keep the pet in a box\n  hosts: all\n  gather_facts: false\n  tasks:\n"
            "    - name: Write the message of the day\n      ansible.builtin.copy:\n"
            f"        content: {json.dumps(motd)}\n        dest: /etc/motd\n"
            '        mode: "0644"\n      tags: [motd]\n')


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                       env=PODMAN_ENV, stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        pytest.fail(f"podman {' '.join(args)[:300]} exited {r.returncode}:\n{r.stderr}{r.stdout}")
    return r


class Box:
    """A running container with systemd as PID 1, and Petkeeper's unit in it."""

    def __init__(self, cid: str) -> None:
        self.cid = cid

    def run(self, *argv: str, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ARGV in the container; on failure (with CHECK), fail with the unit's journal."""
        r = podman("exec", self.cid, *argv, timeout=timeout, check=False)
        if check and r.returncode != 0:
            pytest.fail(f"{' '.join(argv)[:300]} exited {r.returncode} in the container:\n"
                        f"{r.stderr}{r.stdout}\n{self.explain()}")
        return r

    def show(self, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", "petkeeper", "--property", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self) -> str:
        return self.run("journalctl", "--unit", "petkeeper", "--no-pager", "--output", "cat",
                        check=False).stdout

    def journal_records(self) -> list[dict[str, str]]:
        out = self.run("journalctl", "--unit", "petkeeper", "--no-pager", "--output", "json",
                       "--output-fields", "MESSAGE_ID,COMMAND,EXIT_CODE,EXIT_STATUS").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def explain(self) -> str:
        """What a person debugging a failure wants: the unit's status and its journal."""
        status = self.run("systemctl", "status", "--no-pager", "--full", "petkeeper",
                          check=False)
        return f"--- systemctl status petkeeper\n{status.stdout}\n--- journal\n{self.journal()}"

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float) -> T:
        """Poll PROBE until it returns something true; fail after TIMEOUT seconds."""
        deadline = time.monotonic() + timeout
        while not (value := probe()):
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout:g}s\n{self.explain()}")
            time.sleep(0.5)
        return value

    def wait_for_cycle(self, after: str | None = None, timeout: float = 300) -> re.Match[str]:
        """The STATUS= line of a finished cycle whose run id is not AFTER."""
        def probe() -> re.Match[str] | None:
            m = RUN_STATUS.fullmatch(self.show("StatusText")["StatusText"])
            return m if m and m.group(1) != after else None
        return self.wait_for("new cycle in the STATUS= line", probe, timeout)

    def boot(self, timeout: float = 120) -> None:
        """Wait until systemd finished starting up, and require that nothing failed."""
        def probe() -> str | None:
            r = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=timeout)
            state = r.stdout.strip()
            return None if state in ("", "offline", "initializing", "starting") else state
        state = self.wait_for("answer from the container's systemd", probe, timeout)
        if state != "running":
            failed = self.run("systemctl", "--failed", "--no-pager", check=False).stdout
            pytest.fail(f"the container's systemd is {state!r}, not running:\n{failed}")


@pytest.fixture(scope="module")
def image() -> str:
    """The container image from .ci/container-image (built once, then reused)."""
    if shutil.which("podman") is None:
        if os.environ.get("CI"):
            pytest.fail("podman is missing, and CI must run this test: .ci/setup installs it")
        pytest.skip("needs podman, runc and debootstrap: apt-get install podman runc "
                    "debootstrap (or bash .ci/setup)")
    r = subprocess.run(["bash", str(PROJECT / ".ci" / "container-image")], capture_output=True,
                       text=True, timeout=1800, env=PODMAN_ENV, stdin=subprocess.DEVNULL)
    if r.returncode != 0 or not r.stdout.strip():
        pytest.fail(f".ci/container-image exited {r.returncode}:\n{r.stderr}")
    return r.stdout.split()[-1]


@pytest.fixture
def box(image: str, wheelhouse: Wheelhouse, remote: GitRemote, tmp_path: Path
        ) -> Iterator[Box]:
    """A booted container with Petkeeper installed as the README says, its unit enabled and
    not started yet; removed (by id, with its mounts) afterwards, whatever happened."""
    setup, cidfile, source = tmp_path / "setup", tmp_path / "container.id", tmp_path / "src"
    setup.mkdir()
    (setup / "agent.yml").write_text(yaml.safe_dump(AGENT_YML, sort_keys=False))
    copy_source(source)  # pip builds in it: a copy per container
    try:
        podman("run", "--detach", "--cidfile", str(cidfile), "--systemd=always",
               "--label", "petkeeper-test=systemd-container", "--network=none",
               "--hostname", PET, "--volume", f"{remote.bare}:{REMOTE}",
               "--volume", f"{wheelhouse.wheels}:{WHEELS}:ro", "--volume", f"{setup}:{SETUP}:ro",
               "--volume", f"{source}:{SOURCE}", image, "/sbin/init", timeout=120)
        box = Box(cidfile.read_text().strip())
        box.boot()
        box.run("sh", "-c", INSTALL, timeout=300)
        yield box
    finally:
        if cidfile.exists():
            remove_container(cidfile.read_text().strip())


def remove_container(cid: str) -> None:
    podman("rm", "--force", "--time", "0", cid, timeout=120)
    assert podman("container", "exists", cid, check=False).returncode == 1, cid


def start(box: Box) -> None:
    """systemctl enable --now, as the README says: for Type=notify it returns only once the
    daemon sent READY=1."""
    box.run("systemctl", "enable", "--now", "petkeeper", timeout=150)
    state = box.show("Type", "NotifyAccess", "ActiveState", "SubState", "StatusText")
    assert state == {"Type": "notify", "NotifyAccess": "main", "ActiveState": "active",
                     "SubState": "running", "StatusText": state["StatusText"]}, box.explain()


def stop_cleanly(box: Box) -> None:
    """systemctl stop: SIGTERM, and the daemon exits 0 by itself, never killed or restarted."""
    # Result=success alone would also let a daemon that SIGTERM killed pass (a "clean" signal
    # to systemd), and systemd 252 resets ExecMainStatus once the unit is inactive: the main
    # process's exit is only in systemd's debug log (message id 98e32220...), so turn it on.
    box.run("systemctl", "log-level", "debug")
    try:
        box.run("systemctl", "stop", "petkeeper", timeout=150)
    finally:
        box.run("systemctl", "log-level", "info")
    state = box.show("ActiveState", "SubState", "Result", "NRestarts")
    assert state == {"ActiveState": "inactive", "SubState": "dead", "Result": "success",
                     "NRestarts": "0"}, box.explain()
    exits = [(e["EXIT_CODE"], e["EXIT_STATUS"]) for e in box.journal_records()
             if e.get("MESSAGE_ID") == PROCESS_EXIT and e.get("COMMAND") == "ExecStart"]
    assert exits == [("exited", "0")], box.explain()
    journal = box.journal()
    assert "daemon stopped" in journal, journal
    for bad in ("Traceback", "probably a bug", "cannot notify", "watchdog timeout"):
        assert bad not in journal, journal


def test_the_service_gets_ready_corrects_its_pet_reports_to_git_and_stops_cleanly(
        box: Box, remote: GitRemote):
    source = remote.commit({"local.yml": local_yml(MOTD), "petkeeper/policy.yml": AUTO})
    start(box)

    m = box.wait_for_cycle()
    assert m.group(2, 3, 4) == ("0", "1 clean", "1"), box.explain()
    # systemd stamps the watchdog at READY=1, then at each WATCHDOG=1 (the first ~1 s later).
    t = box.show("ActiveEnterTimestampMonotonic", "WatchdogTimestampMonotonic")
    assert int(t["WatchdogTimestampMonotonic"]) > int(t["ActiveEnterTimestampMonotonic"]) + 100_000
    # The daemon, under the unit's hardening, changed its own host.
    assert box.run("cat", "/etc/motd").stdout == MOTD
    trailers = git("--git-dir", str(remote.bare), "log", "-1", "--format=%(trailers)",
                   f"petkeeper/hosts/{PET}", "--", f"hosts/{PET}.yml")
    for trailer in (f"Petkeeper-Source: {source}", f"Petkeeper-Run: {m.group(1)}",
                    f"Petkeeper-Host: {PET}", "Petkeeper-Status: clean"):
        assert trailer in trailers.splitlines(), trailers
    report = yaml.safe_load(remote.show(f"petkeeper/hosts/{PET}", f"hosts/{PET}.yml"))
    assert (report["host"], report["status"], report["source_sha"]) == (PET, "clean", source)
    assert remote.show(f"petkeeper/hosts/{PET}", f"applies/{PET}.yml")

    status = box.run("petkeeper", "status", "--json", check=False)
    assert status.returncode == 0, status.stderr
    last = json.loads(status.stdout)
    assert (last["last_run"]["run_id"], last["hosts"][PET]["status"]) == (m.group(1), "clean")
    check_the_install(box)
    stop_cleanly(box)


def check_the_install(box: Box) -> None:
    """init leaves the installed config alone; doctor finds the unit installed and enabled,
    the daemon running, the state directory private and a recent cycle. Its two warnings are
    this test's layout: an auto policy without signatures, reports to the source repository."""
    before = box.run("sha256sum", "/etc/petkeeper/agent.yml").stdout
    init = box.run("petkeeper", "init", "--url", f"file://{REMOTE}", check=False)
    assert (init.returncode, init.stderr.strip()) == (1, (
        "petkeeper: error: init: /etc/petkeeper/agent.yml already exists; nothing was changed; "
        "pass --force to replace it (deploy keys are kept)")), init.stderr
    assert box.run("sha256sum", "/etc/petkeeper/agent.yml").stdout == before

    doctor = box.run("petkeeper", "doctor", "--json", check=False)
    checks = {c["check"]: (c["status"], c["message"]) for c in
              json.loads(doctor.stdout)["checks"]}
    assert {name: status for name, (status, _) in checks.items()} == {
        "config": "ok", "source": "ok", "playbooks": "ok", "signatures": "warn",
        "reports layout": "warn",
        "reports push": "ok", "hosts": "ok", "ansible-core": "ok", "ansible-runner": "ok",
        "state directory": "ok", "disk": "ok", "last cycle": "ok", "unit": "ok",
        "daemon": "ok"}, doctor.stdout
    assert doctor.returncode == 3, doctor.stderr
    assert checks["unit"][1] == ("/etc/systemd/system/petkeeper.service is installed "
                                 "(/usr/local/bin/petkeeper) and enabled")
    assert checks["daemon"][1] == f"running (pid {box.show('MainPID')['MainPID']})"
    assert checks["state directory"][1] == "/var/lib/petkeeper is root's, mode 0700"


def test_the_running_service_reloads_takes_run_now_and_follows_a_new_commit(
        box: Box, remote: GitRemote):
    remote.commit({"local.yml": local_yml(MOTD), "petkeeper/policy.yml": AUTO})
    start(box)
    first = box.wait_for_cycle().group(1)

    # A broken config on reload: refused (an error in the journal), then fixed and reloaded.
    box.run("sh", "-c", "cp /etc/petkeeper/agent.yml /root/agent.yml && "
                        "echo 'repo: [' > /etc/petkeeper/agent.yml")
    box.run("systemctl", "reload", "petkeeper")  # ExecReload: SIGHUP
    box.wait_for("the refused reload in the journal", lambda: "reload: keeping the running "
                 "config" in box.journal(), 60)
    box.run("cp", "/root/agent.yml", "/etc/petkeeper/agent.yml")
    box.run("systemctl", "reload", "petkeeper")
    box.wait_for("reload in the journal", lambda: "reloaded /etc/petkeeper/agent.yml" in
                 box.journal(), 60)
    asked = box.run("petkeeper", "run", "--now")  # SIGUSR1, to the PID systemd runs
    assert f"(pid {box.show('MainPID')['MainPID']})" in asked.stdout, asked.stdout
    second = box.wait_for_cycle(after=first).group(1)
    assert "cycle due: asked for (petkeeper run --now)" in box.journal()

    newer = remote.commit({"local.yml": local_yml(NEW_MOTD)})
    m = box.wait_for_cycle(after=second)
    assert m.group(2, 3, 4) == ("0", "1 clean", "1"), box.explain()
    assert box.run("cat", "/etc/motd").stdout == NEW_MOTD
    assert "cycle due: new source commit" in box.journal()
    report = yaml.safe_load(remote.show(f"petkeeper/hosts/{PET}", f"hosts/{PET}.yml"))
    assert (report["status"], report["source_sha"]) == ("clean", newer)
    stop_cleanly(box)
    assert_journal_priorities(box)


def assert_journal_priorities(box: Box) -> None:
    """Under systemd each line carries its priority (sd-daemon(3) <N> prefixes) and no time of
    its own: journalctl -p warning shows exactly the warnings and errors, here the one refused
    reload; every cycle wrote one result line at info."""
    warnings = box.run("journalctl", "--unit", "petkeeper", "--priority", "warning",
                       "--no-pager", "--output", "cat").stdout.splitlines()
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("error: reload: keeping the running config: "
                                  "/etc/petkeeper/agent.yml: "), warnings
    out = box.run("journalctl", "--unit", "petkeeper", "--no-pager", "--output", "json",
                  "--output-fields", "PRIORITY,MESSAGE,SYSLOG_IDENTIFIER").stdout
    ours = [json.loads(line) for line in out.splitlines() if '"petkeeper"' in line]
    ours = [r for r in ours if r.get("SYSLOG_IDENTIFIER") == "petkeeper"]
    assert ours and all(not re.match(r"<\d>|\d{4}-\d\d-\d\dT", str(r["MESSAGE"]))
                        for r in ours), ours  # the prefix was read, and no time of our own
    results = [r for r in ours if re.match(r"cycle \S+ \(daemon run\) exit 0: 1 clean; ",
                                           str(r["MESSAGE"]))]
    assert len(results) == 3 and {r["PRIORITY"] for r in results} == {"6"}, ours
    assert "applied: pet-in-a-box plan " in results[-1]["MESSAGE"], results
