"""Ansible callback plugin, loaded into ansible-playbook by agent.adapters.runner.

ansible-runner's events leave out four facts that drift detection needs: why a task was
skipped (a `when:` that is false, one that names `ansible_check_mode`, a loop with no items, a
task that is `changed_when: false`, or a module that cannot run in check mode), whether a
`no_log` task changed anything (its whole result is censored), a changed or failed task's tags
(for the policy), and whether a changed command had `creates` or `removes` to predict its
outcome in check mode (results carried the module's arguments in `invocation` until
ansible-core 2.21 stopped sending them). This plugin writes exactly those facts,
one JSON object a line, to the file named by PETKEEPER_FACTS_FILE: booleans and a short reason,
never a value, an argument or any output of a task.
"""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: petkeeper_facts
    type: aggregate
    short_description: Records skip reasons and no_log changed flags for Petkeeper
    description: Writes JSON lines to the file named by PETKEEPER_FACTS_FILE.
    requirements: [enabled by Petkeeper through ANSIBLE_CALLBACKS_ENABLED]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "petkeeper_facts"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        path = os.environ.get("PETKEEPER_FACTS_FILE")
        self._out = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def _write(self, result, **facts) -> None:
        if self._out is None:
            return
        # A task inherits its block's, role's and import's tags: the same one may come twice.
        record = {"host": result._host.get_name(), "task_uuid": result._task._uuid,
                  "tags": sorted({str(t) for t in result._task.tags}), **facts}
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()

    def v2_runner_on_skipped(self, result) -> None:
        res = result._result
        items = res.get("results") or []
        # The `when:` found false: the task's, or each item's (a loop skipped item by item).
        falses = [res["false_condition"]] if "false_condition" in res else \
            [i.get("false_condition") if isinstance(i, dict) else None for i in items]
        conditional = bool(falses) and None not in falses
        self._write(result, event="skipped", conditional=conditional,
                    reason=_skip_reason(result._task, res, falses if conditional else []))

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        if not ignore_errors:
            self._write(result, event="failed")

    def v2_runner_on_ok(self, result) -> None:
        changed = bool(result._result.get("changed"))
        if result._task.no_log or result._result.get("_ansible_no_log"):
            self._write(result, event="hidden", changed=changed)
        elif changed:
            self._write(result, event="changed", changed=True, predicted=_predicted(result))

    def v2_playbook_on_stats(self, stats) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def _predicted(result) -> bool:
    """Whether the task's (templated) arguments set creates or removes: a command module then
    decides in check mode whether it would run."""
    args = result._task.args or {}
    return bool(args.get("creates") or args.get("removes"))


def _skip_reason(task, res, falses) -> str:
    """Why TASK was skipped, in one word: no_items (a loop over nothing), check_mode (a false
    `when:` that names ansible_check_mode: the task is hidden from check mode), when (any other
    false `when:`), never_changes (`changed_when: false`) or module (check mode skipped it)."""
    if (task.loop is not None or task.loop_with) and not res.get("results") and not falses:
        return "no_items"
    if falses:
        return "check_mode" if any("ansible_check_mode" in str(f) for f in falses) else "when"
    if task.changed_when and all(str(c).strip().lower() in ("false", "no", "0")
                                 for c in task.changed_when):
        return "never_changes"
    return "module"
