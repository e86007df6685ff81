"""The fleet from Git, end to end: three hosts, each checked by its own agent signing its own
reports; `petkeeper fleet` from a fresh directory with only the repo URL; the page in headless
Chromium; an approval from a workstation (a second identity, an approver's key, with
repo.verify: all and approvals.verify on) applied by the host's agent.

One converged state for the module: the tests run in order and build on each other, like the
operator's day they describe."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    GHOST,
    GitRemote,
    git,
    pet_hosts,
    pets_repo_files,
    settle,
    write_agent_config,
)
from tests.signing import ALICE, BOB, commit_as, run
from tests.unit.test_fleet_page import tags_of

pytestmark = pytest.mark.hosts

VAULT = str(Path(sys.executable).parent / "ansible-vault")
VAULT_CANARY = "PKFLEET-vault-3c9e21"
HOSTILE = ('<script>document.title="PWNED"</script>\n'
           '"><img src=x onerror="document.title=\'PWNED\'">\n')
HOSTS = ("alpha", "beta", "gamma")


@dataclass
class Fleet:
    remote: GitRemote
    tmp: Path
    configs: dict[str, Path]  # each host's agent
    keys: dict[str, Path]
    signers: dict[str, Path]
    workstation: Path  # a HOME with Bob's Git identity and signing key, nothing else

    def fleet(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        """`petkeeper fleet` as a person at a workstation: a fresh directory, their HOME."""
        where = self.tmp / f"desk-{len(list(self.tmp.glob('desk-*')))}"
        where.mkdir()
        source = ["--config", str(config)] if config else ["--repo", self.remote.url]
        return petkeeper("fleet", *source, *args, cwd=where, home=self.workstation)

    def agent(self, host: str, command: str = "check") -> tuple[int, dict, str]:
        r = petkeeper("--config", str(self.configs[host]), command, "--json")
        return r.returncode, json.loads(r.stdout) if r.stdout.strip() else {}, r.stderr


def petkeeper(*args: str, cwd: Path | None = None,
              home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SUDO_USER": "alice"}
    if home is not None:
        env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, cwd=cwd, env=env)


def keygen(path: Path) -> Path:
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path))
    return path


def signers_file(path: Path, keys: dict[str, Path]) -> Path:
    path.write_text("".join(f'{who} namespaces="git" {Path(f"{key}.pub").read_text()}'
                            for who, key in keys.items()))
    return path


def repo_files(pool, password: Path, gamma: str) -> dict[str, str]:
    hosts = pet_hosts(pool, *HOSTS)
    hosts["gamma"] = (gamma, hosts["gamma"][1] if gamma != GHOST else 22)
    vaulted = run(VAULT, "encrypt_string", "--vault-password-file", str(password),
                  f"Managed by Petkeeper {VAULT_CANARY}\n", "--name", "motd_text").decode()
    return {**pets_repo_files(hosts), "inventory/group_vars/pets.yml": vaulted}


@pytest.fixture(scope="module")
def fleet(host_pool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    keys = {who: keygen(tmp / who) for who in ("alice", "bob", *HOSTS)}
    signers = {"source": signers_file(tmp / "source_signers", {"alice@test.invalid":
                                                               keys["alice"]}),
               "approvers": signers_file(tmp / "approvers", {"bob@test.invalid": keys["bob"]}),
               "reports": signers_file(tmp / "reports_signers", {h: keys[h] for h in HOSTS})}
    password = tmp / "vault_pass"
    password.write_text("fleet vault password\n")
    remote = GitRemote(tmp / "git")
    alice = ("-c", "gpg.format=ssh", "-c", f"user.signingKey={keys['alice']}")
    # Converged first (the vaulted motd), gamma at its real address; then the repo sends
    # gamma's agent to a host that does not answer.
    settle(host_pool, *HOSTS, motd=f"Managed by Petkeeper {VAULT_CANARY}\n")
    commit_as(remote, ALICE, repo_files(host_pool, password, GHOST), *alice)
    host_pool.run("beta", f"printf %s {shlex.quote(HOSTILE)} > /etc/motd")
    configs = {h: write_agent_config(
        tmp / f"{h}.yml", remote.url, tmp / f"state-{h}", host_pool, limit=h,
        vault_password_file=str(password),
        repo={"url": remote.url, "branch": "main", "timeout": "30s", "verify": "all",
              "allowed_signers": str(signers["source"])},
        approvals={"verify": True, "allowed_signers": str(signers["approvers"])},
        reports={"signing_key": str(keys[h]), "allowed_signers": str(signers["reports"])})
        for h in HOSTS}
    home = tmp / "bob-home"
    home.mkdir()
    (home / ".gitconfig").write_text(f"[user]\n\tname = Bob\n\temail = bob@test.invalid\n"
                                     f"\tsigningKey = {keys['bob']}\n[gpg]\n\tformat = ssh\n")
    f = Fleet(remote, tmp, configs, keys, signers, home)
    try:
        for h in HOSTS:
            f.agent(h)
        yield f
    finally:  # the session's hosts go back to the suite's usual state
        settle(host_pool, *HOSTS)


def lines_of(out: str) -> dict[str, str]:
    return {line.split(":", 1)[0]: line for line in out.splitlines() if ": " in line}


def test_fleet_from_a_fresh_directory_with_only_the_repo_url_shows_each_host(fleet):
    r = fleet.fleet()

    assert r.returncode == 1, r.stderr  # gamma is unreachable
    lines = lines_of(r.stdout)
    assert lines["alpha"].startswith("alpha: clean, 0 changes (+1 check-blind); checked ")
    assert lines["beta"].startswith("beta: drifted, 1 change (+1 check-blind); checked ")
    assert "[wait] awaiting approval; approve: petkeeper approve " in lines["beta"]
    assert lines["gamma"].startswith("gamma: unreachable, 0 changes; checked ")
    assert "3 host(s): 1 clean, 1 drifted, 1 unreachable. Source main at " in r.stdout
    assert not list((fleet.workstation / ".cache" / "petkeeper").glob("*/petkeeper-trees"))
    view = json.loads(fleet.fleet("--json").stdout)
    assert view["schema"] == 1
    assert {h["host"]: h["trust"] for h in view["hosts"]} == dict.fromkeys(HOSTS)  # unchecked
    beta = next(h for h in view["hosts"] if h["host"] == "beta")
    assert VAULT_CANARY not in json.dumps(view) and "<secret:" in json.dumps(beta["changes"])


def test_with_the_allowed_signers_each_host_is_trusted_and_the_inventory_counts(fleet):
    inventory = fleet.tmp / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {
        "web": {"hosts": {"alpha": None, "beta": None, "delta": None}}}}}))

    r = fleet.fleet("--json", "--inventory", str(inventory), config=fleet.configs["alpha"])

    view = json.loads(r.stdout)
    assert r.returncode == 1
    assert {h["host"]: (h["status"], h["trust"] and h["trust"]["trusted"])
            for h in view["hosts"]} == {"alpha": ("clean", True), "beta": ("drifted", True),
                                        "delta": ("missing", None)}
    assert [h["host"] for h in view["retired"]] == ["gamma"]
    assert view["groups"] == [{"group": "web", "status": "missing", "hosts": 3,
                               "counts": {"clean": 1, "drifted": 1, "missing": 1}}]
    stale = fleet.fleet("--stale", "1s")
    assert stale.returncode == 1 and "alpha: stale (last report: clean)" in stale.stdout


def test_the_page_renders_in_headless_chromium_with_no_script_run_and_no_secret(fleet):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("the page test needs Chromium: apt-get install chromium (.ci/setup does)")
    page = fleet.tmp / "fleet.html"
    r = fleet.fleet("--html", str(page))
    assert r.returncode == 1 and page.is_file(), r.stderr
    text = page.read_text()
    assert VAULT_CANARY not in text and "PKFLEET" not in text
    assert "&lt;script&gt;document.title=&quot;PWNED&quot;&lt;/script&gt;" in text

    dom, console = browse(chromium, page, fleet.tmp, "--dump-dom")
    shot = fleet.tmp / "fleet.png"
    browse(chromium, page, fleet.tmp, f"--screenshot={shot}", "--window-size=1280,1400")

    assert "<title>Petkeeper fleet: 3 hosts</title>" in dom  # no script changed it
    tags = tags_of(dom)  # the elements the browser made of the page
    assert not {tag for tag, _ in tags} & {"script", "img", "iframe"}
    assert all(not name.startswith("on") for _, attrs in tags for name in attrs)
    for host, status in (("alpha", "clean"), ("beta", "drifted"), ("gamma", "unreachable")):
        assert f"<strong>{host}</strong>" in dom and f'id="status-{status}"' in dom
    assert "&lt;img src=x onerror=" in dom  # the canary is there, as text
    assert not [ln for ln in console if "CONSOLE" in ln or "Content Security Policy" in ln], \
        console
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def browse(chromium: str, page: Path, tmp: Path, *what: str) -> tuple[str, list[str]]:
    """Load PAGE in a headless Chromium with a new profile; its stdout and console lines."""
    profile = Path(subprocess.check_output(["mktemp", "-d", f"{tmp}/chromium-XXXX"],
                                           text=True).strip())
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                        "--enable-logging=stderr", "--v=0", *what, page.as_uri()],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, r.stderr.splitlines()


def test_once_the_unreachable_host_answers_the_fleet_shows_drift_only(fleet, host_pool):
    alice = ("-c", "gpg.format=ssh", "-c", f"user.signingKey={fleet.keys['alice']}")
    password = fleet.tmp / "vault_pass"
    commit_as(fleet.remote, ALICE, repo_files(host_pool, password,
                                              host_pool.hosts["gamma"].address), *alice)
    # gamma's agent, and beta's (its plan is approved next, at this commit); alpha's last
    # report still counts (clean, behind the head: fleet's exit code is its status's)
    for host in ("gamma", "beta"):
        fleet.agent(host)

    r = fleet.fleet()

    assert r.returncode == 2, r.stdout + r.stderr
    assert "3 host(s): 2 clean, 1 drifted." in r.stdout


def test_an_approval_from_a_workstation_is_applied_and_the_fleet_is_clean(fleet, host_pool):
    view = json.loads(fleet.fleet("--json").stdout)
    [beta] = [h for h in view["hosts"] if h["host"] == "beta"]
    pid = beta["plan"]["id"]

    unsigned = petkeeper("approve", pid, "--via-git", "--config", str(fleet.configs["beta"]),
                         home=fleet.workstation)
    assert unsigned.returncode == 1 and "add --sign" in unsigned.stderr
    r = petkeeper("approve", pid, "--via-git", "--sign", "--repo", fleet.remote.url,
                  "--comment", "motd back", home=fleet.workstation)
    assert r.returncode == 0, r.stderr
    assert f"approved plan {pid} for beta as Bob <bob@test.invalid>" in r.stdout
    code, ran, stderr = fleet.agent("beta", "run")
    assert [a["result"] for a in ran["applies"]] == ["converged"], stderr
    assert code == 0
    assert ran["applies"][0]["approved_by"] == "Bob <bob@test.invalid>"
    assert HOSTILE.splitlines()[0] not in host_pool.run("beta", "cat /etc/motd").stdout

    done = fleet.fleet(config=fleet.configs["alpha"])

    assert done.returncode == 0, done.stdout + done.stderr
    beta_line = lines_of(done.stdout)["beta"]
    assert beta_line.startswith("beta: clean, 0 changes")
    assert f"(plan {pid}, approved by Bob <bob@test.invalid>)" in beta_line


def test_an_approvers_commit_that_also_edits_a_playbook_is_refused(fleet):
    bob = ("-c", "gpg.format=ssh", "-c", f"user.signingKey={fleet.keys['bob']}")
    work = str(fleet.remote.work)  # up to date with the approval pushed from the workstation
    git("-C", work, "fetch", "--quiet", str(fleet.remote.bare), "main")
    git("-C", work, "reset", "--quiet", "--hard", "FETCH_HEAD")
    playbook = fleet.remote.work.joinpath("site.yml").read_text()
    bad = commit_as(fleet.remote, BOB, {"approvals/beta.yml": "host: beta\nplan: x\n",
                                        "site.yml": playbook + "# and a little more\n"}, *bob)

    code, report, stderr = fleet.agent("beta")

    assert code == 1 and "security: source commit" in stderr
    assert report["source_rejected"].startswith(f"source commit {bad[:12]} (head) is not "
                                                "trusted: signed by a key not in ")
    assert report["source_sha"] != bad
