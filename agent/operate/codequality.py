"""GitLab's Code Quality report of a preview (a JSON list of issues: description,
check_name, fingerprint, severity, location.path and location.lines.begin), one issue per
change the head would make, at its task's file and line. GitLab shows the description as
text; terminal controls in it are shown as escapes (\\x1b)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from agent.core.delta import BASE_UNKNOWN, EXISTING, INTRODUCED
from agent.operate.junit import change_label
from agent.operate.output import terminal_safe

SEVERITY = {INTRODUCED: "major", BASE_UNKNOWN: "major", EXISTING: "minor"}
NO_FILE = "."  # a task outside the repository: the issue is the repository's


def split_task_path(task_path: str, folder: str = "") -> tuple[str, int]:
    """"FILE:LINE" as (FILE, LINE), FILE under FOLDER (the checked folder's place in the
    repository, where the CI system looks); (FOLDER or NO_FILE, 1) when not known."""
    path, _, line = (task_path or "").rpartition(":")
    if not path or not line.isdigit():
        return folder or NO_FILE, 1
    return (f"{folder}/{path}" if folder else path), max(int(line), 1)


def render_codequality(preview: Mapping[str, Any]) -> str:
    """Given preview data, return the Code Quality JSON document."""
    issues = []
    for name, host in preview["hosts"].items():
        for change in host.get("changes") or []:
            if change["kind"] not in SEVERITY:
                continue  # resolved: no longer an issue
            issues.append(_issue(name, change, preview.get("folder") or ""))
    return json.dumps(issues, indent=2) + "\n"


def _issue(host: str, change: Mapping[str, Any], folder: str) -> dict[str, Any]:
    path, line = split_task_path(change.get("task_path") or "", folder)
    blind = bool(change.get("check_blind"))
    what = "may change (check mode cannot tell)" if blind else "would change"
    identity = json.dumps([host, *(change.get(k) for k in ("play", "role", "task", "module",
                                                           "diff"))])
    return {
        "description": terminal_safe(f"{host}: {change['kind']}: {change_label(change)} "
                                     f"{what} the host"),
        "check_name": f"petkeeper-{change['kind'].replace(' ', '-')}",
        "fingerprint": hashlib.sha256(identity.encode()).hexdigest(),
        "severity": "info" if blind else SEVERITY[change["kind"]],
        "location": {"path": path, "lines": {"begin": line}},
    }
