"""operate/fleet: the fleet view over what the reports say, with a set clock and inventory."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.operate.fleet import FleetInput, build_fleet, render_fleet

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
HEAD = "9f0e1d2c3b4a" + "0" * 28
OLD = "2a215dff1786" + "0" * 28
DAY = 86400.0


def found(host: str, status: str = "clean", age: float = 600, source: str = HEAD,
          **extra: Any) -> dict[str, Any]:
    """A HostReports.as_dict() whose report is AGE seconds old."""
    changes = [{"play": "p", "role": "motd", "task": "Write motd", "module": "copy",
                "diff": "-a\n+b\n", "check_blind": False}] if status == "drifted" else []
    report = {"schema": 2, "host": host, "status": status, "fingerprint": "f" * 64,
              "message": extra.pop("message", None), "changes": changes, "source_sha": source,
              "run_id": "r", "checked_at": (NOW - timedelta(seconds=age)).isoformat(),
              "checked_by": "agent", **extra.pop("report", {})}
    return {"host": host, "branch": f"petkeeper/hosts/{host}", "commit": "c" * 40,
            "date": report["checked_at"], "report": report, "apply": extra.pop("apply", None),
            "approval": None, "trust": extra.pop("trust", None),
            "problem": extra.pop("problem", None)}


def view(*hosts: dict[str, Any], stale: float = 2 * DAY,
         inventory: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return build_fleet(hosts, FleetInput(NOW, stale, "main", HEAD, "file:///srv/pets.git",
                                         inventory))


def statuses(v: dict[str, Any]) -> dict[str, str]:
    return {r["host"]: r["status"] for r in v["hosts"]}


def test_each_host_shows_its_reported_status_and_the_exit_code_follows_check():
    assert view(found("a"), found("b"))["exit_code"] == 0
    drift = view(found("a"), found("b", "drifted"))
    assert statuses(drift) == {"a": "clean", "b": "drifted"} and drift["exit_code"] == 2
    for bad in ("failed", "unreachable", "unknown"):
        assert view(found("a", "drifted"), found("b", bad))["exit_code"] == 1
    assert view()["exit_code"] == 1  # no host at all is not "all clean"


def test_a_report_older_than_the_threshold_is_stale_however_clean_it_was():
    v = view(found("fresh", age=DAY), found("dead", age=2 * DAY + 1))

    assert statuses(v) == {"fresh": "clean", "dead": "stale"}
    assert v["hosts"][0]["reported_status"] == "clean"  # what it said, kept
    assert v["exit_code"] == 1
    assert statuses(view(found("dead", age=2 * DAY + 1), stale=3 * DAY)) == {"dead": "clean"}


def test_inventory_hosts_without_a_report_are_missing_and_reports_it_lacks_are_retired():
    v = view(found("web1"), found("old1", "drifted"),
             inventory={"web1": ["web"], "web2": ["web"], "db1": ["db"]})

    assert statuses(v) == {"db1": "missing", "web1": "clean", "web2": "missing"}
    assert [r["host"] for r in v["retired"]] == ["old1"]
    assert v["summary"] == {"clean": 1, "missing": 2}  # the retired do not count
    assert v["exit_code"] == 1


def test_a_retired_host_neither_counts_nor_changes_the_exit_code():
    v = view(found("web1"), found("old1", "failed"), inventory={"web1": ["web"]})

    assert v["exit_code"] == 0 and v["summary"] == {"clean": 1}


def test_a_group_is_as_bad_as_its_worst_host():
    v = view(found("web1"), found("web2", "drifted"), found("db1", "unreachable"),
             inventory={"web1": ["web", "prod"], "web2": ["web", "prod"], "db1": ["prod"],
                        "db2": ["db"]})

    assert {g["group"]: (g["status"], g["hosts"]) for g in v["groups"]} == {
        "web": ("drifted", 2), "prod": ("unreachable", 3), "db": ("missing", 1)}
    assert v["group_rule"].startswith("a group is as bad as its worst host: clean < drifted")
    assert "groups (a group is as bad as its worst host" in render_fleet(v)


def test_an_untrusted_or_unreadable_report_is_never_its_claimed_status():
    trust = {"trusted": False, "signer": "web2", "reason": "signed by the key of web2"}
    v = view(found("web1", trust=trust), found("web3", problem="hosts/web3.yml: not valid YAML"))

    assert statuses(v) == {"web1": "untrusted", "web3": "unreadable"}
    assert v["problems"] == ["hosts/web3.yml: not valid YAML"] and v["exit_code"] == 1
    line = render_fleet(v).splitlines()[0]
    assert line.startswith("web1: untrusted (last report: clean)")
    assert "untrusted: signed by the key of web2" in line


def test_one_line_per_host_with_plan_behind_pause_refusal_and_last_apply():
    plan = {"id": "30c4aa367513c4ee", "action": "wait", "mode": "approve", "rule": "default",
            "reason": "awaiting approval: petkeeper approve 30c4aa367513c4ee",
            "approved_by": None}
    pause = {"by": "alice", "at": "2026-11-25T10:00:00+00:00", "reason": "disks", "checks": False}
    applied = {"plan_id": "8381b01fc31e59fe", "result": "converged", "approved_by": "bob",
               "finished": "2026-11-24T21:56:11+00:00"}
    refused = "source commit 9f0e1d2c3b4a refused: ansible.cfg: [defaults] log_path: not allowed"
    v = view(found("beta", "drifted", age=180, source=OLD, report={
        "plan": plan, "paused": pause, "source_refused": refused}, apply=applied))

    assert render_fleet(v).splitlines()[0] == (
        "beta: drifted, 1 change; checked 3m ago at 2a215dff1786 (behind main 9f0e1d2c3b4a); "
        "plan 30c4aa367513c4ee [wait] awaiting approval; approve: petkeeper approve "
        "30c4aa367513c4ee --via-git; paused by alice since 2026-11-25T10:00:00+00:00: disks; "
        f"source head refused: {refused}; last apply 2026-11-24T21:56:11+00:00: converged "
        "(plan 8381b01fc31e59fe, approved by bob)")
    row = v["hosts"][0]
    assert row["behind"]
    assert row["plan"]["approve"] == "petkeeper approve 30c4aa367513c4ee --via-git"


def test_an_approved_plan_waiting_for_its_window_offers_no_approve_command():
    plan = {"id": "30c4aa367513c4ee", "action": "wait", "mode": "approve", "rule": "default",
            "reason": "approved by alice; outside maintenance windows", "approved_by": "alice"}
    v = view(found("beta", "drifted", report={"plan": plan}))

    assert v["hosts"][0]["plan"]["approve"] is None
    assert "--via-git" not in render_fleet(v)


@pytest.mark.parametrize("hostile", ["\x1b[2J\x1b[31mclean", "web\nfake: clean", "a\rb\x07"])
def test_host_text_reaches_the_terminal_without_control_characters_or_line_breaks(hostile):
    v = view(found(hostile, "unknown", message=hostile, report={"status": hostile}))

    text = render_fleet(v)
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert len(text.splitlines()[0].split(": ", 1)) == 2
    assert v["hosts"][0]["status"] == "unknown"  # a status no report may claim


def test_the_json_view_is_versioned_and_round_trips():
    v = view(found("a"), found("b", "drifted"), inventory={"a": ["g"], "b": ["g"]})

    assert v["schema"] == 1
    assert json.loads(json.dumps(v)) == v
    assert set(v) == {"schema", "generated_at", "source", "stale_after", "hosts", "retired",
                      "summary", "groups", "group_rule", "exit_code", "problems"}
