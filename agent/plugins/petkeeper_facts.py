"""Ansible callback plugin, loaded into ansible-playbook by agent.adapters.runner.

ansible-runner's events leave out four facts that drift detection needs: why a task was
skipped (a `when:` that is false, or a module that cannot run in check mode), whether a `no_log`
task changed anything (its whole result is censored), a changed task's tags (for the policy),
and whether a changed command had `creates` or `removes` to predict its outcome in check mode
(results carried the module's arguments in `invocation` until ansible-core 2.21 stopped sending
them). This plugin writes exactly those facts,
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
        record = {"host": result._host.get_name(), "task_uuid": result._task._uuid,
                  "tags": sorted(str(t) for t in result._task.tags), **facts}
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()

    def v2_runner_on_skipped(self, result) -> None:
        res = result._result
        items = res.get("results") or []
        conditional = "false_condition" in res or (
            bool(items) and all(isinstance(i, dict) and "false_condition" in i for i in items))
        self._write(result, event="skipped", conditional=conditional)

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
