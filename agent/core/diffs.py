"""Ansible's diffs as unified diff text, with the run's own paths left out, so that the same
drift reads (and fingerprints) the same on every run. Pure functions over plain data."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from typing import Any

GENERATED_PATH = re.compile(r"\S*/\.ansible/tmp/\S*")


def render_diff(diff: Any, tree_root: str = "") -> str:
    """Given Ansible's diff (a dict, or a list of them), return unified diff text."""
    parts = diff if isinstance(diff, list) else [diff]
    out = []
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        if "prepared" in part:
            out.append(str(part["prepared"]).rstrip("\n") + "\n")
            continue
        if "before" not in part and "after" not in part:
            continue
        before, after = _as_text(part.get("before", "")), _as_text(part.get("after", ""))
        if before == after:
            continue
        a = _clean_path(str(part.get("before_header", "before")), tree_root)
        b = _clean_path(str(part.get("after_header", "after")), tree_root)
        lines = difflib.unified_diff(before.splitlines(keepends=True),
                                     after.splitlines(keepends=True), f"before: {a}",
                                     f"after: {b}")
        out.append("".join(_ensure_newline(line) for line in lines))
    return "".join(out)



def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"


def _clean_path(header: str, tree_root: str) -> str:
    if tree_root and header.startswith(tree_root.rstrip("/") + "/"):
        return header[len(tree_root.rstrip("/")) + 1:]
    return GENERATED_PATH.sub("(generated)", header)


def clean_text(text: str, tree_root: str) -> str:
    """TEXT (a message from a host) without the run's own paths: the tree's prefix, and
    Ansible's temporary files as (generated)."""
    if tree_root:
        text = text.replace(tree_root.rstrip("/") + "/", "")
    return GENERATED_PATH.sub("(generated)", text)


def _ensure_newline(line: str) -> str:
    return line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
