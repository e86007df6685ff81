"""agent.operate.events: which events a cycle tells, once per transition (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agent.operate.events import cloud_event, find_events, masked, plain

SRC, SRC2 = "a" * 40, "b" * 40
WHEN = datetime(2026, 11, 25, 20, 36, 22, tzinfo=UTC)


def host(status: str, fingerprint: str = "fp1", changes: int = 1, message: str | None = None
         ) -> dict[str, Any]:
    return {"status": status, "fingerprint": fingerprint, "message": message,
            "changes": [{"play": "p", "role": "motd", "task": f"Task {i}", "module": "copy",
                         "diff": "-secret diff\n+new", "check_blind": False}
                        for i in range(changes if status == "drifted" else 0)]}


def plan(action: str = "wait", mode: str | None = "approve", plan_id: str = "plan1",
         source: str = SRC, approval: dict | None = None) -> dict[str, Any]:
    return {"plan_id": plan_id, "source_sha": source, "fingerprint": "fp1", "status": "drifted",
            "action": action, "reason": "awaiting approval: petkeeper approve plan1",
            "mode": mode, "rule": "default", "decisions": [], "approval": approval}


def record(hosts: dict[str, dict], plans: dict[str, dict] | None = None, source: str = SRC,
           applies: list | None = None, **extra: Any) -> dict[str, Any]:
    return {"run_id": "run", "source_sha": source, "hosts": hosts, "applies": applies or [],
            "plans": plans if plans is not None else {h: plan() if r["status"] == "drifted"
                                                      else plan("nothing", None)
                                                      for h, r in hosts.items()},
            "source_rejected": None, "applies_held": None, **extra}


def run(*records: dict[str, Any], memory: dict | None = None) -> list[list[tuple[str, Any]]]:
    """The (type, subject) of the events of each record in turn, memory carried over."""
    told: dict = memory or {}
    out = []
    for r in records:
        events, told = find_events(r, told)
        out.append([(e.type, e.subject) for e in events])
    return out


def test_the_same_drift_is_told_once_across_no_change_cycles():
    drifted = record({"web1": host("drifted")})
    assert run(drifted, drifted, drifted) == [
        [("drift.detected", "web1"), ("approval.pending", "web1")], [], []]


def test_a_changed_drift_is_told_again_with_its_new_plan():
    first = record({"web1": host("drifted", "fp1")})
    changed = record({"web1": host("drifted", "fp2")}, {"web1": plan(plan_id="plan2")})
    assert run(first, changed)[1] == [("drift.detected", "web1"), ("approval.pending", "web1")]


def test_an_approval_commit_moves_the_head_but_not_the_plan_source_so_nothing_is_told():
    first = record({"web1": host("drifted")})
    # The approval commit is the new head; the plan still binds the commit before it, and
    # with the approval the plan is no longer pending.
    approved = record({"web1": host("drifted")}, {"web1": plan(
        "apply", approval={"approver": "alice"})}, source=SRC2)
    assert run(first, approved)[1] == []


def test_a_new_source_commit_with_the_same_drift_is_a_new_drift():
    first = record({"web1": host("drifted")})
    moved = record({"web1": host("drifted")}, {"web1": plan(source=SRC2, plan_id="plan2")},
                   source=SRC2)
    assert run(first, moved)[1] == [("drift.detected", "web1"), ("approval.pending", "web1")]


def test_a_resolved_drift_is_told_once_and_a_clean_host_never():
    drifted, clean = record({"web1": host("drifted")}), record({"web1": host("clean")})
    assert run(clean, drifted, clean, clean) == [
        [], [("drift.detected", "web1"), ("approval.pending", "web1")],
        [("drift.resolved", "web1")], []]


def test_an_unreachable_host_is_told_once_and_its_drift_is_not_told_again_after():
    drifted = record({"web1": host("drifted")})
    gone = record({"web1": host("unreachable", message="timed out at 12:01")})
    gone_later = record({"web1": host("unreachable", message="timed out at 12:16")})
    assert run(drifted, gone, gone_later, drifted)[1:] == [[("host.unreachable", "web1")], [], []]


def test_a_failed_or_unknown_host_is_told_as_failed_once():
    failed = record({"web1": host("failed", message="task failed")})
    unknown = record({"web1": host("unknown")})
    assert run(failed, failed, unknown) == [[("host.failed", "web1")], [],
                                            [("host.failed", "web1")]]


def test_a_plan_waiting_for_a_window_or_auto_is_not_an_approval_pending():
    window = record({"web1": host("drifted")}, {"web1": plan(
        approval={"approver": "alice"}, plan_id="p")})
    auto = record({"web2": host("drifted")}, {"web2": plan(mode="auto")})
    assert run(window) == [[("drift.detected", "web1")]]
    assert run(auto) == [[("drift.detected", "web2")]]


def test_applies_are_told_as_they_happen_and_a_changed_drift_is_not_an_apply():
    def apply(result: str, tests: dict | None = None) -> dict[str, Any]:
        return {"host": "web1", "plan_id": "plan1", "source_sha": SRC, "result": result,
                "approved_by": "alice", "approval": None, "before_status": "drifted",
                "after_status": "clean", "leftovers": [], "message": "", "tests": tests}
    r = record({"web1": host("clean")}, applies=[
        apply("converged"), apply("not converged"), apply("interrupted"),
        apply("apply failed"), apply("drift changed since approval"),
        apply("converged", {"passed": False})])
    assert [t for t, _ in run(r)[0]] == ["apply.succeeded", "apply.failed", "apply.failed",
                                         "apply.failed", "apply.failed"]
    events, _ = find_events(r, {})
    assert events[0].data["apply"]["approved_by"] == "alice"
    assert events[-1].data["apply"]["tests_passed"] is False


def test_source_and_agent_events_are_told_once_per_change():
    rejected = record({}, source_rejected="source commit 1234 is not trusted")
    held = record({}, applies_held="source rewound: 5678 does not descend from 1234")
    held_newer = record({}, applies_held="source rewound: 9abc does not descend from 1234")
    assert run(rejected, rejected, held, held_newer, record({}), held) == [
        [("source.rejected", None)], [], [("source.rewound", None)], [], [],
        [("source.rewound", None)]]


def test_a_stall_is_told_once_and_again_after_a_good_cycle_but_a_passing_error_changes_nothing():
    told: dict = {}
    seen = []
    for error, stalled in (("repo.branch: gone", True), ("repo.branch: gone", True),
                           ("network down", False), ("repo.branch: gone", True), (None, False),
                           ("repo.branch: gone", True)):
        events, told = find_events({"run_id": "r", "source_sha": None}, told, error, stalled)
        seen.append([e.type for e in events])
    assert seen == [["agent.stalled"], [], [], [], [], ["agent.stalled"]]


def test_a_cycle_that_stopped_before_deciding_keeps_the_pending_approval_told():
    first = record({"web1": host("drifted")})
    undecided = record({"web1": host("drifted")}, plans={})
    assert run(first, undecided, first)[1:] == [[], []]


def test_the_event_carries_the_report_summary_but_no_diff():
    r = record({"web1": host("drifted", changes=2)}, report_commits={"web1": "c0ffee"})
    [drift, _] = find_events(r, {})[0]
    assert drift.data["changes"] == [
        {"role": "motd", "task": "Task 0", "module": "copy", "check_blind": False},
        {"role": "motd", "task": "Task 1", "module": "copy", "check_blind": False}]
    assert drift.data["report_commit"] == "c0ffee"
    assert drift.data["plan"]["id"] == "plan1" and drift.data["plan"]["action"] == "wait"
    assert drift.data["source_sha"] == SRC and "diff" not in str(drift.data)


def test_a_partial_checks_failure_is_told_with_its_error():
    report = host("drifted", changes=1, message="partial check: 'Task 1' failed in check mode")
    report["partial"] = True
    report["changes"].append({"play": "p", "role": "motd", "task": "Task 1", "module": "file",
                              "diff": "", "check_blind": True,
                              "error": "chown failed: failed to look up user bob",
                              "message": "may pass once that change is applied"})
    [drift, _] = find_events(record({"web1": report}), {})[0]
    assert drift.data["changes"][1] == {
        "role": "motd", "task": "Task 1", "module": "file", "check_blind": True,
        "error": "chown failed: failed to look up user bob"}
    assert "error" not in drift.data["changes"][0]


def test_a_cloud_event_is_structured_mode_json_with_every_text_masked():
    r = record({"web1": host("failed", message="cannot log in with hunter22")})
    [event] = find_events(r, {})[0]
    ce = cloud_event(event, "agent1", WHEN, lambda t: t.replace("hunter22", "<secret:1>"))
    assert {k: ce[k] for k in ("specversion", "source", "type", "subject", "time")} == {
        "specversion": "1.0", "source": "petkeeper://agent1", "type": "org.petkeeper.host.failed",
        "subject": "web1", "time": "2026-11-25T20:36:22Z"}
    assert ce["data"]["message"] == "cannot log in with <secret:1>"
    assert ce["id"] != cloud_event(event, "agent1", WHEN, str)["id"]


def test_masked_reaches_nested_lists_and_keys_and_plain_drops_control_characters():
    assert masked({"k s": [{"x": "s"}], "n": 1}, lambda t: t.replace("s", "*")) == \
        {"k *": [{"x": "*"}], "n": 1}
    assert plain("a\x1b[31mred\x07\nnext\x9b  line") == "a [31mred next line"
