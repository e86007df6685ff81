"""SSH through paramiko, and only here: the host key a server sends and a login, checked in
process; and ssh-keygen for deploy keys.

OpenSSH, told never to ask, refuses an unknown or changed host key without saying which key the
server sent. paramiko lets `petkeeper doctor` and `petkeeper init` see that key and judge it
(agent.core.hostkeys) against the same known_hosts files ssh reads, so a person can verify its
fingerprint on the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

from agent.core.hostkeys import (
    KNOWN,
    KnownKey,
    Verdict,
    judge_host_key,
    keys_for,
    known_hosts_name,
    parse_known_hosts,
    preferred_kinds,
)
from agent.errors import AgentError

log = logging.getLogger(__name__)
# paramiko logs each failed handshake itself; the callers report it once, as one line.
PARAMIKO_LOG = f"{__name__}.paramiko"
logging.getLogger(PARAMIKO_LOG).setLevel(logging.CRITICAL)

GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
DEFAULT_IDENTITIES = ("id_rsa", "id_ecdsa", "id_ed25519")
KEYGEN_TIMEOUT = 60.0


class SshError(AgentError):
    """A server could not be reached, or did not speak SSH."""


@dataclass(frozen=True)
class Endpoint:
    """An SSH server as ssh would reach it, after ~/.ssh/config."""

    host: str  # what to connect to
    port: int
    user: str
    name: str  # its name in known_hosts: [host]:port, or HostKeyAlias
    proxied: bool = False  # ~/.ssh/config reaches it through ProxyJump or ProxyCommand


@dataclass(frozen=True)
class ServerCheck:
    """What a server sent and what became of it: its key, the verdict of known_hosts, and
    whether the login worked (None: not tried)."""

    kind: str
    key: str
    verdict: Verdict
    login_error: str | None = None
    logged_in: bool = False


def home() -> Path:
    """The home of the user running Petkeeper, as ssh finds it (the password database)."""
    return Path(pwd.getpwuid(os.geteuid()).pw_dir)


def resolve_endpoint(host: str, port: int | None, user: str | None) -> Endpoint:
    """HOST, PORT and USER as ssh reads them, ~/.ssh/config's Host blocks included."""
    config: dict[str, object] = {}
    path = home() / ".ssh" / "config"
    if path.is_file():
        with contextlib.suppress(OSError, paramiko.ConfigParseError):
            config = dict(paramiko.SSHConfig.from_path(str(path)).lookup(host))
    real = str(config.get("hostname") or host)
    real_port = port or int(str(config.get("port") or 22))
    login = user or str(config.get("user") or "") or pwd.getpwuid(os.geteuid()).pw_name
    alias = config.get("hostkeyalias")
    name = str(alias) if alias else known_hosts_name(real, real_port)
    proxied = bool(config.get("proxyjump") or config.get("proxycommand"))
    return Endpoint(real, real_port, login, name, proxied)


def known_hosts_files(configured: str | None) -> list[Path]:
    """The files ssh reads: CONFIGURED (UserKnownHostsFile) or ~/.ssh/known_hosts{,2}, then
    the system-wide ones, which an -o UserKnownHostsFile does not replace."""
    user = [Path(configured)] if configured else [home() / ".ssh" / "known_hosts",
                                                  home() / ".ssh" / "known_hosts2"]
    return user + [Path(p) for p in GLOBAL_KNOWN_HOSTS]


def read_known_keys(files: Sequence[Path], name: str) -> list[KnownKey]:
    """The known_hosts entries of FILES that speak for NAME (missing files hold none)."""
    found: list[KnownKey] = []
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        except OSError as e:
            raise SshError(f"{path}: cannot read: {e.strerror}; check its permissions") from e
        found += keys_for(name, parse_known_hosts(text, str(path)))
    return found


def check_server(endpoint: Endpoint, known: Sequence[KnownKey], add_to: str, timeout: float,
                 identities: Sequence[str] | None = None) -> ServerCheck:
    """Connect to ENDPOINT, take the host key it sends (asking first for the types KNOWN
    holds, as ssh does) and judge it against KNOWN; with IDENTITIES (private key files; an
    empty list means ssh's defaults and the agent), log in when the key is known. SshError
    when the server cannot be reached or does not speak SSH."""
    transport = _handshake(endpoint, preferred_kinds(known), timeout)
    try:
        server = transport.get_remote_server_key()
        kind, key = server.get_name(), server.get_base64()
        verdict = judge_host_key(endpoint.name, kind, key, known, add_to)
        if verdict.status != KNOWN or identities is None:
            return ServerCheck(kind, key, verdict)
        error = _login(transport, endpoint.user, identities, timeout)
        return ServerCheck(kind, key, verdict, error, logged_in=error is None)
    finally:
        transport.close()


def scan_host_key(endpoint: Endpoint, timeout: float) -> tuple[str, str]:
    """(type, base64) of the host key ENDPOINT sends, for a person to verify (init)."""
    transport = _handshake(endpoint, ["ssh-ed25519"], timeout)
    try:
        server = transport.get_remote_server_key()
        return server.get_name(), server.get_base64()
    finally:
        transport.close()


def generate_key(path: Path, comment: str) -> str:
    """Write a new ed25519 key pair without a passphrase to PATH (0600) and PATH.pub; return
    the public half."""
    try:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                        "-f", str(path)], check=True, capture_output=True, text=True,
                       timeout=KEYGEN_TIMEOUT, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise AgentError("ssh-keygen not found; install openssh-client") from None
    except subprocess.CalledProcessError as e:
        raise AgentError(f"{path}: ssh-keygen failed: {e.stderr.strip()}") from None
    except subprocess.TimeoutExpired:
        raise AgentError(f"{path}: ssh-keygen did not finish within {KEYGEN_TIMEOUT:g}s") \
            from None
    os.chmod(path, 0o600)
    return path.with_name(f"{path.name}.pub").read_text().strip()


def _handshake(endpoint: Endpoint, prefer: Sequence[str], timeout: float) -> paramiko.Transport:
    where = f"{endpoint.host}:{endpoint.port}"
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    except TimeoutError:
        raise SshError(f"{where}: no answer within {timeout:g}s") from None
    except OSError as e:
        raise SshError(f"{where}: {e.strerror or e}") from None
    transport = paramiko.Transport(sock)
    transport.set_log_channel(PARAMIKO_LOG)
    options = transport.get_security_options()
    offered = list(options.key_types)
    options.key_types = [k for k in prefer if k in offered] + \
        [k for k in offered if k not in prefer]
    try:
        transport.start_client(timeout=timeout)
    except (paramiko.SSHException, OSError, EOFError) as e:
        transport.close()
        raise SshError(f"{where}: no SSH handshake ({str(e) or type(e).__name__})") from None
    return transport


def _login(transport: paramiko.Transport, user: str, identities: Sequence[str],
           timeout: float) -> str | None:
    """Log in as USER with IDENTITIES (or ssh's default files) and the agent's keys, as ssh
    would; None when a key was accepted, else why not."""
    transport.auth_timeout = timeout
    keys, problems = _load_keys(identities)
    with contextlib.suppress(paramiko.SSHException, OSError):
        keys += list(paramiko.Agent().get_keys()) if os.environ.get("SSH_AUTH_SOCK") else []
    for key in keys:
        try:
            transport.auth_publickey(user, key)
        except paramiko.AuthenticationException:
            continue
        except (paramiko.SSHException, OSError, EOFError) as e:
            return f"the login as {user} broke off ({e})"
        if transport.is_authenticated():
            return None
    tried = ", ".join(identities) if identities else "ssh's default keys"
    return "; ".join([*problems, f"no key was accepted for {user} (tried {tried})"])


def _load_keys(identities: Sequence[str]) -> tuple[list[paramiko.PKey], list[str]]:
    paths = [Path(p) for p in identities] or \
        [home() / ".ssh" / name for name in DEFAULT_IDENTITIES]
    keys, problems = [], []
    for path in paths:
        if not path.exists():
            if identities:
                problems.append(f"{path}: no such key file")
            continue
        try:
            keys.append(paramiko.PKey.from_path(path))
        except paramiko.PasswordRequiredException:
            problems.append(f"{path}: has a passphrase; Ansible needs ssh-agent for it")
        except (paramiko.SSHException, OSError, ValueError) as e:
            problems.append(f"{path}: not a usable private key ({e})")
    return keys, problems
