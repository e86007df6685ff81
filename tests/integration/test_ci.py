"""Petkeeper in CI (#13), on real SSH test hosts and a real bare remote, sharing one converged
state: an agent checks the base commit (hand drift on both hosts), then examples/ci/
petkeeper-ci.sh previews a head commit that changes a template, in GitHub's environment (then
GitLab's and Jenkins', on one host each)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.testhosts import TestHostPool
from tests.conftest import (
    GitRemote,
    git,
    pet_hosts,
    petkeeper,
    pets_repo_files,
    settle,
    write_agent_config,
)
from tests.integration.test_secrets import encrypt_string

pytestmark = pytest.mark.hosts

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "ci" / "petkeeper-ci.sh"
XSD = ROOT / "tests" / "unit" / "fixtures" / "ci" / "junit-10.xsd"
CANARY = "PKCANARY-ci-3c9e5d"
NOTES = "/etc/pk-ci-notes"
NOTES_TASK_LINE = 3  # of roles/notes/tasks/main.yml, below its comment
NOTES_TASKS = f"""\
# The CI notes: a template whose lines are hostile to every CI format.
# (the task starts on line {NOTES_TASK_LINE})
- name: Write the CI notes
  ansible.builtin.template:
    src: notes.j2
    dest: {NOTES}
    mode: "0644"
"""
# A managed file holding what each format must escape: workflow-command lines, %, :, ",",
# Markdown fences, HTML, an @mention, and the vaulted canary (masked in every output).
HOSTILE = ("</details><script>alert(1)</script> & ]]> @octocat | cell |\n```\n"
           "percent 100% done, a:b, c,d\n::error file=x,line=1::forged\n"
           "::stop-commands::forged\n")
# A hand edit with a carriage return and a terminal escape, on beta's /etc/motd.
HAND_MOTD = b"hand edit 50%\r\n::warning::forged, really: yes\n\x1b[31mred\n"


@dataclass
class Scene:
    pool: TestHostPool
    remote: GitRemote
    checkout: Path
    base: str
    head: str
    refs_before: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def scene(host_pool: TestHostPool, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("ci")
    remote = GitRemote(tmp / "git")
    password = tmp / "vault_pass"
    password.write_text("ci-vault-password\n")
    files = pets_repo_files(pet_hosts(host_pool, "alpha", "beta"))
    files["site.yml"] += "\n- name: Keep the CI notes\n  hosts: all\n  gather_facts: false\n" \
                        "  roles:\n    - notes\n"
    files |= {"roles/notes/tasks/main.yml": NOTES_TASKS,
              "roles/notes/templates/notes.j2": "notes v1 token={{ ci_token }}\n" + HOSTILE,
              "inventory/group_vars/pets.yml": encrypt_string(CANARY, "ci_token", password)}
    base = remote.commit(files, "Base")
    settle_base(host_pool)
    # Hand drift on the base: alpha's pet.conf (the head fixes it), beta's motd (it stays).
    host_pool.hosts["alpha"].path("/etc/pet.conf").write_text("mode=hand\n")
    host_pool.hosts["beta"].path("/etc/motd").write_bytes(HAND_MOTD)
    config = write_agent_config(tmp / "agent.yml", remote.url, tmp / "agent-state", host_pool,
                                vault_password_file=str(password))
    r = petkeeper("--config", str(config), "check")
    assert r.returncode == 2, r.stderr
    # The pull request: alpha's hand value becomes the repo's, the notes template changes.
    head = remote.commit({"roles/motd/defaults/main.yml": 'motd_text: "Managed by Petkeeper'
                          '\\n"\npet_mode: hand\n',
                          "roles/notes/templates/notes.j2": "notes v2 token={{ ci_token }}\n"
                          + HOSTILE},
                         "Head", branch="feature")
    checkout = tmp / "checkout"
    git("clone", "--quiet", "--branch", "feature", remote.url, str(checkout))
    env = {**os.environ, "PETKEEPER": str(Path(sys.executable).parent / "petkeeper"),
           "PETKEEPER_SSH_KEY_FILE": str(host_pool.client_key),
           "PETKEEPER_KNOWN_HOSTS": host_pool.known_hosts.read_text(),
           "PETKEEPER_VAULT_PASSWORD_FILE": str(password)}
    for name in ("GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "PETKEEPER_CONFIG"):
        env.pop(name, None)
    yield Scene(host_pool, remote, checkout, base, head, remote.refs(), env)
    # Leave the pool's hosts as other modules expect them: the plain pets repo, converged.
    for name in ("alpha", "beta"):
        host_pool.run(name, f"rm -f {NOTES}")
    settle(host_pool, "alpha", "beta")


def settle_base(pool: TestHostPool) -> None:
    """Leave alpha and beta as a converge of the base commit leaves them, by shell (an Ansible
    run costs seconds): the pets playbook's files, and the notes the base's template renders
    with the vaulted token. The check that follows finds only the hand drift made after this
    (a byte out of place would show as notes drift on the base, and fail the preview's
    introduced/existing verdicts below)."""
    settle(pool, "alpha", "beta")
    notes = f"notes v1 token={CANARY}\n{HOSTILE}"
    for name in ("alpha", "beta"):
        pool.run(name, f"printf %s {shlex.quote(notes)} > {NOTES} && chmod 0644 {NOTES}")


@pytest.fixture(scope="module")
def github(scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """petkeeper-ci.sh preview as GitHub Actions runs it on the pull request."""
    out = tmp_path_factory.mktemp("github")
    summary = out / "step_summary.md"
    summary.write_text("## an earlier step's summary\n")
    env = {**scene.env, "GITHUB_ACTIONS": "true", "GITHUB_BASE_REF": "main",
           "GITHUB_STEP_SUMMARY": str(summary), "RUNNER_TEMP": str(out),
           "GITHUB_WORKSPACE": str(scene.checkout)}
    r = subprocess.run(["sh", str(SCRIPT), "preview"], cwd=scene.checkout, env=env,
                       capture_output=True, text=True, timeout=600)
    return {"result": r, "summary": summary.read_text(), "out": out,
            "junit": (out / "petkeeper-junit.xml").read_text(),
            "markdown": (out / "petkeeper-preview.md").read_text()}


def kinds(junit: str) -> dict[str, list[tuple[str, str]]]:
    """Per host (testsuite), each testcase's name and outcome."""
    found: dict[str, list[tuple[str, str]]] = {}
    for suite in ET.fromstring(junit).iter("testsuite"):
        for case in suite.iter("testcase"):
            outcome = next((child.tag for child in case if child.tag in
                            ("failure", "skipped", "error")), "passed")
            found.setdefault(suite.get("name", ""), []).append((case.get("name", ""), outcome))
    return found


def test_preview_marks_the_template_introduced_the_hand_drift_existing_the_fix_resolved(
        scene: Scene, github: dict[str, Any]):
    r = github["result"]
    assert r.returncode == 2, r.stderr  # --fail-on introduced: the notes template
    cases = kinds(github["junit"])
    assert ("introduced: notes | Write the CI notes (ansible.builtin.template)", "failure") \
        in cases["alpha"]
    assert ("existing: motd | Write the message of the day (ansible.builtin.copy)",
            "failure") in cases["beta"]
    assert ("resolved: Write the pet config (ansible.builtin.copy)", "passed") in cases["alpha"]
    # beta's pet.conf was steady: the head's new value is a change it introduces there.
    assert ("introduced: Write the pet config (ansible.builtin.copy)", "failure") \
        in cases["beta"]
    assert scene.remote.refs() == scene.refs_before  # the preview pushed no report


def test_junit_validates_against_jenkins_xsd_and_counts_match_the_report(
        github: dict[str, Any]):
    import xmlschema

    xmlschema.XMLSchema(str(XSD)).validate(github["junit"])
    root = ET.fromstring(github["junit"])
    for suite in root.iter("testsuite"):
        cases = list(suite.iter("testcase"))
        assert int(suite.get("tests", "-1")) == len(cases)
        assert int(suite.get("failures", "-1")) == sum(1 for c in cases
                                                       if c.find("failure") is not None)
        assert int(suite.get("skipped", "-1")) == sum(1 for c in cases
                                                      if c.find("skipped") is not None)
    assert int(root.get("tests", "-1")) == len(list(root.iter("testcase")))


def test_annotations_point_at_the_real_task_line_of_the_role_escaped(scene: Scene,
                                                                    github: dict[str, Any]):
    lines = github["result"].stdout.splitlines()
    notes = [ln for ln in lines if ln.startswith("::warning ") and "Write the CI notes" in ln]
    assert len(notes) == 2  # alpha and beta
    props, _, message = notes[0][len("::warning "):].partition("::")
    assert props.startswith(f"file=roles/notes/tasks/main.yml,line={NOTES_TASK_LINE},title=")
    task_line = (scene.checkout / "roles/notes/tasks/main.yml").read_text().splitlines()[
        NOTES_TASK_LINE - 1]
    assert task_line == "- name: Write the CI notes"
    assert "%3A" in props and "%2C" not in props.split("title=")[0]
    assert "\n" not in message and "%0A" in message and "100%25 done" in message
    # A host's lines are inside ::stop-commands:: ... ::<token>::; outside, only annotations.
    start = next(i for i, ln in enumerate(lines) if ln.startswith("::stop-commands::"))
    token = lines[start].split("::")[2]
    end = lines.index(f"::{token}::")
    assert any("::warning::forged" in ln for ln in lines[start + 1:end])
    outside = [ln for ln in lines[:start] + lines[end + 1:] if ln.strip().startswith("::")]
    assert outside and all(ln.startswith(("::warning file=", "::notice file="))
                           for ln in outside)


def test_github_summary_is_appended_with_details_and_host_text_as_code(github: dict[str, Any]):
    summary = github["summary"]
    assert summary.startswith("## an earlier step's summary\n")
    assert "<details>" in summary and "</details>" in summary
    for hostile in ("<script>", "@octocat", "</details><script>", "::warning::forged"):
        assert hostile in summary and _only_in_fences(summary, hostile)
    assert github["markdown"] in summary
    assert "\x1b" not in summary and "\r" not in summary and "\\x1b[31mred" in summary


def _only_in_fences(text: str, needle: str) -> bool:
    """Whether every NEEDLE in Markdown TEXT is inside a fenced code block."""
    inside, fence = False, ""
    for line in text.splitlines():
        if not inside and re.match(r"^`{3,}", line):
            inside, fence = True, re.match(r"^`+", line).group()  # type: ignore[union-attr]
        elif inside and line.strip() == fence:
            inside = False
        elif needle in line and not inside:
            return False
    return True


def test_no_output_holds_the_secret_canary(github: dict[str, Any]):
    r = github["result"]
    outputs = [r.stdout, r.stderr, github["summary"], github["junit"], github["markdown"]]
    assert all(CANARY not in text for text in outputs)
    texts = "".join(f.text or "" for f in ET.fromstring(github["junit"]).iter("failure"))
    assert re.search(r"^\+notes v2 token=<secret:[0-9a-f]{10}>$", texts, re.MULTILINE)


@pytest.mark.parametrize("system", ["gitlab", "jenkins"])
def test_petkeeper_ci_sh_in_gitlab_and_jenkins(scene: Scene, tmp_path: Path, system: str):
    workspace = tmp_path / "workspace"
    shutil.copytree(scene.checkout, workspace, symlinks=True)
    env = {**scene.env, "PETKEEPER_LIMIT": "alpha"}
    if system == "gitlab":
        env |= {"GITLAB_CI": "true", "CI_PROJECT_DIR": str(workspace),
                "CI_MERGE_REQUEST_DIFF_BASE_SHA": scene.base, "PETKEEPER_FAIL_ON": "drift"}
    else:
        env |= {"JENKINS_URL": "http://127.0.0.1:9/", "WORKSPACE": str(workspace),
                "CHANGE_TARGET": "main"}
    r = subprocess.run(["sh", str(SCRIPT), "preview"], cwd=workspace, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr
    assert "::warning" not in r.stdout  # annotations are GitHub's alone
    junit = (workspace / "petkeeper-junit.xml").read_text()
    assert ("introduced: notes | Write the CI notes (ansible.builtin.template)", "failure") \
        in kinds(junit)["alpha"] and set(kinds(junit)) == {"alpha"}
    if system == "gitlab":
        issues = json.loads((workspace / "gl-code-quality-report.json").read_text())
        notes = [i for i in issues if "Write the CI notes" in i["description"]]
        assert notes and notes[0]["location"] == {"path": "roles/notes/tasks/main.yml",
                                                  "lines": {"begin": NOTES_TASK_LINE}}
        assert all({"description", "check_name", "fingerprint", "severity", "location"}
                   <= set(i) for i in issues)
        assert CANARY not in json.dumps(issues)
    assert CANARY not in r.stdout + r.stderr + junit


def test_after_merge_run_applies_with_its_persistent_state_dir_and_wait_names_who_is_behind(
        scene: Scene, tmp_path: Path):
    """After the merge of the pull request (with a policy letting Petkeeper correct),
    petkeeper-ci.sh run on real hosts, in a persistent --state-dir: alpha (whose reports are
    this machine's) gets the new notes; beta, whose newest report its own agent wrote, is
    neither applied nor reported on. Then petkeeper-ci.sh wait: alpha checked the merged
    commit, beta's agent has not yet."""
    base_report = beta_report_by_its_own_agent(scene, tmp_path)
    assert base_report == scene.base
    # The remote's clone has the pull request's commit: the next commit to main merges it.
    merged = scene.remote.commit({"petkeeper/policy.yml": "default: auto\n"}, "Merge, heal")
    git("--git-dir", str(scene.remote.bare), "merge-base", "--is-ancestor", scene.head, merged)
    beta_tip = scene.remote.rev("petkeeper/hosts/beta")
    config = write_agent_config(tmp_path / "agent.yml", scene.remote.url,
                                tmp_path / "configured-state", scene.pool,
                                vault_password_file=scene.env["PETKEEPER_VAULT_PASSWORD_FILE"])
    # Persistent: not under /tmp, where pytest's folders are (a temporary one is refused).
    state = Path.home() / ".cache" / f"petkeeper-test-ci-{os.getpid()}-{tmp_path.name}"
    env = {**scene.env, "GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(scene.checkout),
           "RUNNER_TEMP": str(tmp_path), "PETKEEPER_CONFIG": str(config),
           "PETKEEPER_STATE_DIR": str(state), "GITHUB_SHA": merged, "GITHUB_REF_NAME": "main",
           "PETKEEPER_REPO": scene.remote.url, "PETKEEPER_TIMEOUT": "1s"}
    try:
        r = subprocess.run(["sh", str(SCRIPT), "run"], cwd=scene.checkout, env=env,
                           capture_output=True, text=True, timeout=600)

        assert r.returncode == 2, r.stderr  # beta's drift is left to its own agent
        assert "managed by agent pet-beta (its last report); run --take-over" in r.stdout
        assert scene.pool.hosts["alpha"].path(NOTES).read_text().startswith("notes v2 token=")
        assert scene.pool.hosts["beta"].path(NOTES).read_text().startswith("notes v1 token=")
        assert scene.pool.hosts["beta"].path("/etc/motd").read_bytes() == HAND_MOTD
        assert scene.remote.rev("petkeeper/hosts/beta") == beta_tip  # not reported on
        status = json.loads((state / "status.json").read_text())  # in --state-dir
        assert status["last_run"]["source_sha"] == merged
        assert status["hosts"]["alpha"]["last_apply"]["result"] == "converged"
        assert status["hosts"]["beta"]["plan"]["action"] == "wait"
        assert not (tmp_path / "configured-state").exists()  # --state-dir, not the config's

        r = subprocess.run(["sh", str(SCRIPT), "wait"], cwd=scene.checkout, env=env,
                           capture_output=True, text=True, timeout=120)

        assert r.returncode == 1
        assert re.search(f"--wait-for {merged[:12]}: after [0-9]+s, 1 of 2 host\\(s\\) have not "
                         f"checked it: beta \\(checked {base_report[:12]}\\)", r.stderr), r.stderr
        assert CANARY not in r.stdout + r.stderr
    finally:
        shutil.rmtree(state, ignore_errors=True)


def beta_report_by_its_own_agent(scene: Scene, tmp_path: Path) -> str:
    """Make beta's newest report its own agent's (checked_by pet-beta), as that agent would
    push it; return the source commit it checked."""
    clone = tmp_path / "beta-reports"
    git("clone", "--quiet", "--branch", "petkeeper/hosts/beta", scene.remote.url, str(clone))
    path = clone / "hosts" / "beta.yml"
    text = path.read_text()
    checked_by = re.search(r"^checked_by: (.+)$", text, re.MULTILINE)
    assert checked_by, text
    path.write_text(text.replace(checked_by.group(0), "checked_by: pet-beta"))
    git("-C", str(clone), "-c", "user.name=beta", "-c", "user.email=beta@test.invalid",
        "commit", "--quiet", "-am", "beta: drifted (its own agent)")
    git("-C", str(clone), "push", "--quiet", "origin", "HEAD:petkeeper/hosts/beta")
    source = re.search(r"^source_sha: ([0-9a-f]{40})$", text, re.MULTILINE)
    assert source, text
    return source.group(1)
