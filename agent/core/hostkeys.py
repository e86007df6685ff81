"""What OpenSSH says when it refuses a host key, read into one line with the fix (pure).

Petkeeper's SSH (Ansible's connections and Git's) runs with StrictHostKeyChecking=yes and
BatchMode=yes: a changed or unknown host key is refused, never trusted on first use.
"""

from __future__ import annotations

import re

# What OpenSSH prints when it refuses a host key (StrictHostKeyChecking=yes, BatchMode=yes).
KEY_SENT = re.compile(r"The fingerprint for the (\S+) key sent by the remote host is\s+"
                      r"(SHA256:[A-Za-z0-9+/]+)")
KEY_OFFENDING = re.compile(r"Offending \S+ key in (\S+):(\d+)")
KEY_CHANGED_FOR = re.compile(r"Host key for (\S+) has changed")
KEY_UNKNOWN = re.compile(r"No (\S+) host key is known for (\S+) and you have requested strict")
# ssh -o LogLevel=DEBUG1 names the key the server offered before it is checked.
KEY_OFFERED = re.compile(r"Server host key: (\S+) (SHA256:[A-Za-z0-9+/]+)")


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
        host = changed.group(1)
        kind, fp = sent.groups() if sent else ("new", "(fingerprint not shown)")
        where = f"{offending.group(1)}:{offending.group(2)}" if offending else "known_hosts"
        known = offending.group(1) if offending else "the known_hosts file"
        return (f"host key changed: {host} now sends {kind} key {fp}, not the one in {where}; "
                "refused, as it may be a man in the middle: verify that fingerprint on the host "
                f"(ssh-keygen -lf {_host_key_file(kind)}), then replace the old key "
                f"(ssh-keygen -R '{host}' -f {known}) with the verified one")
    if unknown := KEY_UNKNOWN.search(text):
        kind, host = unknown.groups()
        offered = KEY_OFFERED.search(text)
        sends = f" (it sends {offered.group(2)})" if offered else ""
        return (f"host key unknown: no {kind} key for {host} in known_hosts{sends}; refused, "
                "never trusted on first use: verify the key on the host (ssh-keygen -lf "
                f"{_host_key_file(kind)}), then add it to {add_to}")
    return None


def _host_key_file(kind: str) -> str:
    name = kind.lower().removeprefix("ssh-")
    return f"/etc/ssh/ssh_host_{name if name in ('ed25519', 'ecdsa', 'rsa') else '*'}_key.pub"
