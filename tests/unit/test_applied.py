"""agent.core.applied: what an apply changed, from its run's events (issue 22, item 9)."""

from __future__ import annotations

from typing import Any

from agent.core.applied import MAX_ITEMS, parse_applied


def ok(task: str, res: dict[str, Any], host: str = "web1", role: str | None = "base",
       uuid: str = "u1") -> dict[str, Any]:
    return {"event": "runner_on_ok", "event_data": {
        "host": host, "task": task, "role": role, "task_uuid": uuid,
        "resolved_action": "ansible.builtin.copy", "res": res}}


def test_each_changed_task_is_listed_with_its_changed_items_and_diff_in_order():
    events = [
        ok("Unchanged", {"changed": False}),
        ok("Write motd", {"changed": True, "diff": {
            "before": "Hi\nedited by hand\n", "after": "Hi\n", "before_header": "/etc/motd",
            "after_header": "/root/.ansible/tmp/ansible-tmp-1/source"}}),
        ok("Create the admins", {"changed": True, "results": [
            {"changed": True, "item": {"name": "alice"}, "_ansible_item_label": "alice"},
            {"changed": False, "item": "bob"},
            {"changed": True, "item": {"name": "carol", "uid": 1003}}]}),
        ok("Write motd", {"changed": True}, host="web2"),
        {"event": "runner_on_skipped", "event_data": {"host": "web1", "task": "Skipped"}},
    ]

    changed = parse_applied(events, "web1")

    assert [c["task"] for c in changed] == ["Write motd", "Create the admins"]
    assert changed[0]["diff"] == ("--- before: /etc/motd\n+++ after: (generated)\n"
                                  "@@ -1,2 +1 @@\n Hi\n-edited by hand\n")
    assert changed[1] == {"role": "base", "task": "Create the admins",
                          "module": "ansible.builtin.copy",
                          "items": ["alice", '{"name": "carol", "uid": 1003}']}


def test_a_no_log_change_is_listed_without_items_or_diff_and_secrets_are_masked():
    events = [ok("Write the token", {"censored": "the output has been hidden"}, uuid="n1"),
              ok("Set hunter22's shell", {"changed": True, "results": [
                  {"changed": True, "_ansible_item_label": "hunter22"}]}, uuid="n2")]
    facts = [{"task_uuid": "n1", "host": "web1", "changed": True}]

    changed = parse_applied(events, "web1", facts=facts,
                            mask=lambda t: t.replace("hunter22", "<secret:1>"))

    assert changed == [
        {"role": "base", "task": "Write the token", "module": "ansible.builtin.copy"},
        {"role": "base", "task": "Set <secret:1>'s shell", "module": "ansible.builtin.copy",
         "items": ["<secret:1>"]}]
    assert parse_applied(events[:1], "web1") == []  # not said to have changed: not listed


def test_a_long_loop_lists_its_first_items_and_a_count():
    results = [{"changed": True, "item": f"pkg{i}"} for i in range(MAX_ITEMS + 7)]
    [changed] = parse_applied([ok("Remove packages", {"changed": True, "results": results})],
                              "web1")
    assert changed["items"][-1] == "... and 7 more" and len(changed["items"]) == MAX_ITEMS + 1
