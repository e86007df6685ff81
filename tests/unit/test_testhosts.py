"""agent.testhosts' pure part: what a test host's key looks like to ssh."""

from __future__ import annotations

from pathlib import Path

from agent.testhosts import TestHost

# A key made with `ssh-keygen -t ed25519`; `ssh-keygen -lf` printed this fingerprint for it.
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHJopLigaLe/qjh1i2ahInLFH2BhGp36x6cf+MluCciJ"
FINGERPRINT = "SHA256:VGk9WiELm+KpX+9q0mc7rHjvOHTHyw0jD23I7VAGO9o"


def test_host_fingerprint_is_what_ssh_keygen_and_ssh_print():
    host = TestHost("web2", "127.0.85.12", 2222, 1, Path("/tmp/web2"), PUBLIC_KEY)

    assert host.fingerprint == FINGERPRINT
    assert host.known_hosts_line == f"[127.0.85.12]:2222 {PUBLIC_KEY}"
