"""From zero to a pet, as the README says: Petkeeper installed into a clean tree, `init` against
a Git server over SSH, `doctor`, the first check reporting to a repository of its own; then
doctor naming each failure with its fix and changing nothing, and init's refusals.

The Git server is an SSH test host (its real host key; bare repositories in its /srv/git). Its
root account takes the deploy keys that init generates as a forge takes them: the source's key
may only fetch (a forced command lets it run git-upload-pack alone), the reports' key may push
too. A second account, `reader`, may read the reports repository but not write it (the
repositories are root's, and its key is held to git-upload-pack): the push doctor must refuse.
Two more test hosts are the pets. Hosts use 127.0.102.x. The install is the README's commands
with / moved under a temporary prefix (the systemd container test runs them unmoved, and the
unit); pip installs from the session's wheelhouse, offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from agent.adapters.state import StateDir, running_daemon
from agent.testhosts import TestHostPool
from tests.conftest import GitRemote, pets_repo_files, require_test_hosts
from tests.integration.conftest import Wheelhouse, copy_source, readme_install_lines

GIT, PET1, PET2, GHOST = "127.0.102.10", "127.0.102.11", "127.0.102.12", "127.0.102.99"
STAGED = ("/opt/petkeeper", "/usr/local/bin", "/etc/systemd/system")  # moved under the prefix
SERVER_SETUP = r"""
set -e
mkdir -p /srv/git
for repo in pets reports; do git init -q --bare --initial-branch=main /srv/git/$repo.git; done
git config --system safe.directory '*'  # the reader account may read root's repositories
cat > /usr/local/bin/git-only <<'EOF'
#!/bin/sh
# A forge's deploy key: Git over SSH and nothing else; a "read" key may fetch, never push.
case "$SSH_ORIGINAL_COMMAND" in
  "git-upload-pack "*) exec git-shell -c "$SSH_ORIGINAL_COMMAND" ;;
  "git-receive-pack "*) [ "$1" = write ] && exec git-shell -c "$SSH_ORIGINAL_COMMAND" ;;
esac
echo "this deploy key may not run $SSH_ORIGINAL_COMMAND" >&2
exit 1
EOF
chmod 0755 /usr/local/bin/git-only
useradd --create-home --shell /bin/sh reader
usermod -p '*' reader
install -d -m 0700 -o reader -g reader /home/reader/.ssh
"""


@dataclass
class GitServer:
    pool: TestHostPool

    @property
    def port(self) -> int:
        return self.pool.hosts["git"].port

    def url(self, repo: str, user: str = "root") -> str:
        return f"ssh://{user}@{GIT}:{self.port}/srv/git/{repo}.git"

    def run(self, command: str) -> str:
        return self.pool.run("git", command).stdout

    def authorize(self, public_key: str, access: str, user: str = "root") -> None:
        """Let PUBLIC_KEY in as USER for Git alone: ACCESS read (fetch) or write (push too)."""
        home = "/root" if user == "root" else f"/home/{user}"
        line = f'command="/usr/local/bin/git-only {access}",restrict {public_key}'
        self.run(f"printf '%s\\n' {shlex.quote(line)} >> {home}/.ssh/authorized_keys && "
                 f"chown {user}: {home}/.ssh/authorized_keys && "
                 f"chmod 600 {home}/.ssh/authorized_keys")

    def refs(self) -> str:
        return self.run("for r in pets reports; do git --git-dir /srv/git/$r.git "
                        "for-each-ref; done")

    def reports(self, repo: str) -> list[str]:
        """The hosts with a reports branch (petkeeper/hosts/<host>) in REPO."""
        return sorted(self.run(f"git --git-dir /srv/git/{repo}.git for-each-ref "
                               "--format='%(refname:lstrip=4)' refs/heads/petkeeper/hosts/"
                               ).split())


@dataclass
class Pet:
    """A pet as the README sets it up: installed under PREFIX, then `petkeeper init`."""

    prefix: Path
    init: subprocess.CompletedProcess[str]

    @property
    def etc(self) -> Path:
        return self.prefix / "etc/petkeeper"

    @property
    def config(self) -> Path:
        return self.etc / "agent.yml"

    @property
    def state(self) -> Path:
        return self.prefix / "var/lib/petkeeper"

    def petkeeper(self, *args: str, input: str | None = None, timeout: float = 300,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The installed command, as the unit and a person run it."""
        return subprocess.run([str(self.prefix / "usr/local/bin/petkeeper"), *args],
                              input=input, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})},
                              stdin=None if input is not None else subprocess.DEVNULL)

    def doctor(self, config: Path, env: dict[str, str] | None = None
               ) -> tuple[int, dict[str, tuple[str, str]]]:
        r = self.petkeeper("--config", str(config), "doctor", "--json", "--prefix",
                           str(self.prefix), env=env)
        assert r.stdout, r.stderr
        return r.returncode, {c["check"]: (c["status"], c["message"])
                              for c in json.loads(r.stdout)["checks"]}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestHostPool]:
    require_test_hosts()
    with TestHostPool(tmp_path_factory.mktemp("onboarding-hosts")) as pool:
        for name, address in (("git", GIT), ("pet1", PET1), ("pet2", PET2)):
            pool.start(name, address)
        yield pool


@pytest.fixture(scope="module")
def server(pool: TestHostPool, tmp_path_factory: pytest.TempPathFactory) -> GitServer:
    """The Git server, with the pets' repository pushed to it as an admin would."""
    server = GitServer(pool)
    server.run(SERVER_SETUP)
    author = GitRemote(tmp_path_factory.mktemp("author"))
    files = pets_repo_files({n: (pool.hosts[n].address, pool.hosts[n].port)
                             for n in ("pet1", "pet2")})
    inventory = yaml.safe_load(files["inventory/hosts.yml"])
    inventory["all"]["children"]["lost"] = {"hosts": {"ghost": {"ansible_host": GHOST,
                                                                "ansible_port": 22}}}
    files["inventory/hosts.yml"] = yaml.safe_dump(inventory, sort_keys=False)
    author.commit(files, "The pets")
    ssh = shlex.join(["ssh", "-i", str(pool.client_key), "-o",
                      f"UserKnownHostsFile={pool.known_hosts}", "-o", "BatchMode=yes"])
    subprocess.run(["git", "-C", str(author.work), "push", "-q", server.url("pets"),
                    "HEAD:refs/heads/main"], env={**os.environ, "GIT_SSH_COMMAND": ssh},
                   check=True, capture_output=True, timeout=60)
    return server


@pytest.fixture(scope="module")
def installed(wheelhouse: Wheelhouse, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's install commands, run with / moved under a fresh prefix."""
    prefix = tmp_path_factory.mktemp("root")
    copy_source(prefix / "opt/petkeeper/src")  # the clone
    started = time.monotonic()
    for line in readme_install_lines():
        if line == "systemctl daemon-reload":
            continue  # no systemd here: the container test runs it
        for path in STAGED:
            line = line.replace(path, f"{prefix}{path}")
        (prefix / "usr/local/bin").mkdir(parents=True, exist_ok=True)
        (prefix / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=600,
                           env={**os.environ, **wheelhouse.pip_env}, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"{line}\n{r.stderr}"
    print(f"installed as the README says in {time.monotonic() - started:.1f}s")
    return prefix


@pytest.fixture(scope="module")
def pet(installed: Path, server: GitServer, pool: TestHostPool) -> Pet:
    """`petkeeper init` with options, its host key confirmed at the prompt, its two public keys
    added to the Git server, and the unit enabled as `systemctl enable` does in a staged tree."""
    pet = Pet(installed, subprocess.CompletedProcess([], 0))
    pet.init = pet.petkeeper(
        "init", "--prefix", str(installed), "--url", server.url("pets"),
        "--reports-url", server.url("reports"), "--inventory", "inventory/hosts.yml",
        "--limit", "pets", "--playbook", "site.yml", "--ansible-private-key", str(pool.client_key),
        "--ansible-known-hosts", str(pool.known_hosts), input="yes\n")
    assert pet.init.returncode == 0, pet.init.stderr
    server.authorize((pet.etc / "deploy_key.pub").read_text().strip(), "read")
    server.authorize((pet.etc / "reports_key.pub").read_text().strip(), "write")
    subprocess.run(["systemctl", f"--root={installed}", "enable", "petkeeper.service"],
                   check=True, capture_output=True, timeout=60)
    return pet


def test_installed_as_the_readme_says_a_pet_is_set_up_checked_and_reports_to_its_own_repo(
        pet: Pet, server: GitServer, pool: TestHostPool):
    git_host = pool.hosts["git"]
    assert git_host.fingerprint in pet.init.stderr  # shown before it was confirmed
    assert (pet.etc / "known_hosts").read_text() == git_host.known_hosts_line + "\n"
    for name in ("agent.yml", "deploy_key", "reports_key"):
        assert stat.S_IMODE((pet.etc / name).stat().st_mode) == 0o600, name
    for name in ("deploy_key", "reports_key"):
        assert (pet.etc / f"{name}.pub").read_text().strip() in pet.init.stdout

    daemon = start_daemon(pet)
    try:
        code, checks = pet.doctor(pet.config)
        assert list(checks) == [
            "config", "git host key", "source", "playbooks", "signatures", "reports layout",
            "reports push", "host pet1", "host pet2", "ansible-core", "ansible-runner",
            "state directory", "disk", "last cycle", "unit", "daemon"]
        assert {status for status, _ in checks.values()} == {"ok"}, checks
        assert code == 0
        assert checks["daemon"] == ("ok", f"running (pid {daemon.pid})")
        text = pet.petkeeper("--config", str(pet.config), "doctor", "--prefix", str(pet.prefix))
        print(f"$ petkeeper --config {pet.config} doctor --prefix {pet.prefix}\n"  # as a person
              f"{text.stdout}")  # reads it (the README's example)
        assert (text.returncode, text.stdout.splitlines()[-1]) == (
            0, f"{len(checks)} ok, 0 warning(s), 0 failure(s)"), text.stdout
        assert checks["reports push"][1] == (  # the limit is a group: each host's branch
            f"{server.url('reports').replace('root@', '***@')} accepts the agent's key for a "
            "push to petkeeper/hosts/pet1 (would be created), petkeeper/hosts/pet2 (would be "
            "created); a dry run proves authentication, not what server-side hooks would say")
        assert checks["host pet1"][1].startswith(f"root@{PET1}:{pool.hosts['pet1'].port}: "
                                                 "ED25519 key")

        check = pet.petkeeper("--config", str(pet.config), "check", "--json", "--wait", "300")
    finally:
        stop_daemon(daemon)
    assert check.stdout, f"{check.stderr}\n{(pet.prefix / 'daemon.log').read_text()}"
    report = json.loads(check.stdout)
    assert check.returncode == 2, check.stderr
    assert {h: r["status"] for h, r in report["hosts"].items()} == {"pet1": "drifted",
                                                                     "pet2": "drifted"}
    assert report["reports"]["error"] is None and report["reports"]["queued"] == 0
    # The reports went with the reports key (the deploy key may not push) to their own repo.
    assert server.reports("reports") == ["pet1", "pet2"]
    assert server.reports("pets") == []


def test_doctor_names_each_failure_with_its_fix_and_changes_nothing(
        pet: Pet, server: GitServer, pool: TestHostPool, tmp_path: Path):
    reader_key = tmp_path / "reader_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(reader_key)],
                   check=True, timeout=30)
    server.authorize(reader_key.with_suffix(".pub").read_text().strip(), "read", "reader")
    pet.state.mkdir(mode=0o700, exist_ok=True)
    base = yaml.safe_load(pet.config.read_text())
    pet2 = pool.hosts["pet2"]
    changed = tmp_path / "known_hosts_with_an_old_pet2_key"  # pet2 reinstalled since
    changed.write_text(pool.known_hosts.read_text().replace(
        pet2.host_key, (pool.client_key.with_suffix(".pub")).read_text().rsplit(" ", 1)[0]))
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    old_ansible = tmp_path / "old-ansible"  # stands in for an old ansible-core: see below
    (old_ansible / "ansible_core-2.16.3.dist-info").mkdir(parents=True)
    (old_ansible / "ansible_core-2.16.3.dist-info/METADATA").write_text(
        "Metadata-Version: 2.1\nName: ansible-core\nVersion: 2.16.3\n")

    def variant(name: str, **changes: object) -> Path:
        data = {**base, **{k: {**base.get(k, {}), **v} if isinstance(v, dict) else v
                           for k, v in changes.items()}}
        path = tmp_path / f"{name}.yml"
        path.write_text(yaml.safe_dump(data))
        return path

    pet.state.chmod(0o755)  # a wrong mode, for doctor to find
    before = snapshot(pet, server, pool, changed, empty)
    started = time.monotonic()

    code, checks = pet.doctor(variant("unreachable", repo={"url": f"ssh://root@{GHOST}:22/x"}))
    assert code == 1 and checks["source"][0] == "fail"
    assert checks["source"][1].startswith(f"cannot reach ssh://***@{GHOST}:22/x: {GHOST}:22: ")
    assert checks["source"][1].endswith("; check repo.url and the network")
    assert checks["hosts"] == ("fail", "not checked: the source could not be fetched (see "
                                       "above)")

    code, checks = pet.doctor(variant("no-branch", repo={"branch": "release"}))
    assert code == 1 and checks["source"] == ("fail", (
        f"{tmp_path}/no-branch.yml: repo.branch: branch 'release' not found in "
        f"{server.url('pets').replace('root@', '***@')} (it has: main); set repo.branch to one "
        "of them"))

    code, checks = pet.doctor(variant("unknown-key", repo={"known_hosts": str(empty)}))
    git_host = pool.hosts["git"]
    assert code == 1 and checks["git host key"] == ("fail", (
        f"host key unknown: no ED25519 key for [{GIT}]:{git_host.port} in known_hosts (it sends "
        f"{git_host.fingerprint}); refused, never trusted on first use: verify the key on the "
        "host (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then add it to "
        f"repo.known_hosts ({empty})"))

    # The rest at once: none of them hides another. PYTHONPATH puts a dist-info of ansible-core
    # 2.16.3 first, which is all doctor reads of its version (an old ansible-core itself cannot
    # be installed beside the real one, which everything else here needs).
    code, checks = pet.doctor(variant(
        "the-rest", limit="pets,lost", playbooks=["site.yml", "missing.yml"],
        reports={"url": server.url("reports", "reader"), "ssh_key": str(reader_key)},
        ansible={"known_hosts_file": str(changed)}), env={"PYTHONPATH": str(old_ansible)})
    print(f"doctor ran 4 times in {time.monotonic() - started:.1f}s")
    failed = {name: message for name, (status, message) in checks.items() if status == "fail"}
    assert set(failed) == {"playbooks", "reports push", "host ghost", "host pet2",
                           "state directory", "ansible-core"}, checks
    assert failed["playbooks"] == (f"{tmp_path}/the-rest.yml: playbooks[1]: 'missing.yml' not "
                                   "found in the repository at this commit; fix the path or "
                                   "commit the file")
    assert code == 1 and checks["host pet1"][0] == "ok"
    assert failed["reports push"] == (
        f"git push ssh://***@{GIT}:{git_host.port}/srv/git/reports.git failed: this deploy key "
        "may not run git-receive-pack '/srv/git/reports.git'; the reports remote must take the "
        f"agent's push: give {reader_key}.pub write access to it, or set reports.url and "
        "reports.ssh_key")
    assert failed["host ghost"].startswith(f"unreachable: {GHOST}:22: Connection refused; ")
    assert failed["host pet2"] == (
        f"host key changed: [{PET2}]:{pet2.port} now sends ED25519 key {pet2.fingerprint}, not "
        f"the one in {changed}:3; refused, as it may be a man in the middle: verify that "
        "fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then "
        f"replace the old key (ssh-keygen -R '[{PET2}]:{pet2.port}' -f {changed}) with the "
        "verified one")
    assert failed["state directory"].endswith(f"; chmod 700 {pet.state}")
    assert failed["ansible-core"] == (
        "ansible-core 2.16.3 is outside the range Petkeeper is tested with, 2.19 to 2.21 (2.19 "
        "on Python 3.11; 2.20 and 2.21 on Python 3.12 and 3.13): drift reports may be wrong; "
        "install a tested one: pip install 'ansible-core>=2.19,<2.20' (Petkeeper's own pip: "
        f"{pet.prefix}/opt/petkeeper/.venv/bin/pip)")

    assert snapshot(pet, server, pool, changed, empty) == before  # doctor changed nothing
    pet.state.chmod(0o700)


def test_init_refuses_an_unconfirmed_host_key_and_to_overwrite_writing_nothing(
        pet: Pet, server: GitServer, pool: TestHostPool, tmp_path: Path):
    fingerprint = pool.hosts["git"].fingerprint
    for answer in ("no\n", ""):  # a "no", and no answer at all (end of input)
        r = pet.petkeeper("init", "--prefix", str(tmp_path), "--url", server.url("pets"),
                          input=answer)
        assert r.returncode == 1 and fingerprint in r.stderr
        assert r.stderr.splitlines()[-1] == (
            f"petkeeper: error: init: the host key of [{GIT}]:{server.port} was not confirmed, "
            "so nothing was written; verify its fingerprint and run init again, or pass "
            "--known-hosts FILE with its verified key")
        assert list(tmp_path.iterdir()) == []

    before = tree(pet.etc)
    r = pet.petkeeper("init", "--prefix", str(pet.prefix), "--url", server.url("pets"))
    assert r.returncode == 1 and r.stderr == (
        f"petkeeper: error: init: {pet.config} and {pet.etc}/known_hosts already exist; nothing "
        "was changed; pass --force to replace them (deploy keys are kept)\n")
    assert tree(pet.etc) == before


def start_daemon(pet: Pet) -> subprocess.Popen[bytes]:
    """What the unit's ExecStart runs, with this pet's config; ready once it holds its pid
    file."""
    log = (pet.prefix / "daemon.log").open("wb")
    daemon = subprocess.Popen([str(pet.prefix / "usr/local/bin/petkeeper"), "--config",
                               str(pet.config), "daemon"], stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + 60
    while running_daemon(StateDir(pet.state)) != daemon.pid:
        assert daemon.poll() is None, (pet.prefix / "daemon.log").read_text()
        assert time.monotonic() < deadline, "the daemon did not take its pid file in 60s"
        time.sleep(0.1)
    return daemon


def stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=90) == 0


def tree(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file and folder under FOLDER: mode, size and content hash (links: their target)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            digest = os.readlink(path)
        elif path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            digest = ""
        found[str(path.relative_to(folder))] = (st.st_mode, st.st_size, digest)
    return found


def snapshot(pet: Pet, server: GitServer, pool: TestHostPool, *known: Path) -> object:
    """What doctor must not change: the state directory, every known_hosts file, the remote's
    refs."""
    return (tree(pet.state), pet.state.stat().st_mode, tree(pet.etc),
            {str(p): p.read_bytes() for p in (pool.known_hosts, *known)}, server.refs())
