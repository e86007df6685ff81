"""Throwaway SSH "pets" on loopback, for the demo and the tests.

Each host is a real OpenSSH ``sshd`` running as PID 1 of its own mount, UTS and PID
namespaces (``unshare``), with overlayfs over ``/etc /var /srv /root /home /opt /usr`` so
that it has its own filesystem view, its own hostname, its own host key and root's
authorized key. It shares the machine's network and listens on a loopback address only.
Needs root, ``unshare`` (util-linux) and ``/usr/sbin/sshd`` (openssh-server).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import AgentError

SSHD = "/usr/sbin/sshd"
OVERLAID = ("etc", "var", "srv", "root", "home", "opt", "usr")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

INIT_SCRIPT = """\
#!/bin/sh
set -e
H="$1"; NAME="$2"; LISTEN="$3"
hostname "$NAME"
for d in {overlaid}; do
  mkdir -p "$H/upper/$d" "$H/work/$d"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$H/upper/$d,workdir=$H/work/$d" "/$d"
done
# Copy what sshd needs before /tmp (where tests keep $H) is hidden by a tmpfs.
mkdir -p /root/.ssh /etc/ssh
cp "$H/authorized_keys" /root/.ssh/authorized_keys
cp "$H/ssh_host_ed25519_key" /etc/ssh/petkeeper_test_host_key
chmod 700 /root/.ssh
chmod 600 /root/.ssh/authorized_keys /etc/ssh/petkeeper_test_host_key
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /run/sshd
exec {sshd} -D -e -f /dev/null -o "ListenAddress=$LISTEN" \\
  -o HostKey=/etc/ssh/petkeeper_test_host_key -o UsePAM=no \\
  -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no \\
  -o PermitRootLogin=prohibit-password -o PidFile=none \\
  -o AuthorizedKeysFile=.ssh/authorized_keys -o MaxStartups=100 \\
  -o "Subsystem=sftp internal-sftp"
""".format(overlaid=" ".join(OVERLAID), sshd=SSHD)


class TestHostError(AgentError):
    """A test host could not be started or reached."""


@dataclass(frozen=True)
class TestHost:
    """One running test host, reachable as root@address:port."""

    __test__ = False  # a harness, not a pytest test class

    name: str
    address: str
    port: int
    pid: int  # the namespace's PID 1 (sshd), as seen from this machine
    root: Path  # its private folder: keys, overlay upper dirs, log
    host_key: str  # public host key, "ssh-ed25519 AAAA..."

    @property
    def known_hosts_line(self) -> str:
        return f"[{self.address}]:{self.port} {self.host_key}"

    @property
    def fingerprint(self) -> str:
        """The host key's fingerprint as ssh prints it: "SHA256:" and unpadded base64."""
        digest = hashlib.sha256(base64.b64decode(self.host_key.split()[1])).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def path(self, inside: str) -> Path:
        """Where a file the host wrote under an overlaid folder lands on this machine."""
        return self.root / "upper" / inside.lstrip("/")


@dataclass
class TestHostPool:
    """Starts, reaches and stops test hosts that share one client key."""

    __test__ = False

    workdir: Path
    hosts: dict[str, TestHost] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        self.client_key = self.workdir / "client_key"
        if not self.client_key.exists():
            _keygen(self.client_key, "petkeeper-test-client")
        self.known_hosts = self.workdir / "known_hosts"
        self.known_hosts.touch(mode=0o600)

    def start(self, name: str, address: str = "127.0.0.1", port: int | None = None) -> TestHost:
        """Start host NAME listening on ADDRESS:PORT (a free port when None)."""
        port = port or free_port(address)
        root = _prepare_root(self, name)
        init = root / "init.sh"
        log = (root / "sshd.log").open("wb")
        argv = ["unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc",
                str(init), str(root), name, f"{address}:{port}"]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        log.close()
        self._procs[name] = proc
        try:
            inner = _wait_listening(proc, address, port, root / "sshd.log")
        except TestHostError:
            self._reap(name)
            raise
        host_key = (root / "ssh_host_ed25519_key.pub").read_text().split()
        host = TestHost(name, address, port, inner, root, f"{host_key[0]} {host_key[1]}")
        self.hosts[name] = host
        self._write_known_hosts()
        return host

    def stop(self, name: str) -> None:
        """Stop host NAME: its sshd and every process in its namespaces end."""
        host = self.hosts.pop(name, None)
        if host is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(host.pid, signal.SIGTERM)
        self._reap(name)
        self._write_known_hosts()

    def rekey(self, name: str) -> TestHost:
        """Restart host NAME on the same address and port with a new host key (and a fresh
        filesystem), as a reinstalled server or a man in the middle looks to ssh. The pool's
        known_hosts gets the new key: copy it first to keep the old one."""
        old = self.hosts[name]
        self.stop(name)
        return self.start(name, old.address, old.port)

    def stop_all(self) -> None:
        for name in list(self._procs):
            self.stop(name)

    def run(self, name: str, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a shell COMMAND inside host NAME, as a person logged in there would."""
        host = self.hosts[name]
        argv = ["nsenter", f"--target={host.pid}", "--mount", "--uts", "--pid", "--",
                "/bin/sh", "-c", command]
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)

    def ssh_argv(self, name: str) -> list[str]:
        host = self.hosts[name]
        return ["ssh", "-i", str(self.client_key), "-p", str(host.port),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", f"root@{host.address}"]

    def __enter__(self) -> TestHostPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def _reap(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is None:
            return
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            inner = _child_pid(proc.pid)
            for pid in (inner, proc.pid):
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT)

    def _write_known_hosts(self) -> None:
        lines = [h.known_hosts_line for h in self.hosts.values()]
        self.known_hosts.write_text("".join(f"{line}\n" for line in lines))


def free_port(address: str) -> int:
    """Return a TCP port that is free on ADDRESS right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, timeout=30, stdin=subprocess.DEVNULL)


def _child_pid(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _wait_listening(proc: subprocess.Popen[bytes], address: str, port: int, log: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TestHostError(f"test host on {address}:{port} exited: {log.read_text().strip()}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex((address, port)) == 0:
                inner = _child_pid(proc.pid)
                if inner:
                    return inner
        time.sleep(0.05)
    raise TestHostError(f"test host on {address}:{port} did not listen within {START_TIMEOUT}s: "
                        f"{log.read_text().strip()}")


# Detached hosts, for tools that start a host in one process and stop it in another (Molecule's
# create.yml and destroy.yml):
#   python -m agent.testhosts start --workdir DIR --name NAME --address 127.0.8x.y [--port N]
#   python -m agent.testhosts stop --workdir DIR --name NAME
# A detached host runs in a session of its own and outlives the command that started it. Its
# PIDs go to DIR/<name>.json, the only record `stop` trusts: no process is found by its name.
# The hosts of one DIR share DIR/client_key and DIR/known_hosts, as a TestHostPool's do.

STATE_SCHEMA = 1
PRINTED = ("name", "address", "port", "pid", "unshare_pid", "identity_file", "known_hosts")


def start_detached(workdir: Path, name: str, address: str, port: int | None = None
                   ) -> dict[str, Any]:
    """Start host NAME on ADDRESS:PORT so that it outlives this process; record its state in
    WORKDIR/NAME.json and return it. TestHostError if NAME runs already or the port is taken."""
    overlaid = [f"/{d}" for d in OVERLAID if workdir.resolve().is_relative_to(f"/{d}")]
    if overlaid:
        # Its overlay upper dirs must lie outside the folders the host overlays.
        raise TestHostError(f"{workdir}: a host's work folder cannot be under {overlaid[0]}, "
                            "which test hosts overlay; use one under /tmp")
    with _workdir_lock(workdir):
        pool = TestHostPool(workdir)  # creates the shared client key and known_hosts once
        old = _read_state(workdir, name)
        if old is not None and _owned_pids(old):
            raise TestHostError(f"test host {name} is already running (pid {old['pid']}); "
                                f"stop it first: python -m agent.testhosts stop --workdir "
                                f"{workdir} --name {name}")
        port = port or free_port(address)
        if _listening(address, port):
            raise TestHostError(f"{address}:{port} is already in use; pick another address "
                                "or port, or stop what listens there")
        root = _prepare_root(pool, name)
        with (root / "sshd.log").open("wb") as log:
            # A session of its own: the host survives its starter and the starter's process
            # group (Ansible and Molecule stop theirs); `stop` ends it by its recorded PIDs.
            proc = subprocess.Popen(
                ["unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc",
                 str(root / "init.sh"), str(root), name, f"{address}:{port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        try:
            inner = _wait_listening(proc, address, port, root / "sshd.log")
        except TestHostError:
            _stop_pids(_child_pid(proc.pid), proc.pid)
            proc.wait(timeout=STOP_TIMEOUT)
            raise
        host_key = (root / "ssh_host_ed25519_key.pub").read_text().split()
        state = {"schema": STATE_SCHEMA, "name": name, "address": address, "port": port,
                 "pid": inner, "unshare_pid": proc.pid, "identity_file": str(pool.client_key),
                 "known_hosts": str(pool.known_hosts), "root": str(root),
                 "host_key": f"{host_key[0]} {host_key[1]}"}
        _write_atomically(workdir / f"{name}.json", json.dumps(state, indent=2) + "\n")
        _write_detached_known_hosts(workdir)
        return state


def stop_detached(workdir: Path, name: str) -> bool:
    """Stop detached host NAME by the PIDs in WORKDIR/NAME.json: SIGTERM to its namespace's
    PID 1, then SIGKILL if it lingers. Return False when it was not running."""
    if not workdir.is_dir():
        return False  # nothing was ever started there: leave no folder behind either
    with _workdir_lock(workdir):
        state = _read_state(workdir, name)
        if state is None:
            return False
        pids = _owned_pids(state)
        if pids:
            _stop_pids(*pids)
            left = [pid for pid in pids if _running(pid)]
            if left:
                raise TestHostError(f"test host {name}: processes {left} survived SIGKILL")
        (workdir / f"{name}.json").unlink()
        _write_detached_known_hosts(workdir)
        return bool(pids)


def _prepare_root(pool: TestHostPool, name: str) -> Path:
    """Create host NAME's private folder: host key, root's authorized key, init script."""
    root = pool.workdir / name
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(mode=0o700)
    _keygen(root / "ssh_host_ed25519_key", name)
    shutil.copy(pool.client_key.with_suffix(".pub"), root / "authorized_keys")
    init = root / "init.sh"
    init.write_text(INIT_SCRIPT)
    init.chmod(0o700)
    return root


def _owned_pids(state: dict[str, Any]) -> tuple[int, ...]:
    """The recorded (pid, unshare_pid) if they are still this host's processes, else ().

    A PID can be reused once its process is gone: the unshare must still run this host's
    init script and be the namespace PID 1's parent, or nothing is signalled."""
    pid, unshare_pid = int(state["pid"]), int(state["unshare_pid"])
    init = os.path.join(str(state["root"]), "init.sh").encode()
    owner = _read_proc_file(unshare_pid, "cmdline").split(b"\0")
    if not _running(unshare_pid) or init not in owner:
        return ()
    if _running(pid) and _parent_pid(pid) == unshare_pid:
        return (pid, unshare_pid)
    return (unshare_pid,)


def _stop_pids(pid: int | None, unshare_pid: int | None = None) -> None:
    """SIGTERM the namespace's PID 1 (its sshd; the kernel then ends every process in the
    namespace, and unshare exits), wait, then SIGKILL whatever is left, PID 1 first."""
    pids = [p for p in (pid, unshare_pid) if p]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        targets = pids[:1] if sig == signal.SIGTERM and pid else pids
        for target in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and any(_running(p) for p in pids):
            time.sleep(0.05)
        if not any(_running(p) for p in pids):
            return


def _running(pid: int) -> bool:
    """Whether PID exists and is not a zombie (an orphan's zombie may wait long for init)."""
    fields = _read_proc_file(pid, "stat").rpartition(b")")[2].split()
    return bool(fields) and fields[0] != b"Z"


def _parent_pid(pid: int) -> int | None:
    fields = _read_proc_file(pid, "stat").rpartition(b")")[2].split()
    return int(fields[1]) if len(fields) > 1 else None


def _read_proc_file(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def _listening(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((address, port)) == 0


def _read_state(workdir: Path, name: str) -> dict[str, Any] | None:
    path = workdir / f"{name}.json"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise TestHostError(f"{path}: not a test host state file ({e}); remove it") from e
    if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA:
        raise TestHostError(f"{path}: unknown state schema; remove it")
    return state


def _write_detached_known_hosts(workdir: Path) -> None:
    lines = []
    for path in sorted(workdir.glob("*.json")):
        with contextlib.suppress(TestHostError):
            state = _read_state(workdir, path.stem)
            if state is not None:
                lines.append(f"[{state['address']}]:{state['port']} {state['host_key']}\n")
    _write_atomically(workdir / "known_hosts", "".join(lines))


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _workdir_lock(workdir: Path) -> Iterator[None]:
    """Serialise starts and stops in WORKDIR (they share its key and known_hosts)."""
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (workdir / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """The `python -m agent.testhosts` command line: start or stop one detached host."""
    parser = argparse.ArgumentParser(prog="python -m agent.testhosts",
                                     description="Start or stop an SSH test host (needs root).")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start a host that outlives this command; "
                                "print it as JSON")
    stop = commands.add_parser("stop", help="stop a host started by `start`")
    for sub in (start, stop):
        sub.add_argument("--workdir", type=Path, required=True,
                         help="folder of the hosts' state, keys and known_hosts")
        sub.add_argument("--name", required=True, help="host name, also its hostname")
    start.add_argument("--address", required=True, help="loopback address to listen on")
    start.add_argument("--port", type=int, default=None, help="default: a free port")
    args = parser.parse_args(argv)
    workdir = args.workdir.absolute()
    try:
        if args.command == "start":
            state = start_detached(workdir, args.name, args.address, args.port)
            print(json.dumps({key: state[key] for key in PRINTED}))
        else:
            print(json.dumps({"name": args.name, "stopped": stop_detached(workdir, args.name)}))
    except (TestHostError, OSError, subprocess.SubprocessError) as e:
        print(f"testhosts: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
