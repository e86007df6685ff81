"""SSH host keys, pure: OpenSSH's refusals read into one line with the fix, known_hosts files
read and matched as ssh matches them, a server's key judged against them, and which SSH server
a Git URL names.

Petkeeper's SSH (Ansible's connections and Git's) runs with StrictHostKeyChecking=yes and
BatchMode=yes: a changed or unknown host key is refused, never trusted on first use.
`petkeeper doctor` sees the key a server sends (agent.adapters.ssh) and judges it here, with
the same words.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

# What OpenSSH prints when it refuses a host key (StrictHostKeyChecking=yes, BatchMode=yes).
KEY_SENT = re.compile(r"The fingerprint for the (\S+) key sent by the remote host is\s+"
                      r"(SHA256:[A-Za-z0-9+/]+)")
KEY_OFFENDING = re.compile(r"Offending \S+ key in (\S+):(\d+)")
KEY_CHANGED_FOR = re.compile(r"Host key for (\S+) has changed")
KEY_UNKNOWN = re.compile(r"No (\S+) host key is known for (\S+) and you have requested strict")
# ssh -o LogLevel=DEBUG1 names the key the server offered before it is checked.
KEY_OFFERED = re.compile(r"Server host key: (\S+) (SHA256:[A-Za-z0-9+/]+)")
# Mitogen's strategy (agent.adapters.accelerator) keeps ssh's words and says only this.
MITOGEN_REFUSED = "SSH reported an unrecognized or mismatching host key"
MITOGEN_KEY_LINE = ("host key unknown or changed (Mitogen's strategy does not say which key the "
                    "host sent); refused, never trusted on first use: petkeeper doctor shows the "
                    "key the host sends and how to fix it")
SCP_LIKE = re.compile(r"^(?:(?P<user>[^@/\s]+)@)?(?P<host>\[[^\]]+\]|[^:/\s]+):(?!//)")
KNOWN, UNKNOWN, CHANGED, REVOKED, CERTIFIED = "known", "unknown", "changed", "revoked", "ca"


@dataclass(frozen=True)
class KnownKey:
    """One line of a known_hosts file."""

    patterns: tuple[str, ...]  # host names, patterns, or one hashed name (|1|salt|hash)
    kind: str  # ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa...
    key: str  # base64
    file: str
    line: int
    marker: str = ""  # "", "@revoked" or "@cert-authority"


@dataclass(frozen=True)
class Verdict:
    """What a server's key is to the known_hosts files: known, unknown, changed, revoked, or
    vouched for by a certificate authority (not checked here), and the line to show."""

    status: str
    line: str


def parse_host_key_refusal(text: str,
                           add_to: str = "the known_hosts file (ansible.known_hosts_file)"
                           ) -> str | None:
    """Given ssh's words (an unreachable result's message, git's stderr), return one line
    saying which host key ssh refused and how to fix it, or None when ssh failed for another
    reason. ADD_TO names where a verified key goes.

    Ansible and git pass ssh's refusal on as text only, so this reads it. A changed or unknown
    key is never accepted: a person must verify it."""
    if changed := KEY_CHANGED_FOR.search(text):
        sent, offending = KEY_SENT.search(text), KEY_OFFENDING.search(text)
        kind, fp = sent.groups() if sent else ("new", "(fingerprint not shown)")
        where = f"{offending.group(1)}:{offending.group(2)}" if offending else "known_hosts"
        known = offending.group(1) if offending else "the known_hosts file"
        return changed_key_line(changed.group(1), kind, fp, where, known)
    if unknown := KEY_UNKNOWN.search(text):
        kind, host = unknown.groups()
        offered = KEY_OFFERED.search(text)
        return unknown_key_line(host, kind, offered.group(2) if offered else None, add_to)
    if MITOGEN_REFUSED in text:
        return MITOGEN_KEY_LINE
    return None


def changed_key_line(host: str, kind: str, fingerprint: str, where: str, known_file: str) -> str:
    """The line for a host whose key is not the one known_hosts holds (WHERE: file:line)."""
    return (f"host key changed: {host} now sends {kind} key {fingerprint}, not the one in "
            f"{where}; refused, as it may be a man in the middle: verify that fingerprint on "
            f"the host (ssh-keygen -lf {_host_key_file(kind)}), then replace the old key "
            f"(ssh-keygen -R '{host}' -f {known_file}) with the verified one")


def unknown_key_line(host: str, kind: str, fingerprint: str | None, add_to: str) -> str:
    """The line for a host none of whose keys known_hosts holds."""
    sends = f" (it sends {fingerprint})" if fingerprint else ""
    return (f"host key unknown: no {kind} key for {host} in known_hosts{sends}; refused, "
            "never trusted on first use: verify the key on the host (ssh-keygen -lf "
            f"{_host_key_file(kind)}), then add it to {add_to}")


def known_hosts_name(host: str, port: int) -> str:
    """How ssh names HOST:PORT in known_hosts: the bare host on port 22, else [host]:port."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: str) -> str:
    """The SHA256 fingerprint of a base64 public KEY, as ssh prints it."""
    digest = hashlib.sha256(base64.b64decode(key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def display_kind(kind: str) -> str:
    """OpenSSH's name for a key type in its messages: ED25519, ECDSA, RSA."""
    if kind.startswith("ecdsa-"):
        return "ECDSA"
    if kind in ("ssh-rsa", "rsa-sha2-256", "rsa-sha2-512"):
        return "RSA"
    return kind.removeprefix("ssh-").upper()


def parse_known_hosts(text: str, file: str) -> list[KnownKey]:
    """The entries of a known_hosts file's TEXT; comments and lines ssh would skip are left out."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = fields.pop(0) if fields[0].startswith("@") else ""
        if len(fields) < 3 or not _is_base64(fields[2]):
            continue
        entries.append(KnownKey(tuple(fields[0].split(",")), fields[1], fields[2], file, number,
                                marker))
    return entries


def keys_for(name: str, entries: Iterable[KnownKey]) -> list[KnownKey]:
    """The entries that speak for NAME ([host]:port or host), as ssh matches them: plain and
    hashed names, * and ? patterns, a !pattern that excludes."""
    return [e for e in entries if _matches(name, e.patterns)]


def preferred_kinds(known: Sequence[KnownKey]) -> list[str]:
    """Key types to ask the server for first: those known_hosts holds, as ssh prefers them."""
    kinds = []
    for entry in known:
        if entry.marker:
            continue
        kinds += ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if entry.kind == "ssh-rsa" \
            else [entry.kind]
    return list(dict.fromkeys(kinds))


def judge_host_key(name: str, kind: str, key: str, known: Sequence[KnownKey],
                   add_to: str) -> Verdict:
    """Judge the KIND KEY that the server NAME sent against the known_hosts entries KNOWN
    (keys_for NAME). ADD_TO says where a verified key goes, for an unknown one."""
    shown, fp = display_kind(kind), fingerprint(key)
    base_kind = "ssh-rsa" if kind.startswith("rsa-sha2-") else kind
    if any(e.marker == "@revoked" and e.key == key for e in known):
        revoked = next(e for e in known if e.marker == "@revoked" and e.key == key)
        return Verdict(REVOKED, f"host key revoked: {name} sends {shown} key {fp}, marked "
                                f"@revoked in {revoked.file}:{revoked.line}; refused: find out "
                                "why it was revoked, and give the host a new key")
    plain = [e for e in known if not e.marker]
    if any(e.key == key and e.kind == base_kind for e in plain):
        match = next(e for e in plain if e.key == key)
        return Verdict(KNOWN, f"{shown} key {fp} is in {match.file}:{match.line}")
    if plain:
        old = next((e for e in plain if e.kind == base_kind), plain[0])
        return Verdict(CHANGED, changed_key_line(name, shown, fp, f"{old.file}:{old.line}",
                                                 old.file))
    if any(e.marker == "@cert-authority" for e in known):
        return Verdict(CERTIFIED, f"{name} sends {shown} key {fp}; known_hosts trusts a "
                                  "certificate authority for it, which this check cannot "
                                  "verify: ssh itself will")
    return Verdict(UNKNOWN, unknown_key_line(name, shown, fp, add_to))


def parse_ssh_url(url: str) -> tuple[str | None, str, int] | None:
    """(user, host, port) of the SSH server a Git URL names (ssh://, git+ssh://, or scp-like
    user@host:path), or None for another transport (file://, https://, a path)."""
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme not in ("ssh", "git+ssh", "ssh+git") or not parts.hostname:
            return None
        try:
            port = parts.port or 22
        except ValueError:
            return None
        return parts.username, parts.hostname, port
    m = SCP_LIKE.match(url)
    if not m:
        return None
    return m.group("user"), m.group("host").strip("[]"), 22


def _matches(name: str, patterns: Sequence[str]) -> bool:
    if len(patterns) == 1 and patterns[0].startswith("|1|"):
        return _hashed_matches(name, patterns[0])
    hit = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if _glob(pattern.removeprefix("!")).fullmatch(name.lower()):
            if negated:
                return False
            hit = True
    return hit


def _glob(pattern: str) -> re.Pattern[str]:
    """ssh's host patterns know * and ? only: [host]:port is a name, not a character class."""
    return re.compile(re.escape(pattern.lower()).replace(r"\*", ".*").replace(r"\?", "."))


def _hashed_matches(name: str, hashed: str) -> bool:
    """|1|salt|hash: HMAC-SHA1 of the name under the salt, as ssh's HashKnownHosts writes."""
    try:
        _, _, salt, digest = hashed.split("|", 3)
        mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(mac, base64.b64decode(digest))
    except (ValueError, binascii.Error):
        return False


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return False
    return True


def _host_key_file(kind: str) -> str:
    name = kind.lower().removeprefix("ssh-")
    return f"/etc/ssh/ssh_host_{name if name in ('ed25519', 'ecdsa', 'rsa') else '*'}_key.pub"
