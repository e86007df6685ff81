"""CI's second leg names its integration tests one by one (.ci/run, LEG2_TESTS): each must
still exist, or pytest collects nothing for the leg (exit 5) after a rename."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def leg2_tests() -> list[str]:
    """The node ids of LEG2_TESTS, with .ci/run's variables ($APPLY, $ACCEL) expanded."""
    script = (REPO / ".ci" / "run").read_text()
    variables = dict(re.findall(r"^(\w+)=(tests/\S+\.py)", script, re.MULTILINE))
    block = re.search(r"^LEG2_TESTS=\((.*?)\)$", script, re.MULTILINE | re.DOTALL)
    assert block, ".ci/run no longer sets LEG2_TESTS=(...)"
    words = re.findall(r'"([^"]+)"|(\S+)', block.group(1))
    return [re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], quoted or bare)
            for quoted, bare in words]


def test_every_test_the_second_leg_names_exists() -> None:
    ids = leg2_tests()
    assert any("::" in node for node in ids) and "tests/unit" in ids, ids
    for node in ids:
        path, _, name = node.partition("::")
        assert (REPO / path).exists(), f".ci/run LEG2_TESTS: {path} does not exist"
        if name:
            tree = ast.parse((REPO / path).read_text())
            defined = {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}
            assert name in defined, f".ci/run LEG2_TESTS: {path} has no {name} (renamed?)"
