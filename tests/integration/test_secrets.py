"""Canary secrets used on a real host never reach any output, and diffs stay useful."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from agent.cli import main
from tests.conftest import GitRemote, git, pet_hosts, write_agent_config

pytestmark = pytest.mark.hosts

VAULT_CANARY = "PKCANARY-vault-7f3a91"
ROTATED_CANARY = "PKCANARY-vault-v2-44d1e0"
NOLOG_CANARY = "PKCANARY-nolog-5e1d42"
URL_CANARY = "PKCANARY-url-c0ffee"
EXTRA_CANARY = "PKCANARY-extra-9b2c77"
WEBHOOK_CANARY = "PKCANARY-webhook-a4e5f1"
CANARIES = (VAULT_CANARY, ROTATED_CANARY, NOLOG_CANARY, URL_CANARY, EXTRA_CANARY,
            WEBHOOK_CANARY)
VAULT = str(Path(sys.executable).parent / "ansible-vault")
MASK = re.compile(r"<secret:[0-9a-f]{10}>")

PLAYBOOK = """\
- name: Keep the secret-holding pet
  hosts: pets
  gather_facts: false
  vars:
    # Built at run time: the plain value is in no file of the repo.
    canary_nolog: "{{ 'PKCANARY' ~ '-nolog-' ~ '5e1d42' }}"
  tasks:
    - name: Write the app config
      ansible.builtin.copy:
        content: "vault={{ canary_vault }}\\nextra={{ canary_extra }}\\nplain=visible\\n"
        dest: /etc/pet-secret.conf
        mode: "0600"
    - name: Write the token
      ansible.builtin.copy:
        content: "{{ canary_nolog }}\\n"
        dest: /etc/pet-token
        mode: "0600"
      no_log: true
    - name: Fail with a secret in the message
      ansible.builtin.fail:
        msg: "cannot log in with {{ canary_vault }} or {{ canary_extra }}"
      when: fail_now | default(false) | bool
"""


def encrypt_string(value: str, name: str, password: Path) -> str:
    return subprocess.run([VAULT, "encrypt_string", "--vault-password-file", str(password),
                           value, "--name", name], capture_output=True, text=True, check=True,
                          timeout=60).stdout


class Outputs:
    """Every stdout and stderr the test's petkeeper commands printed: each runs as the CLI's
    main() in this process (no interpreter started per command), its output and that of
    every child process it starts read from file descriptors 1 and 2 (capfd)."""

    def __init__(self, config: Path, capfd: pytest.CaptureFixture[str]) -> None:
        self.config, self.capfd, self.texts = config, capfd, []

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = ["--config", str(self.config), "-v", *args]
        code = main(argv)
        out = self.capfd.readouterr()
        self.texts += [out.out, out.err]
        return subprocess.CompletedProcess(argv, code, out.out, out.err)

    def json(self, *args: str) -> dict:
        r = self.run(*args, "--json")
        assert r.stdout.strip(), r.stderr
        return json.loads(r.stdout)


@pytest.fixture
def outputs(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
            restore_logging: None) -> Iterator[Callable[[Path], Outputs]]:
    """Outputs for a config, as the admin alice under sudo; the logging the commands set up is
    undone afterwards (restore_logging)."""
    monkeypatch.setenv("SUDO_USER", "alice")
    yield lambda config: Outputs(config, capfd)


def secret_diff(report: dict) -> str:
    [change] = [c for c in report["hosts"]["alpha"]["changes"]
                if c["task"] == "Write the app config"]
    return change["diff"]


def test_canary_secrets_reach_no_output_and_each_gets_its_own_mask(host_pool, tmp_path,
                                                                   receiver, outputs):
    remote = GitRemote(tmp_path / "git")
    password = tmp_path / "vault_pass"
    password.write_text("correct horse battery\n")
    address, port = pet_hosts(host_pool, "alpha")["alpha"]
    inventory = {"pets": {"hosts": {"alpha": {
        "ansible_host": address, "ansible_port": port, "ansible_user": "root",
        "ansible_python_interpreter": "/usr/bin/python3"}}}}
    remote.commit({
        "site.yml": PLAYBOOK, "inventory/hosts.yml": yaml.safe_dump(inventory),
        "inventory/group_vars/pets.yml": encrypt_string(VAULT_CANARY, "canary_vault", password),
        "petkeeper/policy.yml": yaml.safe_dump({"default": "auto"})})
    url = f"file://petkeeper:{URL_CANARY}@{remote.bare}"
    state = tmp_path / "state"
    config = write_agent_config(tmp_path / "agent.yml", url, state, host_pool, limit="alpha",
                                vault_password_file=str(password),
                                extra_vars=[f"canary_extra={EXTRA_CANARY}"],
                                notify={"targets": [{
                                    "url": receiver.url(f"/hook/{WEBHOOK_CANARY}?token="
                                                        f"{WEBHOOK_CANARY}"),
                                    "format": "cloudevents"}]},
                                metrics={"textfile": str(tmp_path / "petkeeper.prom")})
    out = outputs(config)
    host_pool.run("alpha", "rm -f /etc/pet-secret.conf /etc/pet-token")

    # 1. Drift of a missing file: it would be written with two secrets, each shown as its own
    #    mask. The same check (plan's, with its plans) ends in a failing task whose message
    #    holds secrets: after the app config's change, a check-blind failure, partial.
    failed = out.json("plan", "-e", "fail_now=true")
    alpha = failed["hosts"]["alpha"]
    diff = secret_diff(failed)
    masks = MASK.findall(diff)
    assert len(masks) == 2 and masks[0] != masks[1], diff
    assert "+plain=visible" in diff
    assert (alpha["status"], alpha["partial"]) == ("drifted", True)
    [stopped] = [c for c in alpha["changes"] if c.get("error")]
    assert re.search(r"cannot log in with <secret:\w+> or <secret:\w+>", stopped["error"]), \
        stopped
    # 2. Every read-only command, and an error message.
    out.json("status")
    out.run("status")
    out.run("history")
    out.run("notify")
    out.run("notify", "--test")
    bad = out.run("approve", "no-such-plan")
    assert bad.returncode == 1

    # 3. alpha as the first commit's apply would leave it (the first vault value in use: a
    #    shell write, not one more apply), then edited by hand: the extra var's line and the
    #    no_log token. The vault value rotated in the repo.
    host_pool.run("alpha", f"printf 'vault={VAULT_CANARY}\\nextra=edited by hand\\n"
                           f"plain=visible\\n' > /etc/pet-secret.conf && "
                           "printf 'by hand\\n' > /etc/pet-token && "
                           "chmod 0600 /etc/pet-secret.conf /etc/pet-token")
    remote.commit({"inventory/group_vars/pets.yml":
                   encrypt_string(ROTATED_CANARY, "canary_vault", password)}, "Rotate")

    # 4. Applied by policy: the diff shows which secret line the hand edit changed, and the
    #    rotated vault value's old and new values with different masks, both hidden; the host
    #    really holds the secrets (they were used).
    ran = out.json("run")
    [applied] = ran["applies"]
    assert applied["result"] == "converged", ran
    [rotated] = [c["diff"] for c in applied["changed"] if c["task"] == "Write the app config"]
    assert "-extra=edited by hand" in rotated and f"+extra={masks[1]}" in rotated, rotated
    old_line = next(ln for ln in rotated.splitlines() if ln.startswith("-vault="))
    new_line = next(ln for ln in rotated.splitlines() if ln.startswith("+vault="))
    assert old_line == f"-vault={masks[0]}" and MASK.fullmatch(new_line[len("+vault="):])
    assert new_line != f"+vault={masks[0]}"
    [token] = [c for c in applied["changed"] if c["task"] == "Write the token"]
    assert "diff" not in token, token  # no_log: changed, shown without its content
    on_host = host_pool.run("alpha", "cat /etc/pet-secret.conf /etc/pet-token").stdout
    assert ROTATED_CANARY in on_host and EXTRA_CANARY in on_host and NOLOG_CANARY in on_host
    # The webhook was told, with the masks in place of the secrets (not a vacuous check).
    told = [r.json() for r in receiver.accepted()]
    [error] = [c["error"] for e in told if e["type"] == "org.petkeeper.drift.detected"
               for c in e["data"]["changes"] if c.get("error")]  # step 1's partial check
    assert re.search(r"cannot log in with <secret:\w+> or <secret:\w+>", error), error
    assert {"org.petkeeper.drift.detected", "org.petkeeper.apply.succeeded",
            "org.petkeeper.test"} <= {e["type"] for e in told}

    # 5. The apply's undo, approved and run: the snapshot holds the old vault value in clear,
    # in the state directory only; the undo diff of that file shows no content (the old value
    # is no longer the source's to mask), nor the no_log one; the restore puts the old values
    # back on the host, and only there.
    undo = out.json("undo", "--host", "alpha")
    hidden = {c["task"]: c["diff"] for c in undo["changes"]}
    assert hidden == {"restore /etc/pet-secret.conf": "(hidden: no_log)",
                      "restore /etc/pet-token": "(hidden: no_log)"}, undo
    assert out.run("approve", undo["plan_id"]).returncode == 0
    assert [a["result"] for a in out.json("run")["applies"]] == ["undone"]
    on_host = host_pool.run("alpha", "cat /etc/pet-secret.conf /etc/pet-token").stdout
    assert on_host == f"vault={VAULT_CANARY}\nextra=edited by hand\nplain=visible\nby hand\n"
    out.run("history", "alpha")
    out.run("status")
    snapshots = state / "undo" / "blobs"
    assert any(VAULT_CANARY.encode() in b.read_bytes() for b in snapshots.iterdir())
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    host_pool.run("alpha", "rm -f /etc/pet-secret.conf /etc/pet-token")  # alpha is shared

    # Every output: what the commands printed, the reports branch (files, messages,
    # trailers), the whole state directory (artifacts, mirror, trees, status, ledger).
    reports = git("--git-dir", str(remote.bare), "log", "-p", "--format=%H%n%B",
                  "--branches=petkeeper/hosts/*")
    assert "apply of plan" in reports and "Petkeeper-Undo: " in reports
    blobs = git("--git-dir", str(remote.bare), "grep", "-I", "-h", "-e", ".",
                *remote.refs_under("refs/heads/petkeeper/hosts/"))
    leaks = {canary: where
             for canary in CANARIES
             for where, text in [("stdout/stderr", "\n".join(out.texts)),
                                 ("reports branch", reports + blobs),
                                 ("webhook bodies", b"".join(
                                     r.body for r in receiver.received).decode()),
                                 ("metrics", (tmp_path / "petkeeper.prom").read_text())]
             if canary in text}
    leaks |= {canary: str(path) for path in state.rglob("*")
              if path.is_file() and not path.is_symlink() and snapshots not in path.parents
              for canary in CANARIES if canary.encode() in path.read_bytes()}
    assert leaks == {}
