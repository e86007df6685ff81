"""examples/ci/: each pipeline calls the one script, examples/ci/petkeeper-ci.sh (which
tests/integration/test_ci.py runs with each CI system's environment)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import GitRemote, git
from tests.unit.test_fleet_wait import report

FOLDER = Path(__file__).resolve().parents[2] / "examples" / "ci"


def test_example_pipelines_call_the_one_script():
    folder = FOLDER
    workflow = yaml.safe_load((folder / "github-actions.yml").read_text())
    on = workflow.get("on", workflow.get(True))
    assert "pull_request" in on and "pull_request_target" not in on
    steps = [s.get("run", "") for job in workflow["jobs"].values() for s in job["steps"]]
    gitlab = yaml.safe_load((folder / ".gitlab-ci.yml").read_text())
    scripts = [line for job in gitlab.values() if isinstance(job, dict)
               for line in job.get("script", [])]
    jenkins = (folder / "Jenkinsfile").read_text()
    for mode in ("preview", "wait", "run"):  # after merge: wait for the agents, or run
        assert any(f"examples/ci/petkeeper-ci.sh {mode}" in s for s in steps)
        assert any(f"examples/ci/petkeeper-ci.sh {mode}" in s for s in scripts)
        assert f"sh 'sh examples/ci/petkeeper-ci.sh {mode}'" in jenkins


def test_github_workflow_never_runs_a_fork_with_secrets():
    text = (FOLDER / "github-actions.yml").read_text()
    assert "pull_request_target" not in text.replace("never pull_request_target", "")
    workflow = yaml.safe_load(text)
    assert "github.event.pull_request.head.repo.full_name == github.repository" in \
        workflow["jobs"]["preview"]["if"]
    assert workflow["jobs"]["apply"]["environment"] == "pets"
    # After merge, either the agents apply (wait) or the pipeline does (apply): never both.
    assert workflow["jobs"]["wait"]["if"] == \
        "github.event_name == 'push' && vars.PETKEEPER_APPLY != 'pipeline'"
    assert workflow["jobs"]["apply"]["if"] == \
        "github.event_name == 'push' && vars.PETKEEPER_APPLY == 'pipeline'"


@pytest.fixture
def source(tmp_path: Path) -> GitRemote:
    return GitRemote(tmp_path / "git")


MERGED = {"github": ("GITHUB_ACTIONS", "true", "GITHUB_SHA", "GITHUB_REF_NAME"),
          "gitlab": ("GITLAB_CI", "true", "CI_COMMIT_SHA", "CI_COMMIT_BRANCH"),
          "jenkins": ("JENKINS_URL", "http://127.0.0.1:9/", "GIT_COMMIT", "BRANCH_NAME")}


def ci_env(tmp_path: Path, system: str, merged: str) -> dict[str, str]:
    """The environment SYSTEM sets in a job after a merge to main."""
    flag, value, commit, branch = MERGED[system]
    env = {k: v for k, v in os.environ.items()
           if k not in ("GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "PETKEEPER_CONFIG")}
    return env | {"PETKEEPER": str(Path(sys.executable).parent / "petkeeper"),
                  "XDG_CACHE_HOME": str(tmp_path / "cache"), "PETKEEPER_TIMEOUT": "1s",
                  flag: value, commit: merged, branch: "main"}


@pytest.mark.parametrize("system", ["github", "gitlab", "jenkins"])
def test_the_script_waits_for_the_commit_each_ci_system_says_was_merged(
        tmp_path: Path, source: GitRemote, system: str):
    """petkeeper-ci.sh wait, with the environment each CI system sets after a merge: the commit
    it names is the one waited for (not the branch's head: another merge came after it), the
    checkout's origin is the repo."""
    merged = source.commit({}, "merged")
    newer = source.commit({}, "newer")
    report(tmp_path, source, "web1", merged)
    checkout = tmp_path / "checkout"
    git("clone", "--quiet", f"file://{source.bare}", str(checkout))

    r = subprocess.run(["sh", str(FOLDER / "petkeeper-ci.sh"), "wait"], cwd=checkout,
                       env=ci_env(tmp_path, system, merged), capture_output=True, text=True,
                       timeout=120)

    assert r.returncode == 0, r.stderr
    assert re.fullmatch(f"every host checked {merged[:12]} \\(or a later commit\\) after "
                        "[0-9]+s\n", r.stderr)
    assert r.stdout.startswith("web1: clean, 0 changes; checked ") and newer[:12] in r.stdout


def test_the_script_waits_for_the_hosts_of_the_checkouts_inventory(tmp_path: Path,
                                                                   source: GitRemote):
    """A host of the inventory with no report yet, and one whose agent checked an older
    commit: the wait times out naming both, exit 1."""
    old = source.commit({}, "old")
    merged = source.commit({}, "merged")
    report(tmp_path, source, "web1", merged)
    report(tmp_path, source, "web2", old)
    checkout = tmp_path / "checkout"
    git("clone", "--quiet", f"file://{source.bare}", str(checkout))
    (checkout / "inventory").mkdir()
    (checkout / "inventory/hosts.yml").write_text(
        yaml.safe_dump({"all": {"hosts": {"web1": None, "web2": None, "web3": None}}}))

    r = subprocess.run(["sh", str(FOLDER / "petkeeper-ci.sh"), "wait"], cwd=checkout,
                       env=ci_env(tmp_path, "github", merged), capture_output=True, text=True,
                       timeout=120)

    assert r.returncode == 1
    assert re.search(f"petkeeper: error: fleet: --wait-for {merged[:12]}: after [0-9]+s, 2 of "
                     f"3 host\\(s\\) have not checked it: web2 \\(checked {old[:12]}\\), web3 "
                     "\\(no report yet\\)", r.stderr), r.stderr
    assert "web3: missing" in r.stdout
