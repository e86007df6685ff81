"""Faults that lose nothing: a Git remote that hangs or dies mid-transfer, a full disk, a host
lost mid-run, a changed or unknown host key. Each test asserts the one clear error and that
nothing was lost or changed: state files, queued reports, remote refs, host files."""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from agent.config import load_config
from agent.cycle.steps import run_check
from agent.errors import FetchError, TransientError
from agent.testhosts import TestHostPool, free_port
from tests.baseline import ensure_converged
from tests.conftest import (
    PLAYBOOK,
    GitRemote,
    check_json,
    git,
    pet_hosts,
    petkeeper,
    pets_repo_files,
    processes_in,
    require_test_hosts,
    write_agent_config,
)

pytestmark = pytest.mark.hosts

# This file's loopback addresses: its own hosts, and its Git daemon and fault proxies.
HOSTS = {"alpha": "127.0.85.11", "beta": "127.0.85.12", "gamma": "127.0.85.13"}
LOOPBACK = "127.0.85.1"
DEADLINE = 240.0  # generous: the machine is shared, and a test that waits less costs nothing


@pytest.fixture(scope="module")
def fault_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestHostPool]:
    require_test_hosts()
    with TestHostPool(tmp_path_factory.mktemp("fault-hosts")) as pool:
        yield pool


@pytest.fixture
def pool(fault_pool: TestHostPool) -> TestHostPool:
    """The module's hosts, every one running (a test may have stopped or re-keyed one)."""
    for name, address in HOSTS.items():
        if name not in fault_pool.hosts:
            fault_pool.start(name, address)
    return fault_pool


@pytest.fixture
def pets(pool: TestHostPool, remote: GitRemote, tmp_path: Path) -> Callable[..., Path]:
    """Commit the pets repo for some hosts, converge them (those not converged yet: the
    module's hosts stay converged between tests), and return an agent config."""
    def make(*names: str, **settings: object) -> Path:
        remote.commit(pets_repo_files(pet_hosts(pool, *names)))
        ensure_converged(pool, remote, names, tmp_path)
        return write_agent_config(tmp_path / "agent.yml", remote.url, tmp_path / "state", pool,
                                  **settings)
    return make


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("petkeeper: error: ") and "Traceback" not in r.stderr
    return lines[0]


def edit_config(cfg: Path, **settings: object) -> None:
    """Replace top-level SETTINGS of the agent config CFG."""
    data = yaml.safe_load(cfg.read_text())
    data.update(settings)
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))


def refs(git_dir: Path) -> str:
    return git("--git-dir", str(git_dir), "for-each-ref")


def host_files(pool: TestHostPool, *names: str) -> dict[str, str]:
    return {n: pool.run(n, "md5sum /etc/motd /etc/pet.conf", check=False).stdout for n in names}


# --- 1. a Git remote that hangs, or dies in the middle of a pack -----------------------------

class FlakyRemote:
    """A TCP proxy on loopback in front of a `git daemon`: it forwards, or accepts and never
    answers ("hang"), or forwards the first CUT bytes of the answer and hangs up ("cut")."""

    def __init__(self, upstream: int | None, cut: int = 100_000) -> None:
        self.upstream, self.cut, self.mode = upstream, cut, "forward"
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        self.threads: list[threading.Thread] = []
        self.lock, self.closing = threading.Lock(), False
        self._start(self._accept)

    def url(self, path: str) -> str:
        return f"git://{LOOPBACK}:{self.port}/{path}"

    def close(self) -> None:
        """Wake every thread (shutdown), wait for them, then close the sockets: a thread still
        blocked on a closed socket's number would serve whatever socket reuses it next."""
        with self.lock:
            self.closing = True
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self.threads:
            t.join(timeout=30)
        for s in self.sockets:
            s.close()

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # shut down
            with self.lock:
                self.sockets.append(client)
                if self.closing or self.mode == "hang" or self.upstream is None:
                    continue
                server = socket.create_connection((LOOPBACK, self.upstream))
                self.sockets.append(server)
                self._start(_pump, client, server, 0)
                self._start(_pump, server, client, self.cut if self.mode == "cut" else 0)


def _pump(src: socket.socket, dst: socket.socket, limit: int) -> None:
    """Copy SRC to DST, passing its end on as a half-close; with LIMIT, stop after LIMIT bytes
    and drop the whole connection, as a remote that dies mid-pack."""
    sent, ends = 0, [(dst, socket.SHUT_WR)]
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            if limit and sent + len(data) >= limit:
                dst.sendall(data[:limit - sent])
                ends = [(src, socket.SHUT_RDWR), (dst, socket.SHUT_RDWR)]
                break
            dst.sendall(data)
            sent += len(data)
    for sock, how in ends:
        with contextlib.suppress(OSError):
            sock.shutdown(how)


@pytest.fixture
def git_daemon(remote: GitRemote) -> Iterator[int]:
    """`git daemon` serving REMOTE read-only on loopback; return its port."""
    port = free_port(LOOPBACK)
    folder = str(remote.bare.parent)
    proc = subprocess.Popen(["git", "daemon", "--reuseaddr", f"--listen={LOOPBACK}",
                             f"--port={port}", f"--base-path={folder}", "--export-all", folder],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, "git daemon did not start"
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((LOOPBACK, port)) == 0


@pytest.fixture
def flaky(git_daemon: int) -> Iterator[FlakyRemote]:
    proxy = FlakyRemote(git_daemon)
    yield proxy
    proxy.close()


def test_remote_that_never_answers_fails_the_first_run_with_one_line_and_no_state(pool,
                                                                                   tmp_path):
    silent = FlakyRemote(upstream=None)
    silent.mode = "hang"
    url = silent.url("pets.git")
    cfg = write_agent_config(tmp_path / "agent.yml", url, tmp_path / "state", pool,
                             repo={"url": url, "branch": "main", "timeout": "3s"})
    try:
        started = time.monotonic()
        r = petkeeper("--config", str(cfg), "check")
        elapsed = time.monotonic() - started
        with pytest.raises(FetchError) as raised:
            run_check(load_config(cfg))
    finally:
        silent.close()

    line = one_error_line(r)
    assert line.startswith(f"petkeeper: error: git fetch {url} failed: ")
    assert raised.value.transient  # the daemon retries it with backoff
    assert elapsed < 60  # the timeout ended it, not the test's patience
    state = tmp_path / "state"
    assert not (state / "status.json").exists()
    assert not (state / "trees").exists() or not any((state / "trees").iterdir())
    assert refs(state / "mirror.git") == ""


def test_remote_failing_mid_fetch_keeps_the_last_good_commit_and_a_sound_mirror(
        pets, remote, flaky, tmp_path):
    url = flaky.url("remote.git")
    cfg = pets("alpha", "beta", repo={"url": url, "branch": "main", "timeout": "60s"},
               reports={"url": remote.url})
    code, good = check_json(cfg)
    assert code == 0
    # A pack of a few MB: cut after 100 kB, the transfer stops in its middle.
    new = remote.commit({"blob.bin": os.urandom(4_000_000)}, "Add a large file")
    reports_before = refs(remote.bare)
    state = tmp_path / "state"
    for fault in ("cut", "hang"):  # one after the other: the second finds what the first left
        timeout = "4s" if fault == "hang" else "60s"
        edit_config(cfg, repo={"url": url, "branch": "main", "timeout": timeout})
        flaky.mode = fault
        code, stale = check_json(cfg)
        assert code == 1, fault
        assert_last_good_commit_checked(stale, good, state, url)
        assert refs(remote.bare) == reports_before  # same drift, same source: nothing to commit

    flaky.mode = "forward"
    edit_config(cfg, repo={"url": url, "branch": "main", "timeout": "60s"})
    code, fresh = check_json(cfg)
    assert fresh["fetch_error"] is None
    assert (code, fresh["source_sha"]) == (0, new), fresh["hosts"]
    assert (state / "trees" / new / "blob.bin").stat().st_size == 4_000_000


def assert_last_good_commit_checked(stale: dict, good: dict, state: Path, url: str) -> None:
    """The check after a failed fetch: the last good commit checked, the mirror sound."""
    mirror = state / "mirror.git"
    assert stale["source_sha"] == good["source_sha"]
    assert stale["fetch_error"].startswith(f"git fetch {url} failed: ")
    assert {h["status"] for h in stale["hosts"].values()} == {"clean"}
    assert git("--git-dir", str(mirror), "rev-parse", "refs/remotes/origin/main").strip() == \
        good["source_sha"]
    git("--git-dir", str(mirror), "fsck", "--no-dangling")  # raises if the mirror is broken
    assert list((mirror / "objects" / "pack").glob("tmp_*")) == []  # no partial pack kept
    assert sorted(p.name for p in (state / "trees").iterdir()) == [good["source_sha"]]


# --- 2. a full disk under the state directory, or under the reports remote -------------------

@pytest.fixture
def small_disk() -> Iterator[Callable[[Path, str], Path]]:
    """Mount a small tmpfs on a new folder; every one mounted here is unmounted after."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str = "16m") -> Path:
        folder.mkdir(mode=0o700)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700",
                        "petkeeper-test-faults", str(folder)], check=True, timeout=30)
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        unmount(folder)


def unmount(folder: Path) -> None:
    """Unmount FOLDER; a process still using it is a defect of the test or of the agent."""
    gc.collect()  # files an in-process cycle's error still holds open (its traceback's frames)
    deadline = time.monotonic() + 30
    while True:
        r = subprocess.run(["umount", str(folder)], capture_output=True, text=True, timeout=30)
        if r.returncode == 0:
            return
        if time.monotonic() > deadline:
            users = {**processes_in(folder), **files_open_in(folder)}
            subprocess.run(["umount", "--lazy", str(folder)], check=True, timeout=30)
            pytest.fail(f"{folder} stayed busy ({r.stderr.strip()}): {users}")
        time.sleep(0.5)


def files_open_in(folder: Path) -> dict[str, str]:
    """PID -> a file inside FOLDER it holds open."""
    found = {}
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            if os.readlink(fd).startswith(f"{folder}{os.sep}"):
                found[fd.parent.parent.name] = os.readlink(fd)
    return found


def fill(folder: Path) -> Path:
    """Fill FOLDER's filesystem to the last byte; return the file to delete to free it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    chunk = 1 << 20
    try:
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)
    return filler


def decline_pushes(remote: GitRemote) -> Path:
    """Make REMOTE decline every push while the returned file exists."""
    flag = remote.bare.parent / "declining"
    flag.touch()
    hook = remote.bare / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\nif [ -e {flag} ]; then echo 'remote busy' >&2; exit 1; fi\n")
    hook.chmod(0o755)
    return flag


def kept(state: Path, remote: GitRemote, pool: TestHostPool, *names: str) -> dict[str, object]:
    """What a fault must leave as it was: status, queue and mirror, remote refs, host files."""
    return {"status": (state / "status.json").read_bytes(), "mirror": refs(state / "mirror.git"),
            "remote": remote.refs(), "hosts": host_files(pool, *names)}


def test_full_state_disk_stops_the_cycle_with_one_line_and_loses_no_queued_report(
        pets, pool, remote, small_disk, tmp_path):
    state = small_disk(tmp_path / "state")
    cfg = pets("alpha", "beta")
    declining = decline_pushes(remote)
    code, first = check_json(cfg)
    assert code == 0 and first["reports"]["queued"] == 2 and not first["reports"]["pushed"]
    declining.unlink()
    before = kept(state, remote, pool, "alpha", "beta")
    filler = fill(state)

    line = one_error_line(petkeeper("--config", str(cfg), "check"))

    assert line == (f"petkeeper: error: {state}/lock: cannot write: no space left on device; "
                    f"free space on {state} (df -h {state}), then run again")
    assert kept(state, remote, pool, "alpha", "beta") == before
    filler.unlink()
    code, later = check_json(cfg)
    assert code == 0 and later["reports"]["pushed"] and later["reports"]["queued"] == 0
    assert sorted(remote.log()) == ["alpha: clean (0 changes, 1 check-blind)",
                                    "beta: clean (0 changes, 1 check-blind)"]


# The check waits on each host until the test says go, then prints a long line (what
# ansible-runner writes to its artifacts), then checks the pets as usual.
WAITING_PLAYBOOK = PLAYBOOK.replace("  roles:\n", """\
  pre_tasks:
    - name: Wait until the test says go
      ansible.builtin.shell: >-
        touch /var/tmp/pk-waiting; until [ -e /var/tmp/pk-go ]; do sleep 0.2; done
      check_mode: false
      changed_when: false
      timeout: 600
    - name: Print a long line
      ansible.builtin.debug:
        msg: "{{ 'x' * 20000 }}"
  roles:
""")


def hold(pool: TestHostPool, *names: str) -> None:
    """The next check waits on hosts NAMES until say_go()."""
    for name in names:
        pool.run(name, "rm -f /var/tmp/pk-waiting /var/tmp/pk-go")


def wait_until_waiting(pool: TestHostPool, names: tuple[str, ...],
                       running: Callable[[], bool]) -> None:
    """Return once the check waits on every host of NAMES (AssertionError if it never does)."""
    deadline = time.monotonic() + DEADLINE
    while not all(pool.hosts[n].path("/var/tmp/pk-waiting").exists() for n in names):
        if not running() or time.monotonic() > deadline:
            raise AssertionError(f"the check did not reach the waiting task on {names}")
        time.sleep(0.2)


def say_go(pool: TestHostPool, *names: str) -> None:
    for name in names:
        pool.run(name, "touch /var/tmp/pk-go")


# ansible-runner 2.4 closes its stdout and stderr artifact files only when the run ends
# normally: after its failed write they stay open until collected (here, when unmounting).
@pytest.mark.filterwarnings("ignore:Exception ignored in. <_io.FileIO name='[^']*/artifacts/"
                            ":pytest.PytestUnraisableExceptionWarning")
def test_state_disk_filling_up_during_the_check_stops_ansible_and_keeps_the_last_status(
        pets, pool, remote, small_disk, tmp_path):
    state = small_disk(tmp_path / "state")
    cfg = pets("alpha", "beta")
    assert check_json(cfg)[0] == 0
    remote.commit({"site.yml": WAITING_PLAYBOOK}, "Wait for the test")
    hold(pool, "alpha", "beta")
    done, seen = threading.Event(), {}

    def fill_while_ansible_waits() -> None:
        try:
            wait_until_waiting(pool, ("alpha", "beta"), lambda: not done.is_set())
            seen["before"] = kept(state, remote, pool, "alpha", "beta")
            seen["filler"] = fill(state)
        finally:
            say_go(pool, "alpha", "beta")

    helper = threading.Thread(target=fill_while_ansible_waits)
    helper.start()
    try:  # in this process, as the daemon runs it: what Ansible leaves running would stay
        with pytest.raises(TransientError) as raised:
            run_check(load_config(cfg))
    finally:
        done.set()
        helper.join()

    assert str(raised.value) == (f"{state}/runner: cannot write ansible-runner's files: no "
                                 f"space left on device; free space on {state} (df -h "
                                 f"{state}), then run again")
    assert processes_in(state) == {}  # Ansible was stopped, not left running
    assert kept(state, remote, pool, "alpha", "beta") == seen["before"]
    seen["filler"].unlink()
    code, later = check_json(cfg)
    assert code == 0 and later["reports"]["pushed"] and later["reports"]["queued"] == 0
    assert later["source_sha"] == remote.rev("main")


def test_full_reports_remote_keeps_reports_queued_until_it_has_space(pets, pool, small_disk,
                                                                     tmp_path):
    elsewhere = GitRemote(small_disk(tmp_path / "reports-disk", "8m"))
    cfg = pets("alpha", "beta", reports={"url": elsewhere.url})
    filler = fill(elsewhere.bare.parent)

    code, full = check_json(cfg)

    assert code == 0  # the hosts were checked: only the push waits
    assert full["reports"]["queued"] == 2 and not full["reports"]["pushed"]
    assert full["reports"]["error"].startswith("git push failed: the remote is out of disk "
                                               "space (")
    assert "No space left on device" in full["reports"]["error"]
    assert elsewhere.refs() == ""
    status = json.loads(petkeeper("--config", str(cfg), "status", "--json").stdout)
    assert status["last_run"]["reports"]["queued"] == 2
    filler.unlink()
    code, later = check_json(cfg)
    assert later["reports"]["pushed"] and later["reports"]["queued"] == 0
    assert sorted(elsewhere.log()) == ["alpha: clean (0 changes, 1 check-blind)",
                                       "beta: clean (0 changes, 1 check-blind)"]


# --- 3. a host lost in the middle of the run -------------------------------------------------

def test_host_lost_mid_run_is_unreachable_while_the_others_report_their_real_status(
        pets, pool, remote):
    cfg = pets("alpha", "beta", "gamma")
    pool.run("gamma", "echo 'edited by hand' >> /etc/motd")
    remote.commit({"site.yml": WAITING_PLAYBOOK}, "Wait for the test")
    hold(pool, "alpha", "beta", "gamma")
    check = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(cfg), "check",
                              "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True)
    try:
        wait_until_waiting(pool, ("alpha", "beta", "gamma"), lambda: check.poll() is None)
    except AssertionError:
        check.kill()
        raise AssertionError(check.communicate()) from None
    before = host_files(pool, "alpha", "gamma")
    pool.stop("beta")  # the `pool` fixture starts it again (a fresh one) for the next test
    say_go(pool, "alpha", "gamma")
    try:
        out, err = check.communicate(timeout=DEADLINE)
        after = host_files(pool, "alpha", "gamma")
    finally:
        pool.run("gamma", "sed -i '/edited by hand/d' /etc/motd")  # converged for the next
    report = json.loads(out)

    assert check.returncode == 1, err
    hosts = report["hosts"]
    assert hosts["beta"]["status"] == "unreachable"
    # Ansible's words depend on the moment the connection broke: the plain strategy's name ssh,
    # Mitogen's (the default) say the connection was lost (agent.core.accelerator.plain_words).
    assert "ssh" in hosts["beta"]["message"] or \
        "connection to the host was lost" in hosts["beta"]["message"]
    assert hosts["alpha"]["status"] == "clean"
    assert hosts["gamma"]["status"] == "drifted"
    assert [c["task"] for c in hosts["gamma"]["changes"] if not c["check_blind"]] == \
        ["Write the message of the day"]
    assert "+edited by hand" not in hosts["gamma"]["changes"][0]["diff"]
    assert "-edited by hand" in hosts["gamma"]["changes"][0]["diff"]
    assert sorted(report["reports"]["committed"]) == ["alpha", "beta", "gamma"]
    assert report["reports"]["pushed"] and report["reports"]["queued"] == 0
    assert "status: drifted" in remote.show("petkeeper/hosts/gamma", "hosts/gamma.yml")
    assert "status: unreachable" in remote.show("petkeeper/hosts/beta", "hosts/beta.yml")
    assert after == before  # a check changes nothing


# --- 4. a host key that changed, or that was never known -------------------------------------

def test_changed_or_unknown_host_key_is_refused_with_the_fix_and_known_hosts_untouched(
        pets, pool, remote, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    cfg = pets("alpha", "beta", "gamma",
               ansible={"private_key_file": str(pool.client_key),
                        "known_hosts_file": str(known_hosts)})
    shutil.copy(pool.known_hosts, known_hosts)
    beta = pool.rekey("beta")  # beta's key changed (a fresh host: the next test converges it)
    gamma = pool.hosts["gamma"]  # gamma's key was never known
    known_hosts.write_text("".join(
        line for line in known_hosts.read_text().splitlines(keepends=True)
        if not line.startswith(f"[{gamma.address}]:")))
    trusted = known_hosts.read_bytes()
    refused_files = host_files(pool, "beta", "gamma")

    code, report = check_json(cfg)

    assert code == 1
    assert report["hosts"]["alpha"]["status"] == "clean"  # the others are checked as usual
    messages = {}
    for name in ("beta", "gamma"):
        assert report["hosts"][name]["status"] == "unreachable"
        messages[name] = report["hosts"][name]["message"]
        assert "\n" not in messages[name] and "\r" not in messages[name]
        reported = yaml.safe_load(remote.show(f"petkeeper/hosts/{name}", f"hosts/{name}.yml"))
        assert reported["message"] == messages[name]
    host = f"[{beta.address}]:{beta.port}"
    assert messages["beta"].startswith(f"host key changed: {host} now sends ED25519 key "
                                       f"{beta.fingerprint}, not the one in {known_hosts}:")
    assert f"ssh-keygen -R '{host}' -f {known_hosts}" in messages["beta"]
    assert messages["gamma"].startswith(
        f"host key unknown: no ED25519 key for [{gamma.address}]:{gamma.port} in known_hosts; "
        "refused, never trusted on first use")
    assert known_hosts.read_bytes() == trusted  # never trusted on first use, nor replaced
    assert host_files(pool, "beta", "gamma") == refused_files
