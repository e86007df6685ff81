"""operate/approve_git and the trust rule it needs: an approval from a workstation is a commit
of approvals/<host>.yml to the source branch, signed by an approver's key, which may change
nothing else. Real repositories, git and ssh-keygen; no hosts."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from agent.adapters.gitrepo import Mirror
from agent.config import Config, Overrides, parse_config
from agent.core.approval import parse_git_approval
from agent.core.drift import DRIFTED, Change, HostReport, fingerprint
from agent.cycle.record import RunInfo, drift_records, publish
from agent.cycle.trust import check_signatures
from agent.errors import AgentError, RepoError
from agent.operate.approve_git import approve_plans_via_git, approve_via_git

NOW = datetime.now(UTC).replace(microsecond=0)
PID = "30c4aa367513c4ee"
MOTD = Change("Pets", "motd", "Write motd", "ansible.builtin.copy", "-a\n+b\n")


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    import os
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={**os.environ, **(env or {})}).stdout


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f",
                    str(path)], check=True, timeout=30)
    return path


@pytest.fixture
def pets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A source repo signed by alice, beta's report with a plan waiting, and bob at a
    workstation: his own HOME, Git identity and signing key."""
    keys = {n: keygen(tmp_path / n) for n in ("alice", "bob")}
    for who in ("alice", "bob"):
        (tmp_path / f"{who}_signers").write_text(
            f'{who}@test.invalid namespaces="git" {Path(f"{keys[who]}.pub").read_text()}')
    bare, work = tmp_path / "pets.git", tmp_path / "work"
    git("init", "-q", "--bare", "--initial-branch=main", str(bare))
    git("init", "-q", "--initial-branch=main", str(work))
    (work / "site.yml").write_text("- hosts: all\n")
    git("add", "--all", cwd=work)
    commit_signed(work, "alice", keys["alice"], "Pets")
    git("push", "-q", str(bare), "HEAD:main", cwd=work)
    home = tmp_path / "bob-home"
    home.mkdir()
    (home / ".gitconfig").write_text(f"[user]\n\tname = Bob\n\temail = bob@test.invalid\n"
                                     f"\tsigningKey = {keys['bob']}\n[gpg]\n\tformat = ssh\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    report_plan(bare, tmp_path, {"plan_id": PID, "action": "wait", "mode": "approve",
                                 "reason": f"awaiting approval: petkeeper approve {PID}",
                                 "rule": "default", "approval": None})
    return {"bare": bare, "work": work, "tmp": tmp_path, **keys}


def commit_signed(work: Path, who: str, key: Path | None, message: str) -> None:
    sign = ["-c", "gpg.format=ssh", "-c", f"user.signingKey={key}"] if key else []
    git("-c", f"user.name={who}", "-c", f"user.email={who}@test.invalid", *sign, "commit",
        "-q", *(["-S"] if key else []), "-m", message, cwd=work,
        env={"GIT_CONFIG_GLOBAL": "/dev/null"})


def report_plan(bare: Path, tmp: Path, plan: dict, partial: bool = False) -> None:
    """beta's agent reports its drift (PARTIAL: its check stopped early) and PLAN."""
    config = config_for(bare)
    mirror = Mirror(tmp / "beta-agent.git", f"file://{bare}", 30)
    head = git("--git-dir", str(bare), "rev-parse", "main").strip()
    reports = {"beta": HostReport("beta", DRIFTED, (MOTD,), fingerprint(DRIFTED, (MOTD,)),
                                  partial=partial)}
    run = RunInfo(f"r{datetime.now(UTC).timestamp()}", head, datetime.now(UTC), "beta",
                  plans={"beta": plan})
    publish(mirror, config, reports, lambda base: drift_records(mirror, base, reports, run, 1))


def config_for(bare: Path, **repo: object) -> Config:
    return parse_config({"repo": {"url": f"file://{bare}", **repo}}, "fleet.yml", Overrides())


def approve(pets: dict[str, Path], config: Config | None = None, plan: str = PID,
            sign: bool = True) -> object:
    return approve_via_git(config or config_for(pets["bare"]), pets["tmp"] / "cache.git", plan,
                           now=NOW, expires=NOW + timedelta(hours=4), comment="motd back",
                           sign=sign)


def main_of(bare: Path) -> str:
    return git("--git-dir", str(bare), "rev-parse", "main").strip()


def test_an_approval_is_a_signed_commit_of_approvals_by_the_person_and_nothing_else(pets):
    before = main_of(pets["bare"])

    done = approve(pets)

    head = main_of(pets["bare"])
    assert done.commit == head and done.host == "beta"  # type: ignore[attr-defined]
    assert git("--git-dir", str(pets["bare"]), "rev-parse", f"{head}^").strip() == before
    assert git("--git-dir", str(pets["bare"]), "diff-tree", "--no-commit-id", "--name-only",
               "-r", head).split() == ["approvals/beta.yml"]
    assert git("--git-dir", str(pets["bare"]), "log", "-1", "--format=%an <%ae>", head).strip() \
        == "Bob <bob@test.invalid>"
    blob = git("--git-dir", str(pets["bare"]), "show", f"{head}:approvals/beta.yml")
    approval = parse_git_approval(yaml.safe_load(blob), "approvals/beta.yml", head,
                                  "Bob <bob@test.invalid>", NOW, {PID: ("beta", "s", "f")})
    assert (approval.host, approval.plan_id, approval.comment) == ("beta", PID, "motd back")
    assert approval.expires_at == (NOW + timedelta(hours=4)).isoformat()
    mirror = Mirror(pets["tmp"] / "cache.git", f"file://{pets['bare']}", 30)
    assert mirror.verify_commit(head, pets["tmp"] / "bob_signers", None)[0]


@pytest.mark.parametrize(("plan", "problem"), [
    ("0123456789abcdef", "plan 0123456789abcdef: no host's newest report shows it"),
    ("--upload-pack=x", "plan --upload-pack=x: no host's newest report shows it")])
def test_a_plan_no_report_shows_is_refused_and_nothing_is_pushed(pets, plan, problem):
    before = main_of(pets["bare"])

    with pytest.raises(RepoError) as e:
        approve(pets, plan=plan)

    assert str(e.value).startswith(problem)
    assert main_of(pets["bare"]) == before


def test_several_plans_are_approved_only_once_each_is_known_to_be_waiting(pets):
    before = main_of(pets["bare"])
    config = config_for(pets["bare"])

    with pytest.raises(RepoError, match="plan 0123456789abcdef: no host's newest report"):
        approve_plans_via_git(config, pets["tmp"] / "cache.git", [PID, "0123456789abcdef"],
                              "2h", "", sign=True, now=NOW)
    assert main_of(pets["bare"]) == before  # the waiting one was not approved either

    done = approve_plans_via_git(config, pets["tmp"] / "cache.git", [PID, PID], "2h", "",
                                 sign=True, now=NOW)
    assert [(a.host, a.plan_id, a.expires_at) for a in done] == [
        ("beta", PID, (NOW + timedelta(hours=2)).isoformat())]
    assert git("--git-dir", str(pets["bare"]), "rev-parse", f"{main_of(pets['bare'])}^"
               ).strip() == before


@pytest.mark.parametrize(("action", "approver", "problem"), [
    ("apply", "alice", f"plan {PID} (beta): not waiting for an approval ([apply]"),
    ("wait", "alice", ", approved by alice)"),
    ("nothing", None, f"plan {PID} (beta): not waiting for an approval ([nothing]")])
def test_a_plan_that_is_not_waiting_for_an_approval_is_refused(pets, action, approver, problem):
    report_plan(pets["bare"], pets["tmp"], {
        "plan_id": PID, "action": action, "mode": "approve", "reason": "because",
        "rule": "default", "approval": {"approver": approver} if approver else None})
    before = main_of(pets["bare"])

    with pytest.raises(RepoError) as e:
        approve(pets)

    assert problem in str(e.value)
    assert main_of(pets["bare"]) == before


def test_a_partial_plan_is_approved_only_with_partial_and_its_file_says_so(pets):
    report_plan(pets["bare"], pets["tmp"], {
        "plan_id": PID, "action": "wait", "mode": "approve", "reason": "partial check",
        "rule": "default", "approval": None}, partial=True)
    config = config_for(pets["bare"])
    before = main_of(pets["bare"])

    with pytest.raises(RepoError, match=f"plan {PID} \\(beta\\): its check was partial .*"
                                        "approve it knowingly with --partial"):
        approve_plans_via_git(config, pets["tmp"] / "cache.git", [PID], "2h", "", sign=True,
                              now=NOW)
    assert main_of(pets["bare"]) == before

    approve_plans_via_git(config, pets["tmp"] / "cache.git", [PID], "2h", "", sign=True,
                          now=NOW, partial=True)
    head = main_of(pets["bare"])
    blob = git("--git-dir", str(pets["bare"]), "show", f"{head}:approvals/beta.yml")
    approval = parse_git_approval(yaml.safe_load(blob), "approvals/beta.yml", head,
                                  "Bob <bob@test.invalid>", NOW, {PID: ("beta", "s", "f")})
    assert approval.partial is True


def test_with_verification_on_an_unsigned_approval_is_refused_before_anything_is_written(pets):
    config = config_for(pets["bare"], verify="all", allowed_signers=str(pets["tmp"] / "x"))
    before = main_of(pets["bare"])

    with pytest.raises(AgentError) as e:
        approve(pets, config, sign=False)

    assert str(e.value) == ("approve --via-git: repo.verify is all: an unsigned approval would "
                            "be refused; add --sign (your Git signing key: user.signingKey, "
                            "gpg.format)")
    assert main_of(pets["bare"]) == before


def test_without_a_config_a_signed_head_asks_for_sign_too(pets):
    with pytest.raises(AgentError) as e:
        approve(pets, sign=False)
    assert "the head of main is signed, so the pets likely verify signatures" in str(e.value)


def refuse_pushes(bare: Path, tmp: Path, times: int) -> None:
    """The source remote refuses the next TIMES pushes (a busy or guarded branch)."""
    count = tmp / "refusals"
    count.write_text(str(times))
    hook = bare / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\nn=$(cat {count}); [ \"$n\" -gt 0 ] || exit 0\n"
                    f"echo $((n - 1)) > {count}; echo 'branch busy' >&2; exit 1\n")
    hook.chmod(0o755)


def test_a_rejected_push_is_retried_once_on_the_new_head(pets):
    refuse_pushes(pets["bare"], pets["tmp"], 1)

    done = approve(pets)

    assert main_of(pets["bare"]) == done.commit  # type: ignore[attr-defined]


def test_a_push_rejected_twice_is_one_error_and_nothing_is_written(pets):
    refuse_pushes(pets["bare"], pets["tmp"], 2)
    before = main_of(pets["bare"])

    with pytest.raises(AgentError) as e:
        approve(pets)

    assert str(e.value).startswith(f"approve --via-git: push to main of file://{pets['bare']} "
                                   "rejected twice")
    assert main_of(pets["bare"]) == before


# --- the trust rule: approvals/ only, by approvers; anything else, by the source signers -------

def verify_config(pets: dict[str, Path]) -> Config:
    return parse_config({"repo": {"url": f"file://{pets['bare']}", "verify": "all",
                                  "allowed_signers": str(pets["tmp"] / "alice_signers")},
                         "approvals": {"verify": True,
                                       "allowed_signers": str(pets["tmp"] / "bob_signers")}},
                        "agent.yml", Overrides())


def pushed_commit(pets: dict[str, Path], who: str, files: dict[str, str]) -> str:
    work = pets["work"]
    git("pull", "-q", str(pets["bare"]), "main", cwd=work, env={"GIT_CONFIG_GLOBAL": "/dev/null"})
    for path, content in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(content)
    git("add", "--all", cwd=work)
    commit_signed(work, who, pets[who] if who in ("alice", "bob") else None, "change")
    git("push", "-q", str(pets["bare"]), "HEAD:main", cwd=work)
    return main_of(pets["bare"])


def verdict(pets: dict[str, Path], since: str) -> str | None:
    mirror = Mirror(pets["tmp"] / "agent.git", f"file://{pets['bare']}", 30)
    mirror.fetch("main")
    return check_signatures(verify_config(pets), mirror, main_of(pets["bare"]), since)


def test_an_approvers_commit_of_approvals_alone_is_trusted(pets):
    base = main_of(pets["bare"])
    approve(pets)

    assert verdict(pets, base) is None


def test_an_approvers_commit_that_also_edits_a_playbook_is_refused(pets):
    base = main_of(pets["bare"])
    bad = pushed_commit(pets, "bob", {"approvals/beta.yml": "host: beta\n",
                                      "site.yml": "- hosts: all\n  tasks: []\n"})

    problem = verdict(pets, base)

    assert problem is not None and problem.startswith(f"source commit {bad[:12]} (head) is not "
                                                       "trusted: signed by a key not in")
    assert "repo.allowed_signers or repo.gpg_home" in problem


def test_a_source_signers_commit_of_approvals_alone_needs_an_approvers_key(pets):
    base = main_of(pets["bare"])
    pushed_commit(pets, "alice", {"approvals/beta.yml": "host: beta\n"})

    problem = verdict(pets, base)

    assert problem is not None and "approvals.allowed_signers or approvals.gpg_home (it " \
                                   "changes only approvals/)" in problem


def test_a_playbook_change_by_a_source_signer_is_trusted_and_unsigned_approvals_are_not(pets):
    base = main_of(pets["bare"])
    pushed_commit(pets, "alice", {"site.yml": "- hosts: web\n"})
    assert verdict(pets, base) is None

    pushed_commit(pets, "carol", {"approvals/beta.yml": "host: beta\n"})
    problem = verdict(pets, base)
    assert problem is not None and "is not trusted: unsigned" in problem
