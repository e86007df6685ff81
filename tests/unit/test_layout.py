"""The walls of the house (STYLE.md): which part of agent/ may import which, which module alone
speaks to each third-party library, and that only the command line's face prints."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent"
SHARED = {"agent.config", "agent.errors"}  # the configuration and the one error family
# What each part may import of agent/, besides itself and SHARED.
ALLOWED = {
    "core": set(),
    "adapters": {"core"},
    "cycle": {"core", "adapters"},
    "operate": {"core", "adapters", "cycle"},
    "daemon": {"core", "adapters", "cycle", "operate"},
    "onboard": {"core", "adapters", "cycle"},
}
# Third-party libraries with side effects (processes, threads, repositories), each behind its
# module(s); PyYAML and the standard library are plain data and may be used anywhere.
OWNERS = {
    "ansible_runner": {"agent.adapters.runner"},
    "ptyprocess": {"agent.adapters.runner"},  # ansible-runner's pty, closed there
    "git": {"agent.adapters.gitrepo"},
    "apscheduler": {"agent.core.cron", "agent.daemon.ticker"},
    "ansible": {"agent.adapters.vault", "agent.plugins.petkeeper_facts"},
    "apprise": {"agent.adapters.apprise_send"},
    "prometheus_client": {"agent.operate.metrics"},
    "paramiko": {"agent.adapters.ssh"},
    "inotify_simple": {"agent.daemon.watch"},
}
PRINTERS = {"agent.cli", "agent.demo", "agent.testhosts"}  # the faces: a command, the demo, a tool


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(AGENT.rglob("*.py")):
        parts = path.relative_to(AGENT.parent).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def imports(tree: ast.Module) -> set[str]:
    """Every module TREE imports, at the top or inside a function (lazy imports count too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = modules()


def part(name: str) -> str | None:
    pieces = name.split(".")
    return pieces[1] if len(pieces) > 2 and pieces[1] in ALLOWED else None


@pytest.mark.parametrize("name", sorted(n for n in MODULES if part(n)))
def test_each_part_imports_only_the_parts_below_it(name: str):
    mine = part(name)
    assert mine is not None
    may = ALLOWED[mine] | {mine}
    wrong = sorted(i for i in imports(MODULES[name]) if i.startswith("agent.") and
                   i in MODULES and i not in SHARED and part(i) not in may)
    assert not wrong, f"{name} ({mine}) may import only {sorted(may)} and {sorted(SHARED)}"


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_each_library_is_imported_by_its_own_modules_only(library: str):
    users = {name for name, tree in MODULES.items()
             if any(i == library or i.startswith(f"{library}.") for i in imports(tree))}
    assert users <= OWNERS[library], f"{sorted(users - OWNERS[library])} import {library}"


def test_only_the_faces_print():
    printing = {name for name, tree in MODULES.items() for node in ast.walk(tree)
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and
                node.func.id == "print"}
    assert printing <= PRINTERS, f"{sorted(printing - PRINTERS)} print; return text instead"


def test_the_layout_check_sees_every_part():
    """The walls above would pass vacuously if the parts were not found."""
    assert {part(n) for n in MODULES} >= set(ALLOWED)
    assert "agent.core.drift" in MODULES and "agent.cycle.steps" in MODULES
