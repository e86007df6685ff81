"""ansible-lint over the shipped playbooks and Molecule scenarios (settings in .ansible-lint)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_LINT = Path(sys.executable).parent / "ansible-lint"


def lint(*paths: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(cwd / "playbooks" / "roles"), NO_COLOR="1")
    return subprocess.run(
        [str(ANSIBLE_LINT), "--nocolor", *paths],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def test_playbooks_and_molecule_scenarios_pass_the_production_profile():
    result = lint("playbooks/", "molecule/")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "0 failure(s), 0 warning(s)" in output
    assert "Profile 'production' was required, and it passed" in output


def test_lint_fails_a_task_that_breaks_the_profile(tmp_path):
    """The gate can fail: a copy of the repo with one sloppy task does not pass."""
    shutil.copytree(ROOT / "playbooks", tmp_path / "playbooks")
    shutil.copy(ROOT / ".ansible-lint", tmp_path / ".ansible-lint")
    tasks = tmp_path / "playbooks" / "roles" / "baseline" / "tasks" / "main.yml"
    tasks.write_text(tasks.read_text() + "\n- shell: echo drift > /tmp/x\n")
    result = lint("playbooks/", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "name[missing]" in output
    assert "fqcn[action-core]" in output
