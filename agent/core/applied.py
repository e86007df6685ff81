"""What an apply changed, read from its run's events: each changed task of one host, with the
loop items that changed and the diff where Ansible gave one. Pure functions over plain data.

The apply record (applies/<host>.yml) lists them, so "the apply regenerated the SSH host key"
is in Git, not only on the host. A ``no_log`` task shows neither items nor diff (Ansible
censors them; the petkeeper_facts callback still says it changed).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agent.core.diffs import render_diff

MAX_ITEMS = 50  # a loop over a thousand packages lists the first ones and a count


def parse_applied(events: Iterable[Mapping[str, Any]], host: str, tree_root: str = "",
                  facts: Iterable[Mapping[str, Any]] = (),
                  mask: Callable[[str], str] = str) -> list[dict[str, Any]]:
    """Given the events (and callback facts) of the runs that applied to HOST, return each task
    that changed it, in order: role, task, module, the changed loop items (if a loop), the
    diff (if any), every text through MASK."""
    hidden = {str(f.get("task_uuid")) for f in facts
              if f.get("host") == host and f.get("changed")}
    changed = []
    for event in events:
        data = event.get("event_data") or {}
        if event.get("event") != "runner_on_ok" or data.get("host") != host:
            continue
        res = data.get("res") or {}
        censored = "censored" in res
        if not (res.get("changed") or (censored and str(data.get("task_uuid")) in hidden)):
            continue
        action = str(data.get("resolved_action") or data.get("task_action") or "")
        entry: dict[str, Any] = {"role": data.get("role") or None,
                                 "task": mask(str(data.get("task") or action)),
                                 "module": action}
        if not censored:
            entry.update(_details(res, tree_root, mask))
        changed.append(entry)
    return changed


def _details(res: Mapping[str, Any], tree_root: str, mask: Callable[[str], str]
             ) -> dict[str, Any]:
    results = res.get("results")
    details: dict[str, Any] = {}
    if isinstance(results, list):
        done = [r for r in results if isinstance(r, Mapping) and r.get("changed")]
        items = [mask(_label(r)) for r in done if "censored" not in r]
        if items:
            details["items"] = items[:MAX_ITEMS] + (
                [f"... and {len(items) - MAX_ITEMS} more"] if len(items) > MAX_ITEMS else [])
        diff = "".join(render_diff(r.get("diff"), tree_root) for r in done
                       if "censored" not in r)
    else:
        diff = render_diff(res.get("diff"), tree_root)
    if diff:
        details["diff"] = mask(diff)
    return details


def _label(item: Mapping[str, Any]) -> str:
    label = item.get("_ansible_item_label", item.get("item"))
    if isinstance(label, str):
        return label
    return json.dumps(label, sort_keys=True, default=str)
