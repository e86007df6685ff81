"""Throwaway SSH "pets" on loopback, for the demo and the tests.

Each host is a real OpenSSH ``sshd`` running as PID 1 of its own mount, UTS and PID
namespaces (``unshare``), with overlayfs over ``/etc /var /srv /root /home /opt /usr`` so
that it has its own filesystem view, its own hostname, its own host key and root's
authorized key. It shares the machine's network and listens on a loopback address only.
Needs root, ``unshare`` (util-linux) and ``/usr/sbin/sshd`` (openssh-server).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

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
        root = self.workdir / name
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(mode=0o700)
        _keygen(root / "ssh_host_ed25519_key", name)
        shutil.copy(self.client_key.with_suffix(".pub"), root / "authorized_keys")
        init = root / "init.sh"
        init.write_text(INIT_SCRIPT)
        init.chmod(0o700)
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
