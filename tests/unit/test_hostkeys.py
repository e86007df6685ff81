"""core/hostkeys: known_hosts read and matched as ssh does, a server's key judged against it
with the same words as OpenSSH's refusals, and which SSH server a Git URL names."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import pytest

from agent.core.hostkeys import (
    CERTIFIED,
    CHANGED,
    KNOWN,
    REVOKED,
    UNKNOWN,
    fingerprint,
    judge_host_key,
    keys_for,
    known_hosts_name,
    parse_host_key_refusal,
    parse_known_hosts,
    parse_ssh_url,
    preferred_kinds,
)

KEY = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + b"\x01" * 36).decode()
OTHER = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + b"\x02" * 36).decode()
NAME = "[git.example.org]:2222"


def hashed(name: str) -> str:
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def test_known_hosts_lines_match_by_plain_hashed_and_wildcard_names_as_ssh_does():
    text = "\n".join([
        "# a comment",
        f"{NAME} ssh-ed25519 {KEY}",
        f"{hashed('web1.example.org')} ssh-ed25519 {OTHER}",
        f"*.example.org,!db.example.org ecdsa-sha2-nistp256 {OTHER}",
        "broken line",
        f"@revoked * ssh-ed25519 {OTHER}",
    ])
    entries = parse_known_hosts(text, "/etc/petkeeper/known_hosts")

    assert [(e.line, e.marker) for e in entries] == [(2, ""), (3, ""), (4, ""), (6, "@revoked")]
    assert [e.line for e in keys_for(NAME, entries)] == [2, 6]
    assert [e.line for e in keys_for("web1.example.org", entries)] == [3, 4, 6]
    assert [e.line for e in keys_for("db.example.org", entries)] == [6]  # !pattern excludes
    assert [e.line for e in keys_for("web2.example.org", entries)] == [4, 6]


def test_a_known_key_is_named_with_its_file_and_line():
    known = keys_for(NAME, parse_known_hosts(f"{NAME} ssh-ed25519 {KEY}\n", "/k"))

    verdict = judge_host_key(NAME, "ssh-ed25519", KEY, known, "repo.known_hosts")

    assert verdict.status == KNOWN
    assert verdict.line == f"ED25519 key {fingerprint(KEY)} is in /k:1"


def test_an_unknown_key_shows_its_fingerprint_with_the_words_of_openssh_s_refusal():
    verdict = judge_host_key(NAME, "ssh-ed25519", KEY, [], "repo.known_hosts (/k)")
    refusal = parse_host_key_refusal(
        f"No ED25519 host key is known for {NAME} and you have requested strict checking.\n"
        f"debug1: Server host key: ssh-ed25519 {fingerprint(KEY)}", "repo.known_hosts (/k)")

    assert verdict.status == UNKNOWN and verdict.line == refusal
    assert fingerprint(KEY) in verdict.line and "never trusted on first use" in verdict.line


def test_a_changed_key_shows_the_new_fingerprint_and_how_to_replace_the_old_one():
    known = keys_for(NAME, parse_known_hosts(f"\n{NAME} ssh-ed25519 {OTHER}\n", "/k"))

    verdict = judge_host_key(NAME, "ssh-ed25519", KEY, known, "repo.known_hosts")

    assert verdict.status == CHANGED
    assert verdict.line == parse_host_key_refusal(
        f"Host key for {NAME} has changed and you have requested strict checking.\n"
        f"The fingerprint for the ED25519 key sent by the remote host is\n{fingerprint(KEY)}.\n"
        "Offending ED25519 key in /k:2")
    assert f"ssh-keygen -R '{NAME}' -f /k" in verdict.line


def test_a_key_of_another_type_than_the_known_one_counts_as_changed_not_unknown():
    known = keys_for(NAME, parse_known_hosts(f"{NAME} ecdsa-sha2-nistp256 {OTHER}\n", "/k"))

    assert judge_host_key(NAME, "ssh-ed25519", KEY, known, "x").status == CHANGED


def test_a_revoked_key_is_refused_even_when_also_listed_as_known():
    known = keys_for(NAME, parse_known_hosts(
        f"{NAME} ssh-ed25519 {KEY}\n@revoked {NAME} ssh-ed25519 {KEY}\n", "/k"))

    verdict = judge_host_key(NAME, "ssh-ed25519", KEY, known, "x")

    assert verdict.status == REVOKED and "/k:2" in verdict.line


def test_a_host_vouched_for_by_a_certificate_authority_is_left_to_ssh():
    known = keys_for(NAME, parse_known_hosts(f"@cert-authority * ssh-ed25519 {OTHER}\n", "/k"))

    assert judge_host_key(NAME, "ssh-ed25519", KEY, known, "x").status == CERTIFIED


def test_an_rsa_key_sent_with_a_sha2_signature_matches_its_ssh_rsa_line():
    known = keys_for(NAME, parse_known_hosts(f"{NAME} ssh-rsa {KEY}\n", "/k"))

    assert judge_host_key(NAME, "rsa-sha2-512", KEY, known, "x").status == KNOWN
    assert preferred_kinds(known) == ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]


@pytest.mark.parametrize(("url", "server"), [
    ("ssh://git@git.example.org/ops/pets.git", ("git", "git.example.org", 22)),
    ("ssh://git.example.org:2222/pets.git", (None, "git.example.org", 2222)),
    ("git+ssh://root@[::1]:22/srv/git/pets.git", ("root", "::1", 22)),
    ("git@github.com:ops/pets.git", ("git", "github.com", 22)),
    ("github.com:ops/pets.git", (None, "github.com", 22)),
    ("file:///srv/git/pets.git", None),
    ("https://git.example.org/pets.git", None),
    ("/srv/git/pets.git", None),
    ("ssh://git@host:notaport/x.git", None),
])
def test_the_ssh_server_of_a_git_url(url: str, server: tuple[str | None, str, int] | None):
    assert parse_ssh_url(url) == server


def test_known_hosts_names_a_server_off_port_22_in_brackets():
    assert known_hosts_name("git.example.org", 22) == "git.example.org"
    assert known_hosts_name("127.0.0.1", 2222) == "[127.0.0.1]:2222"
