"""The mirror's approval primitives against real repositories and real signed commits."""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.adapters.gitrepo import Mirror
from agent.errors import RepoError
from tests.conftest import GitRemote, git
from tests.signing import (
    ALICE,
    BOB,
    CAROL,
    Edit,
    GpgKeys,
    SshKeys,
    commit_as,
    fingerprint,
    flip_signature_char,
    run,
    tampered,
)

Fetch = Callable[..., tuple[Mirror, str]]


@pytest.fixture
def fetched(tmp_path: Path, remote: GitRemote) -> Iterator[Fetch]:
    """A function that fetches BRANCH of the remote into the test's mirror: (mirror, tip)."""
    mirror = Mirror(tmp_path / "mirror.git", remote.url, 30)

    def fetch(branch: str = "main") -> tuple[Mirror, str]:
        mirror.fetch(branch)
        tip = mirror.resolve(branch)
        assert tip is not None
        return mirror, tip
    yield fetch
    mirror.repo.close()  # GitPython keeps cat-file processes open


@contextmanager
def refs_kept(mirror: Mirror) -> Iterator[None]:
    """Assert that the block writes no ref in MIRROR (and moves no HEAD)."""
    def snapshot() -> tuple[str, bytes]:
        refs = git("--git-dir", str(mirror.path), "for-each-ref")
        return refs, (mirror.path / "HEAD").read_bytes()
    before = snapshot()
    assert before[0].strip()
    yield
    assert snapshot() == before


# -- files_under ---------------------------------------------------------------------------------

def test_files_under_returns_nested_files_exactly_and_skips_symlinks_and_submodules(
        remote: GitRemote, fetched: Fetch) -> None:
    binary = b"\x00\xffnot utf-8\r\nno final newline"
    commit_as(remote, ALICE, {"approvals/a.yml": "approve: 1\n",
                              "approvals/nested/deep/b.bin": binary,
                              "approvals/run.sh": "#!/bin/sh\n",
                              "approvals-old/c.yml": "old\n", "approvalsfile": "x\n",
                              "site.yml": "- hosts: all\n"})
    (remote.work / "approvals/run.sh").chmod(0o755)
    (remote.work / "approvals/passwd").symlink_to("/etc/passwd")
    (remote.work / "approvals/elsewhere").symlink_to("../approvals-old")
    work = ["git", "-C", str(remote.work)]
    run(*work, "add", "--all")
    run(*work, "update-index", "--add", "--cacheinfo",
        f"160000,{remote.rev('main')},approvals/submodule")  # `add --all` would drop it
    run(*work, "-c", "user.name=Alice", "-c", "user.email=alice@test.invalid", "commit",
        "--quiet", "-m", "Add links and a submodule")
    run(*work, "push", "--quiet", str(remote.bare), "HEAD:refs/heads/main")
    mirror, tip = fetched()
    modes = git("--git-dir", str(mirror.path), "ls-tree", "-r", tip, "--", "approvals/")
    assert {line.split()[0] for line in modes.splitlines()} == {"100644", "100755", "120000",
                                                                "160000"}
    expected = {"approvals/a.yml": b"approve: 1\n", "approvals/nested/deep/b.bin": binary,
                "approvals/run.sh": b"#!/bin/sh\n"}
    with refs_kept(mirror):
        assert mirror.files_under(tip, "approvals") == expected
        assert mirror.files_under(tip, "approvals/") == expected
        assert mirror.files_under(tip, "approvals/nested") == {
            "approvals/nested/deep/b.bin": binary}
        assert set(mirror.files_under(tip, "")) == {*expected, "approvals-old/c.yml",
                                                    "approvalsfile", "site.yml"}


def test_files_under_a_missing_folder_or_a_file_is_empty(remote: GitRemote, fetched: Fetch) -> None:
    commit_as(remote, ALICE, {"approvals/a.yml": "a\n", "site.yml": "s\n"})
    mirror, tip = fetched()
    with refs_kept(mirror):
        assert mirror.files_under(tip, "missing") == {}
        assert mirror.files_under(tip, "site.yml") == {}
        assert mirror.files_under(tip, "approv*") == {}


# -- history -------------------------------------------------------------------------------------

def test_last_commit_touching_and_its_author_are_the_change_not_head(
        remote: GitRemote, fetched: Fetch) -> None:
    added = commit_as(remote, ALICE, {"approvals/a.yml": "v1\n", "site.yml": "s\n"})
    other = commit_as(remote, BOB, {"approvals/b.yml": "b\n", "site.yml": "s2\n"})
    changed = commit_as(remote, CAROL, {"approvals/a.yml": "v2\n"})
    head = commit_as(remote, ALICE, {"site.yml": "s3\n"})
    mirror, tip = fetched()
    assert tip == head
    with refs_kept(mirror):
        assert mirror.last_commit_touching(tip, "approvals/a.yml") == changed
        assert mirror.last_commit_touching(tip, "approvals/b.yml") == other
        assert mirror.last_commit_touching(other, "approvals/a.yml") == added
        assert [mirror.commit_author(c) for c in (added, other, changed)] == [ALICE, BOB, CAROL]


def test_last_commit_touching_a_never_changed_path_is_an_error(
        remote: GitRemote, fetched: Fetch) -> None:
    commit_as(remote, ALICE, {"approvals/a.yml": "a\n"})
    mirror, tip = fetched()
    with refs_kept(mirror):
        for path in ("approvals/missing.yml", "approvals/*.yml"):  # no glob: paths are literal
            with pytest.raises(RepoError, match="no commit reachable"):
                mirror.last_commit_touching(tip, path)


def test_changed_paths_lists_edits_deletions_additions_and_both_sides_of_a_rename(
        remote: GitRemote, fetched: Fetch) -> None:
    old = commit_as(remote, ALICE, {"a.yml": "a\n", "b.yml": "b\n", "c.yml": "same\n" * 20,
                                    "kept.yml": "k\n"})
    new = commit_as(remote, BOB, {"a.yml": "a2\n", "b.yml": None, "c.yml": None,
                                  "dir/renamed.yml": "same\n" * 20, "e.yml": "e\n"})
    mirror, tip = fetched()
    with refs_kept(mirror):
        assert mirror.changed_paths(old, tip) == ["a.yml", "b.yml", "c.yml", "dir/renamed.yml",
                                                  "e.yml"]
        assert mirror.changed_paths(tip, tip) == []
    assert new == tip


# -- verify_commit: SSH --------------------------------------------------------------------------

def test_unsigned_commit_is_not_trusted(
        remote: GitRemote, fetched: Fetch, ssh_keys: SshKeys) -> None:
    commit_as(remote, ALICE, {"a.yml": "a\n"})
    mirror, tip = fetched()
    with refs_kept(mirror):
        assert mirror.verify_commit(tip, ssh_keys.allowed, None) == (False, "unsigned")
        assert mirror.verify_commit(tip, None, None) == (False, "unsigned")


def test_ssh_signature_by_an_allowed_key_is_trusted(
        remote: GitRemote, fetched: Fetch, ssh_keys: SshKeys) -> None:
    commit_as(remote, ALICE, {"a.yml": "a\n"}, *ssh_keys.signing(ssh_keys.alice))
    mirror, tip = fetched()
    with refs_kept(mirror):
        assert mirror.verify_commit(tip, ssh_keys.allowed, None) == (
            True, f"good signature by alice@test.invalid (key {fingerprint(ssh_keys.alice)})")


def test_ssh_signature_by_a_key_not_allowed_is_not_trusted(
        remote: GitRemote, fetched: Fetch, ssh_keys: SshKeys) -> None:
    commit_as(remote, ALICE, {"a.yml": "a\n"}, *ssh_keys.signing(ssh_keys.mallory))
    mirror, tip = fetched()
    with refs_kept(mirror):
        assert mirror.verify_commit(tip, ssh_keys.allowed, None) == (
            False, f"signed by a key not in {ssh_keys.allowed} "
                   f"(key {fingerprint(ssh_keys.mallory)})")


def test_ssh_signed_commit_without_allowed_signers_is_not_trusted(
        remote: GitRemote, fetched: Fetch, ssh_keys: SshKeys, tmp_path: Path) -> None:
    commit_as(remote, ALICE, {"a.yml": "a\n"}, *ssh_keys.signing(ssh_keys.alice))
    mirror, tip = fetched()
    missing = tmp_path / "missing_signers"
    with refs_kept(mirror):
        assert mirror.verify_commit(tip, None, tmp_path) == (
            False, "signed with ssh, but no allowed signers file is configured")
        assert mirror.verify_commit(tip, missing, None) == (
            False, f"signed with ssh, but {missing} does not exist")


def reword(lines: list[bytes]) -> None:
    """Change the message and keep the signature."""
    lines[lines.index(b"Change")] = b"Change, and also something else"


@pytest.mark.parametrize("edit", [flip_signature_char, reword])
def test_ssh_commit_altered_after_signing_has_a_bad_signature(
        remote: GitRemote, fetched: Fetch, ssh_keys: SshKeys, edit: Edit) -> None:
    signed = commit_as(remote, ALICE, {"a.yml": "a\n"}, *ssh_keys.signing(ssh_keys.alice))
    forged = tampered(remote, signed, edit)
    run("git", "-C", str(remote.work), "push", "--quiet", str(remote.bare),
        f"{forged}:refs/heads/forged")
    fetched("main")
    mirror, tip = fetched("forged")
    assert tip == forged != signed
    with refs_kept(mirror):
        assert mirror.verify_commit(tip, ssh_keys.allowed, None) == (False, "bad signature")
        assert mirror.verify_commit(signed, ssh_keys.allowed, None)[0] is True


def relabel_as_x509(lines: list[bytes]) -> None:
    """Make the signature's armor claim X.509 (gpgsm), a format Petkeeper does not trust."""
    for i, ln in enumerate(lines):
        lines[i] = ln.replace(b"SSH SIGNATURE", b"SIGNED MESSAGE")


def test_signature_in_another_format_is_not_trusted(
        remote: GitRemote, fetched: Fetch, ssh_keys: SshKeys, tmp_path: Path) -> None:
    signed = commit_as(remote, ALICE, {"a.yml": "a\n"}, *ssh_keys.signing(ssh_keys.alice))
    forged = tampered(remote, signed, relabel_as_x509)
    run("git", "-C", str(remote.work), "push", "--quiet", str(remote.bare),
        f"{forged}:refs/heads/forged")
    mirror, tip = fetched("forged")
    with refs_kept(mirror):
        assert mirror.verify_commit(tip, ssh_keys.allowed, tmp_path) == (
            False, "signed in an unsupported format (x509)")


def test_verification_ignores_root_git_config(
        remote: GitRemote, fetched: Fetch, ssh_keys: SshKeys, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    commit_as(remote, ALICE, {"a.yml": "a\n"}, *ssh_keys.signing(ssh_keys.mallory))
    # A global config that trusts mallory and swaps in a verifier that approves anything.
    liar = tmp_path / "liar"
    liar.write_text('#!/bin/sh\ncase "$*" in *find-principals*) echo alice@test.invalid;; *)\n'
                    'cat >/dev/null; echo \'Good "git" signature for alice@test.invalid with '
                    'ED25519 key SHA256:liar\';; esac\n')
    liar.chmod(liar.stat().st_mode | stat.S_IXUSR)
    trusting = tmp_path / "trusts_mallory"
    pub = Path(f"{ssh_keys.mallory}.pub").read_text().strip()
    trusting.write_text(f'alice@test.invalid namespaces="git" {pub}\n')
    hostile = tmp_path / "hostile.gitconfig"
    hostile.write_text(f"[gpg \"ssh\"]\n\tprogram = {liar}\n\tallowedSignersFile = {trusting}\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(hostile))
    mirror, tip = fetched()
    with refs_kept(mirror):
        assert mirror.verify_commit(tip, ssh_keys.allowed, None) == (
            False, f"signed by a key not in {ssh_keys.allowed} "
                   f"(key {fingerprint(ssh_keys.mallory)})")
        assert mirror.verify_commit(tip, None, None) == (
            False, "signed with ssh, but no allowed signers file is configured")


# -- verify_commit: OpenPGP ----------------------------------------------------------------------

def gpg_signed(remote: GitRemote, keys: GpgKeys) -> str:
    return commit_as(remote, ALICE, {"a.yml": "a\n"}, "-c", "gpg.format=openpgp",
                     "-c", f"user.signingkey={keys.fpr}", env={"GNUPGHOME": str(keys.signer)})


def test_openpgp_signature_by_a_key_in_the_keyring_is_trusted(
        remote: GitRemote, fetched: Fetch, gpg_keys: GpgKeys) -> None:
    gpg_signed(remote, gpg_keys)
    mirror, tip = fetched()
    with refs_kept(mirror):
        assert mirror.verify_commit(tip, None, gpg_keys.verifier) == (
            True, f"good signature by {ALICE} (key {gpg_keys.fpr})")


def test_openpgp_signature_by_a_key_not_in_the_keyring_is_not_trusted(
        remote: GitRemote, fetched: Fetch, gpg_keys: GpgKeys, ssh_keys: SshKeys,
        monkeypatch: pytest.MonkeyPatch) -> None:
    gpg_signed(remote, gpg_keys)
    # root's own keyring (here: the signer's, which trusts the key ultimately) is never used.
    monkeypatch.setenv("GNUPGHOME", str(gpg_keys.signer))
    mirror, tip = fetched()
    with refs_kept(mirror):
        assert mirror.verify_commit(tip, None, gpg_keys.empty) == (
            False, f"signed by a key not in {gpg_keys.empty} (key {gpg_keys.fpr[-16:]})")
        assert mirror.verify_commit(tip, ssh_keys.allowed, None) == (
            False, "signed with openpgp, but no OpenPGP keyring is configured")
