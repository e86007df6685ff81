"""Source trust end to end: signatures checked before a commit is materialised, and no
rollback of what was applied without a person's acknowledgement."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.adapters.state import StateDir
from agent.config import load_config
from agent.cycle.source import Source, open_mirror, sync_source
from agent.cycle.trust import mark_applied
from tests.conftest import (
    GitRemote,
    git,
    pet_hosts,
    pets_repo_files,
    settle,
    write_agent_config,
)
from tests.signing import ALICE, GpgKeys, SshKeys, commit_as, flip_signature_char, run, tampered

pytestmark = pytest.mark.hosts

MOTD = "cat /etc/motd"


def cli(config: Path, *args: str) -> tuple[int, dict, str]:
    """Run a petkeeper cycle command with --json: (exit code, report, stderr)."""
    r = subprocess.run([sys.executable, "-m", "agent", "--config", str(config), *args, "--json"],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {}), r.stderr


def petkeeper(config: Path, *args: str, user: str = "alice") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**os.environ, "SUDO_USER": user})


def tree_digest(folder: Path) -> str:
    """One hash over every path, mode and byte under FOLDER."""
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        h.update(f"{path.relative_to(folder)}:{path.lstat().st_mode}\n".encode())
        if path.is_file() and not path.is_symlink():
            h.update(path.read_bytes())
    return h.hexdigest()


def state_snapshot(state: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in state.glob("*.json")}


def trees(state: Path) -> set[str]:
    folder = state / "trees"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@pytest.fixture
def signed_pets(host_pool, remote: GitRemote, ssh_keys: SshKeys, tmp_path: Path):
    """alpha's repo with one commit signed by alice, and an agent.yml that verifies heads."""
    files = pets_repo_files(pet_hosts(host_pool, "alpha"))
    first = commit_as(remote, ALICE, files, *ssh_keys.signing(ssh_keys.alice))
    config = write_agent_config(
        tmp_path / "agent.yml", remote.url, tmp_path / "state", host_pool, limit="alpha",
        repo={"url": remote.url, "branch": "main", "timeout": "30s", "verify": "head",
              "allowed_signers": str(ssh_keys.allowed)})
    return config, first


def test_unsigned_head_on_the_first_run_is_refused_before_any_file_is_written(
        host_pool, remote, ssh_keys, tmp_path):
    remote.commit(pets_repo_files(pet_hosts(host_pool, "alpha")))
    config = write_agent_config(
        tmp_path / "agent.yml", remote.url, tmp_path / "state", host_pool, limit="alpha",
        repo={"url": remote.url, "branch": "main", "verify": "all",
              "allowed_signers": str(ssh_keys.allowed)})
    refs = remote.refs()

    code, report, stderr = cli(config, "check")

    head = remote.rev("main")
    assert code == 1 and report["hosts"] == {}  # --json: the error as JSON too
    assert f"petkeeper: error: {report['error']}" == stderr.strip().splitlines()[0]
    assert stderr.strip().splitlines() == [
        f"petkeeper: error: source commit {head[:12]} (head) is not trusted: unsigned; sign it "
        "with a key in repo.allowed_signers or repo.gpg_home, or push a signed fix"]
    assert trees(tmp_path / "state") == set()
    assert not (tmp_path / "state" / "status.json").exists()
    assert remote.refs() == refs  # no report written


def forge_unsigned(remote, keys):
    return remote.commit({"roles/motd/defaults/main.yml": 'motd_text: "unsigned\\n"\n'})


def forge_not_allowed(remote, keys):
    return commit_as(remote, ALICE, {"roles/motd/defaults/main.yml": 'motd_text: "m\\n"\n'},
                     *keys.signing(keys.mallory))


def forge_corrupted(remote, keys):
    signed = commit_as(remote, ALICE, {"roles/motd/defaults/main.yml": 'motd_text: "c\\n"\n'},
                       *keys.signing(keys.alice))
    forged = tampered(remote, signed, flip_signature_char)
    git("-C", str(remote.work), "push", "--quiet", "--force", str(remote.bare),
        f"{forged}:refs/heads/main")
    git("-C", str(remote.work), "reset", "--quiet", "--hard", forged)
    return forged


def forge_signed_tag_on_unsigned_commit(remote, keys):
    sha = forge_unsigned(remote, keys)
    run("git", "-C", str(remote.work), *keys.signing(keys.alice), "tag", "-s", "-m", "release",
        "v1", sha)
    run("git", "-C", str(remote.work), "push", "--quiet", str(remote.bare), "v1")
    return sha


FORGERIES = {
    "unsigned": (forge_unsigned, "unsigned"),
    "key not allowed": (forge_not_allowed, "signed by a key not in"),
    "corrupted signature": (forge_corrupted, "bad signature"),
    "signed tag on an unsigned commit": (forge_signed_tag_on_unsigned_commit, "unsigned"),
}


def test_untrusted_heads_keep_the_last_verified_tree_and_each_host_says_why(
        signed_pets, remote, ssh_keys):
    config, good = signed_pets
    state = Path(yaml.safe_load(config.read_text())["state_dir"])
    code, report, _ = cli(config, "check")
    assert report["source_sha"] == good and report["source_rejected"] is None, report
    good_tree = tree_digest(state / "trees" / good)

    reports_before = remote.log()
    *quick, last = FORGERIES.items()
    for case, (forge, why) in quick:  # the trust step alone, in-process: no Ansible
        bad = forge(remote, ssh_keys)
        source = fetch_source_step(config)
        assert source.sha == good and source.tree.name == good, case
        assert source.rejected.startswith(
            f"source commit {bad[:12]} (head) is not trusted: {why}"), (case, source.rejected)
        assert bad not in trees(state) and tree_digest(state / "trees" / good) == good_tree

    case, (forge, why) = last  # and through a whole cycle: the host says why
    bad = forge(remote, ssh_keys)

    code, report, stderr = cli(config, "check")

    assert code == 1, case
    assert report["source_sha"] == good, case
    rejected = report["source_rejected"]
    assert rejected.startswith(f"source commit {bad[:12]} (head) is not trusted: {why}"), \
        (case, rejected)
    assert f"security: {rejected}" in stderr
    assert bad not in trees(state) and tree_digest(state / "trees" / good) == good_tree
    status = json.loads((state / "status.json").read_text())
    assert status["hosts"]["alpha"]["source_rejected"] == rejected
    assert status["hosts"]["alpha"]["source_sha"] == good
    shown = petkeeper(config, "status").stdout
    assert f"source head rejected: {rejected}" in shown
    # Reports name only the commit that was really checked; none is lost.
    sources = remote.log(fmt="%(trailers:key=Petkeeper-Source,valueonly)")
    assert bad not in "".join(sources) and good in "".join(sources)
    assert remote.log()[-len(reports_before):] == reports_before


def fetch_source_step(config: Path) -> Source:
    """What a cycle's fetch makes of the branch head (fetch, verify, materialise), in-process."""
    loaded = load_config(config)
    state = StateDir(loaded.state_dir)
    mirror = open_mirror(loaded, state)
    try:
        return sync_source(loaded, state, mirror)
    finally:
        mirror.close()


def merged_history(remote: GitRemote, keys: SshKeys, files: dict[str, str]) -> str:
    """main: signed base, then a signed merge of a branch holding one unsigned commit."""
    sign = keys.signing(keys.alice)
    commit_as(remote, ALICE, files, *sign)
    work = ["git", "-C", str(remote.work)]
    run(*work, "checkout", "--quiet", "-b", "side")
    remote.commit({"side.txt": "from a branch nobody signed\n"}, branch="side")
    run(*work, "checkout", "--quiet", "main")
    run(*work, "-c", "user.name=Alice", "-c", "user.email=alice@test.invalid", *sign, "merge",
        "--quiet", "--no-ff", "-S", "-m", "Merge side", "side")
    run(*work, "push", "--quiet", str(remote.bare), "HEAD:refs/heads/main")
    return remote.rev("main")


def test_all_refuses_an_unsigned_commit_merged_below_a_signed_head_and_head_does_not(
        host_pool, remote, ssh_keys, tmp_path):
    head = merged_history(remote, ssh_keys, pets_repo_files(pet_hosts(host_pool, "alpha")))
    unsigned = remote.rev("side")
    repo = {"url": remote.url, "branch": "main", "verify": "all",
            "allowed_signers": str(ssh_keys.allowed)}
    strict = write_agent_config(tmp_path / "all.yml", remote.url, tmp_path / "state-all",
                                host_pool, limit="alpha", repo=repo)

    code, _, stderr = cli(strict, "check")

    assert code == 1
    assert f"error: source commit {unsigned[:12]} ('Change pets', below the head {head[:12]}) " \
           "is not trusted: unsigned" in stderr
    assert trees(tmp_path / "state-all") == set()

    lenient = write_agent_config(tmp_path / "head.yml", remote.url, tmp_path / "state-head",
                                 host_pool, limit="alpha", repo={**repo, "verify": "head"})
    code, report, stderr = cli(lenient, "check")
    assert report["source_sha"] == head and report["source_rejected"] is None, stderr
    assert trees(tmp_path / "state-head") == {head}


def test_openpgp_signed_history_is_trusted_from_verify_since_with_a_dedicated_keyring(
        host_pool, remote, gpg_keys: GpgKeys, tmp_path):
    old = remote.commit(pets_repo_files(pet_hosts(host_pool, "alpha")), "Before signing")
    head = commit_as(remote, ALICE, {"README": "signed from now on\n"}, "-c",
                     "gpg.format=openpgp", "-c", f"user.signingkey={gpg_keys.fpr}",
                     env={"GNUPGHOME": str(gpg_keys.signer)})
    repo = {"url": remote.url, "branch": "main", "verify": "all",
            "gpg_home": str(gpg_keys.verifier)}
    config = write_agent_config(tmp_path / "agent.yml", remote.url, tmp_path / "state",
                                host_pool, limit="alpha", repo=repo)

    code, _, stderr = cli(config, "check")
    assert code == 1
    assert f"source commit {old[:12]} ('Before signing', below the head {head[:12]})" in stderr

    write_agent_config(config, remote.url, tmp_path / "state", host_pool, limit="alpha",
                       repo={**repo, "verify_since": old})
    code, report, stderr = cli(config, "check")
    assert report["source_sha"] == head and report["source_rejected"] is None, stderr
    trust = json.loads((tmp_path / "state" / "trust.json").read_text())
    assert trust["verified"] == head

    write_agent_config(config, remote.url, tmp_path / "state", host_pool, limit="alpha",
                       repo={**repo, "verify_since": old, "gpg_home": str(gpg_keys.empty)})
    commit_as(remote, ALICE, {"README": "signed by a key the keyring lacks\n"}, "-c",
              "gpg.format=openpgp", "-c", f"user.signingkey={gpg_keys.fpr}",
              env={"GNUPGHOME": str(gpg_keys.signer)})
    code, report, _ = cli(config, "check")
    assert code == 1 and report["source_sha"] == head
    assert "is not trusted: signed by a key not in" in report["source_rejected"]


def test_a_rewound_head_halts_applies_until_a_person_acknowledges_it(
        host_pool, remote, tmp_path):
    files = pets_repo_files(pet_hosts(host_pool, "alpha"))
    files["petkeeper/policy.yml"] = yaml.safe_dump({"default": "auto"})
    old = remote.commit(files, "Pets, corrected automatically")
    new = remote.commit({"roles/motd/defaults/main.yml":
                         'motd_text: "Version two\\n"\npet_mode: steady\n'}, "Version two")
    config = write_agent_config(tmp_path / "agent.yml", remote.url, tmp_path / "state",
                                host_pool, limit="alpha")
    state = tmp_path / "state"
    # Version two was applied: alpha holds its files (settled by shell) and the agent, having
    # fetched it, marked it applied as its apply step does (the last run below proves that a
    # real apply marks its commit; each apply is five Ansible runs).
    settle(host_pool, "alpha", motd="Version two\n")
    assert fetch_source_step(config).sha == new
    mark_applied(StateDir(state), new)

    git("-C", str(remote.work), "push", "--quiet", "--force", str(remote.bare),
        f"{old}:refs/heads/main")  # someone resets main to an older commit
    _, held, _ = cli(config, "run")

    assert held["source_sha"] == old and held["applies"] == []
    plan = held["plans"]["alpha"]
    assert plan["action"] == "wait" and plan["reason"].startswith(
        f"source rewound: {old[:12]} does not descend from {new[:12]}")
    assert f"petkeeper ack {old[:12]}" in plan["reason"]
    assert held["applies_held"] == plan["reason"].removesuffix(" (policy default: auto)")
    assert host_pool.run("alpha", MOTD).stdout == "Version two\n"  # detection only
    assert "applies held: source rewound" in petkeeper(config, "status").stdout

    trust_before = (state / "trust.json").read_bytes()
    refused = petkeeper(config, "ack", "0123456789abcdef")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "ack: '0123456789abcdef' is not a commit the agent has fetched" in refused.stderr
    assert (state / "trust.json").read_bytes() == trust_before

    acked = petkeeper(config, "ack", old[:12], "--comment", "rollback on purpose")
    assert acked.returncode == 0, acked.stderr
    assert f"acknowledged {old[:12]} as alice (last applied commit {new[:12]})" in acked.stdout
    _, ran, _ = cli(config, "run")
    assert [a["result"] for a in ran["applies"]] == ["converged"]
    assert host_pool.run("alpha", MOTD).stdout == "Managed by Petkeeper\n"
    trust = json.loads((state / "trust.json").read_text())
    assert trust["applied"] == old and trust["acknowledged"] is None


def test_a_committed_ansible_cfg_cannot_log_secrets_or_turn_off_host_key_checking(
        host_pool, remote, tmp_path):
    log = tmp_path / "ansible.log"
    files = pets_repo_files(pet_hosts(host_pool, "alpha"))
    remote.commit({**files, "ansible.cfg": f"[defaults]\nforks = 2\nlog_path = {log}\n"})
    config = write_agent_config(tmp_path / "agent.yml", remote.url, tmp_path / "state",
                                host_pool, limit="alpha")
    refs = remote.refs()

    code, report, stderr = cli(config, "check")

    assert code == 1 and report["hosts"] == {}  # --json: the error as JSON too
    assert f"petkeeper: error: {report['error']}" == stderr.strip().splitlines()[0]
    assert stderr.splitlines() == [
        "petkeeper: error: ansible.cfg: [defaults] log_path: not allowed in a Petkeeper repo "
        "(Ansible's log would hold diffs with secrets in clear); remove it (docs/security.md "
        "lists what a repo may set)"]
    assert not log.exists() and not (tmp_path / "state" / "status.json").exists()
    assert remote.refs() == refs

    remote.commit({"ansible.cfg": "[defaults]\nforks = 2\nhost_key_checking = False\n"})
    code, _, stderr = cli(config, "check")
    assert code == 1 and "host_key_checking = False: host keys are always checked" in stderr
    assert not remote.log()  # no report

    # Once a commit passed, a refused one leaves a trace (issue 22, item 6): the last good
    # commit is still checked, and the reports, status and the exit code say why.
    good = remote.commit({"ansible.cfg": "[defaults]\nforks = 2\nansible_managed = Ours\n"
                                         "[galaxy]\nserver_list = release_galaxy\n"})
    code, report, stderr = cli(config, "check")
    assert code in (0, 2) and report["source_sha"] == good, stderr
    bad = remote.commit({"ansible.cfg": f"[defaults]\nforks = 2\nlog_path = {log}\n"})
    code, report, stderr = cli(config, "check")

    why = (f"source commit {bad[:12]} refused: ansible.cfg: [defaults] log_path: not allowed "
           "in a Petkeeper repo")
    assert code == 1 and report["source_sha"] == good and report["error"] is None
    assert report["source_rejected"].startswith(why)
    assert report["hosts"]["alpha"]["status"] in ("clean", "drifted")
    assert report["plans"]["alpha"]["action"] != "apply"
    hosts_file = yaml.safe_load(remote.show("petkeeper/hosts/alpha", "hosts/alpha.yml"))
    assert hosts_file["source_sha"] == good and hosts_file["source_refused"].startswith(why)
    assert "Petkeeper-Source-Refused: " + why in remote.log("alpha", fmt="%B%x00")[0]
    status = petkeeper(config, "status")
    assert f"  source head rejected: {why}" in status.stdout
    assert not log.exists() and not (tmp_path / "state" / "trees" / bad).exists()


def test_git_runs_no_hook_and_fetches_no_submodule(remote, tmp_path):
    from agent.adapters.gitrepo import Mirror

    sub = GitRemote(tmp_path / "sub")
    sub_sha = sub.commit({"secret.txt": "from a submodule\n"})
    remote.commit({"site.yml": "- hosts: all\n", ".gitmodules":
                   f'[submodule "vendor"]\n\tpath = vendor\n\turl = {sub.url}\n'})
    git("-C", str(remote.work), "update-index", "--add", "--cacheinfo",
        f"160000,{sub_sha},vendor")
    git("-C", str(remote.work), "-c", "user.name=A", "-c", "user.email=a@x", "commit", "-q",
        "-m", "Add a submodule")
    git("-C", str(remote.work), "push", "-q", str(remote.bare), "HEAD:refs/heads/main")
    mirror = Mirror(tmp_path / "mirror.git", remote.url, 30)
    marker = tmp_path / "hook-ran"
    for name in ("reference-transaction", "post-checkout", "post-index-change"):
        hook = mirror.path / "hooks" / name
        hook.parent.mkdir(exist_ok=True)
        hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
        hook.chmod(0o755)

    mirror.fetch("main")
    head = mirror.resolve("main")
    tree = mirror.materialise(head, tmp_path / "trees" / head)

    assert not marker.exists()
    assert (tree / "site.yml").is_file() and not (tree / "vendor" / "secret.txt").exists()
    config = git("--git-dir", str(mirror.path), "config", "--list")
    for setting in ("core.hookspath=/dev/null", "protocol.file.allow=user",
                    "protocol.ext.allow=never", "submodule.recurse=false"):
        assert setting in config
    mirror.repo.close()


def test_git_over_ssh_refuses_an_unknown_or_changed_host_key_and_shows_its_fingerprint(
        host_pool, remote, tmp_path):
    host = host_pool.hosts["alpha"]
    host_pool.run("alpha", "rm -rf /tmp/pets-ssh.git && git init -q --bare /tmp/pets-ssh.git")
    remote.commit(pets_repo_files(pet_hosts(host_pool, "alpha")))
    url = f"ssh://root@{host.address}:{host.port}/tmp/pets-ssh.git"
    ssh = (f"ssh -i {host_pool.client_key} -o UserKnownHostsFile={host_pool.known_hosts} "
           "-o StrictHostKeyChecking=yes -o BatchMode=yes")
    subprocess.run(["git", "-C", str(remote.work), "push", "-q", url, "HEAD:refs/heads/main"],
                   env={**os.environ, "GIT_SSH_COMMAND": ssh}, check=True, timeout=60,
                   capture_output=True)
    known = tmp_path / "known_hosts"
    known.write_text("")
    config = write_agent_config(
        tmp_path / "agent.yml", url, tmp_path / "state", host_pool, limit="alpha",
        repo={"url": url, "branch": "main", "timeout": "30s",
              "ssh_key": str(host_pool.client_key), "known_hosts": str(known)})
    spec, safe = f"[{host.address}]:{host.port}", f"ssh://***@{host.address}:{host.port}"

    code, report, stderr = cli(config, "check")

    assert code == 1 and report["hosts"] == {}  # --json: the error as JSON too
    assert f"petkeeper: error: {report['error']}" == stderr.strip().splitlines()[0]
    assert stderr.splitlines() == [
        f"petkeeper: error: git fetch {safe}/tmp/pets-ssh.git: host key unknown: no ED25519 "
        f"key for {spec} in known_hosts (it sends {host.fingerprint}); refused, never trusted "
        "on first use: verify the key on the host (ssh-keygen -lf "
        "/etc/ssh/ssh_host_ed25519_key.pub), then add it to repo.known_hosts (default: "
        "~/.ssh/known_hosts of the user running Petkeeper)"]
    assert known.read_text() == "" and trees(tmp_path / "state") == set()

    impostor = tmp_path / "impostor"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor))
    known.write_text(f"{spec} {Path(f'{impostor}.pub').read_text().split(' ', 2)[0]} "
                     f"{Path(f'{impostor}.pub').read_text().split()[1]}\n")
    before = known.read_bytes()
    code, _, stderr = cli(config, "check")
    assert code == 1
    assert f"host key changed: {spec} now sends ED25519 key {host.fingerprint}, not the one " \
           f"in {known}:1; refused" in stderr and stderr.count("\n") == 1
    assert known.read_bytes() == before and trees(tmp_path / "state") == set()

    known.write_text(host.known_hosts_line + "\n")
    code, report, stderr = cli(config, "check")
    assert report["source_sha"] == remote.rev("main"), stderr
    assert host_pool.run("alpha", "git --git-dir /tmp/pets-ssh.git log --format=%s "
                                  "petkeeper/hosts/alpha").stdout.startswith("alpha: ")
