"""The code's own gates, in the test run so that CI keeps them: ruff over everything Python,
mypy over agent/ (settings in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing_in_agent_tests_and_bench():
    proc = run(sys.executable, "-m", "ruff", "check", "--no-cache", "agent", "tests", "bench")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_finds_no_type_error_in_agent():
    proc = run(sys.executable, "-m", "mypy", "--cache-dir", "/dev/null")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no issues found" in proc.stdout
