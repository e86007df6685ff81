"""The inventory as Ansible reads it: ansible-inventory's listing, each host with its groups.

list_hosts runs ansible-inventory; parse_inventory_list and the rest are pure.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.adapters.process import Cancel, run_process
from agent.adapters.runner import path_with_venv, strict_env
from agent.core.schema import printable_key
from agent.errors import RepoError

INVENTORY_TIMEOUT = 120.0
# Ansible's words when a pattern of the limit matches nothing (an error under
# ANSIBLE_HOST_PATTERN_MISMATCH=error, though it still says "ignoring").
NO_MATCH = re.compile(r"Could not match supplied host pattern, ignoring: (.+)")


class NoHostMatches(RepoError):
    """A pattern of the limit matches no host or group of the inventory."""

    def __init__(self, pattern: str, inventory: str) -> None:
        self.pattern = pattern
        super().__init__(f"{inventory}: {pattern!r} matches no host or group of the inventory; "
                         "fix the limit")


@dataclass(frozen=True)
class Listing:
    """The hosts of an inventory: each with its groups, and with its variables as the inventory
    sets them (not templated: Ansible renders them at run time)."""

    groups: Mapping[str, tuple[str, ...]]
    hostvars: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def only(self, hosts: list[str]) -> Listing:
        return Listing({h: self.groups[h] for h in hosts},
                       {h: self.hostvars.get(h, {}) for h in hosts})


def list_hosts(tree: Path, inventory: Path, limit: str | None,
               vault_password_file: str | None = None,
               extra_env: Mapping[str, str] | None = None, *,
               cancel: Cancel = None) -> dict[str, tuple[str, ...]]:
    """Return the inventory's hosts matching LIMIT, each with every group it is in; RepoError
    if Ansible cannot parse the inventory or a pattern of LIMIT matches nothing; ProcessStopped
    (its scripts and all they started stopped) after INVENTORY_TIMEOUT or when CANCEL()
    turns true."""
    return dict(list_inventory(tree, inventory, limit, vault_password_file, extra_env,
                               cancel=cancel).groups)


def list_inventory(tree: Path, inventory: Path, limit: str | None,
                   vault_password_file: str | None = None,
                   extra_env: Mapping[str, str] | None = None, *,
                   cancel: Cancel = None) -> Listing:
    """list_hosts, with each host's variables."""
    argv = ["ansible-inventory", "-i", str(inventory), "--list"]
    if limit:
        argv += ["--limit", limit]
    if vault_password_file:
        argv += ["--vault-password-file", vault_password_file]
    env = {**os.environ, **strict_env(), **(extra_env or {}), "PATH": path_with_venv()}
    proc = run_process(argv, what=f"{_relative(inventory, tree)}: ansible-inventory",
                       timeout=INVENTORY_TIMEOUT, cancel=cancel, cwd=tree, env=env,
                       fix="check the inventory's dynamic sources (scripts, plugins)")
    if proc.returncode != 0:
        if limit and (m := NO_MATCH.search(proc.stderr)):
            raise NoHostMatches(m.group(1).strip().rstrip("."), _relative(inventory, tree))
        raise RepoError(f"{_relative(inventory, tree)}: {_first_error(proc.stderr)}; "
                        "fix the inventory or the limit (see: ansible-inventory -i FILE --list)")
    source = f"{_relative(inventory, tree)} (ansible-inventory --list)"
    try:
        data = json.loads(proc.stdout)
    except (ValueError, RecursionError):
        raise RepoError(f"{source}: printed no JSON listing; see what ansible-inventory --list "
                        "prints for this inventory") from None
    groups = parse_inventory_list(data, source)
    hostvars = data["_meta"].get("hostvars") if isinstance(data.get("_meta"), dict) else None
    return Listing(groups, {h: v for h, v in (hostvars or {}).items()
                            if h in groups and isinstance(v, dict)})


def parse_inventory_list(data: Any, source: str = "ansible-inventory --list"
                         ) -> dict[str, tuple[str, ...]]:
    """Given `ansible-inventory --list` JSON, return each host with all its groups (nested
    groups included, 'all' and 'ungrouped' left out); RepoError naming SOURCE when the JSON
    is not such a listing (a broken inventory plugin or script)."""
    def bad(problem: str) -> RepoError:
        return RepoError(f"{source}: {problem}; see what ansible-inventory --list prints for "
                         "this inventory")

    if not isinstance(data, dict):
        raise bad(f"expected a JSON object, got {type(data).__name__}")
    meta = data.get("_meta") or {}
    hostvars = (meta.get("hostvars") if isinstance(meta, dict) else None) or {}
    if not isinstance(meta, dict) or not isinstance(hostvars, dict):
        raise bad("_meta.hostvars is not a mapping of hosts")
    entries = {g: e or {} for g, e in data.items() if g != "_meta"}
    for g, e in entries.items():
        if not isinstance(e, dict) or not all(_names(e.get(k)) for k in ("hosts", "children")):
            raise bad(f"group {printable_key(g)}: expected hosts and children as lists of names")

    def members(group: str) -> set[str]:
        found: set[str] = set()
        todo, seen = [group], set()
        while todo:  # not recursive: a deep chain of child groups must not overflow the stack
            g = todo.pop()
            if g not in seen:
                seen.add(g)
                found.update(entries.get(g, {}).get("hosts") or ())
                todo.extend(entries.get(g, {}).get("children") or ())
        return found

    groups = {g: members(g) for g in entries if g not in ("all", "ungrouped")}
    # A host without variables is left out of hostvars: the groups name it.
    hosts = set(hostvars).union(*(e.get("hosts") or () for e in entries.values()))
    return {h: tuple(sorted(g for g, m in groups.items() if h in m)) for h in sorted(hosts)}


def _names(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _first_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln.removeprefix("[ERROR]:").strip() for ln in lines if ln.startswith("[ERROR]")]
    warnings = [ln.removeprefix("[WARNING]:").strip() for ln in lines
                if ln.startswith("[WARNING]") and "Failed to parse" in ln]
    text = "; ".join((warnings[:1] + errors[:1]) or lines[-1:] or ["ansible-inventory failed"])
    return text.rstrip(".")


def _relative(path: Path, tree: Path) -> str:
    try:
        return str(path.relative_to(tree))
    except ValueError:
        return str(path)
