"""examples/ci/: each pipeline calls the one script, examples/ci/petkeeper-ci.sh (which
tests/integration/test_ci.py runs with each CI system's environment)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

FOLDER = Path(__file__).resolve().parents[2] / "examples" / "ci"


def test_example_pipelines_call_the_one_script():
    folder = FOLDER
    workflow = yaml.safe_load((folder / "github-actions.yml").read_text())
    on = workflow.get("on", workflow.get(True))
    assert "pull_request" in on and "pull_request_target" not in on
    steps = [s.get("run", "") for job in workflow["jobs"].values() for s in job["steps"]]
    assert any("examples/ci/petkeeper-ci.sh preview" in s for s in steps)
    assert any("examples/ci/petkeeper-ci.sh run" in s for s in steps)
    gitlab = yaml.safe_load((folder / ".gitlab-ci.yml").read_text())
    scripts = [line for job in gitlab.values() if isinstance(job, dict)
               for line in job.get("script", [])]
    assert any("examples/ci/petkeeper-ci.sh preview" in s for s in scripts)
    assert "examples/ci/petkeeper-ci.sh preview" in (folder / "Jenkinsfile").read_text()


def test_github_workflow_never_runs_a_fork_with_secrets():
    text = (FOLDER / "github-actions.yml").read_text()
    assert "pull_request_target" not in text.replace("never pull_request_target", "")
    workflow = yaml.safe_load(text)
    assert "github.event.pull_request.head.repo.full_name == github.repository" in \
        workflow["jobs"]["preview"]["if"]
    assert workflow["jobs"]["apply"]["environment"] == "pets"


def test_the_script_is_valid_posix_sh_and_refuses_an_unknown_mode():
    subprocess.run(["sh", "-n", str(FOLDER / "petkeeper-ci.sh")], check=True)
    r = subprocess.run(["sh", str(FOLDER / "petkeeper-ci.sh"), "deploy"], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "unknown mode 'deploy'" in r.stderr
