"""Signed commits for the tests: SSH and OpenPGP keys, commits as someone, forged ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import GitRemote

Edit = Callable[[list[bytes]], None]

ALICE = "Alice <alice@test.invalid>"
BOB = "Bob <bob@test.invalid>"
CAROL = "Carol <carol@test.invalid>"
# The helpers' own git runs ignore root's config, so that e.g. commit.gpgsign cannot leak in,
# and commit as someone other than the author.
CLEAN_ENV = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
             "GIT_COMMITTER_NAME": "Committer", "GIT_COMMITTER_EMAIL": "committer@test.invalid"}


def run(*args: str, env: dict[str, str] | None = None, data: bytes | None = None) -> bytes:
    """Run ARGS with root's Git config ignored; return stdout."""
    r = subprocess.run(list(args), capture_output=True, timeout=60, input=data,
                       env={**os.environ, **CLEAN_ENV, **(env or {})})
    assert r.returncode == 0, f"{args}: {r.stderr.decode(errors='replace')}"
    return r.stdout


def commit_as(remote: GitRemote, author: str, files: dict[str, str | bytes | None],
              *signing: str, env: dict[str, str] | None = None) -> str:
    """Write FILES (None deletes) in REMOTE's clone, commit as AUTHOR ("Name <email>"), signed
    when SIGNING (git -c options) is given, push main; return the sha."""
    remote.write(files)
    name, _, email = author.partition(" <")
    work = ["git", "-C", str(remote.work)]
    run(*work, "add", "--all")
    run(*work, "-c", f"user.name={name}", "-c", f"user.email={email.rstrip('>')}", *signing,
        "commit", "--quiet", "--allow-empty", *(["-S"] if signing else []), "-m", "Change",
        env=env)
    run(*work, "push", "--quiet", str(remote.bare), "HEAD:refs/heads/main")
    return remote.rev("main")


@dataclass(frozen=True)
class SshKeys:
    alice: Path
    mallory: Path
    allowed: Path  # lists alice only

    def signing(self, key: Path) -> tuple[str, ...]:
        return "-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"


def fingerprint(key: Path) -> str:
    return run("ssh-keygen", "-l", "-f", f"{key}.pub").decode().split()[1]


@pytest.fixture
def ssh_keys(tmp_path: Path) -> SshKeys:
    keys = SshKeys(tmp_path / "alice", tmp_path / "mallory", tmp_path / "allowed_signers")
    for key in (keys.alice, keys.mallory):
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", str(key))
    pub = Path(f"{keys.alice}.pub").read_text().strip()
    keys.allowed.write_text(f'alice@test.invalid namespaces="git" {pub}\n')
    return keys


def tampered(remote: GitRemote, sha: str, edit: Edit) -> str:
    """Write a copy of commit SHA changed by EDIT(lines) into the remote's clone; return it."""
    work = ["git", "-C", str(remote.work)]
    lines = run(*work, "cat-file", "commit", sha).split(b"\n")
    edit(lines)
    return run(*work, "hash-object", "-t", "commit", "-w", "--stdin",
               data=b"\n".join(lines)).decode().strip()


def flip_signature_char(lines: list[bytes]) -> None:
    """Change one base64 character inside the signature's armor (not the armor lines)."""
    body = [i for i, ln in enumerate(lines) if ln.startswith(b" ") and b"-----" not in ln]
    i = body[2]
    lines[i] = lines[i][:10] + (b"A" if lines[i][10:11] != b"A" else b"B") + lines[i][11:]


@dataclass(frozen=True)
class GpgKeys:
    signer: Path  # holds the secret key
    verifier: Path  # holds only the public key
    empty: Path
    fpr: str


@pytest.fixture
def gpg_keys() -> Iterator[GpgKeys]:
    """An ed25519 OpenPGP key, in three throwaway GNUPGHOMEs (short paths: agent sockets)."""
    if shutil.which("gpg") is None or shutil.which("gpgconf") is None:
        pytest.fail("the OpenPGP tests need gpg: apt-get install gnupg")
    homes = [Path(tempfile.mkdtemp(prefix="pk-gpg-")) for _ in range(3)]
    try:
        signer, verifier, empty = homes
        run("gpg", "--batch", "--passphrase", "", "--quick-gen-key", ALICE, "ed25519", "sign",
            "never", env={"GNUPGHOME": str(signer)})
        listing = run("gpg", "--batch", "--with-colons", "--list-secret-keys",
                      env={"GNUPGHOME": str(signer)}).decode()
        fpr = next(ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("fpr:"))
        public = run("gpg", "--batch", "--export", fpr, env={"GNUPGHOME": str(signer)})
        run("gpg", "--batch", "--import", env={"GNUPGHOME": str(verifier)}, data=public)
        yield GpgKeys(signer, verifier, empty, fpr)
    finally:
        for home in homes:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"],
                           capture_output=True, timeout=30)
            shutil.rmtree(home, ignore_errors=True)
