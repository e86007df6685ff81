"""agent.operate.output: what people read on a terminal after `check` and `status`."""

from __future__ import annotations

from typing import Any

import pytest

from agent.operate.output import render_check, render_pause, render_plan, render_status

FP = "a547283f08a3a78e1f2887dd23ac2248b5ccdbed8f51b937fbfc8aa81f3fa1e4"
SHA = "8f14e45fceea167a5a36dedd4bea2543b2c1e7c8"
MOTD = {"play": "Baseline", "role": "base", "task": "Write motd",
        "module": "ansible.builtin.copy", "check_blind": False,
        "diff": "--- before: /etc/motd\n+++ after: roles/base/files/motd\n@@ -1 +1 @@\n"
                "-Hi\n+Welcome\n"}
PROBE = {"play": "Baseline", "role": None, "task": "Run a command",
         "module": "ansible.builtin.command", "check_blind": True, "diff": ""}


def check_json(**extra: Any) -> dict[str, Any]:
    return {"run_id": "20261125T203622Z-a1b2c3", "source_sha": SHA,
            "started": "2026-11-25T20:36:22+00:00", "fetch_error": None,
            "hosts": {
                "web1": {"status": "drifted", "fingerprint": FP, "message": None,
                         "changes": [MOTD, PROBE]},
                "db1": {"status": "clean", "fingerprint": "0" * 64, "message": None,
                        "changes": []},
                "ghost": {"status": "unreachable", "fingerprint": "f" * 64,
                          "message": "Failed to connect to the host via ssh", "changes": []},
            },
            "reports": None, **extra}


# --- render_check ----------------------------------------------------------------------------

def test_check_output_reads_like_a_plan_with_each_host_its_changes_and_diffs():
    assert render_check(check_json()) == "\n".join([
        f"web1: drifted (1 change, 1 check-blind)  [fingerprint {FP[:12]}]",
        "  ~ base | Write motd (ansible.builtin.copy)",
        "      --- before: /etc/motd",
        "      +++ after: roles/base/files/motd",
        "      @@ -1 +1 @@",
        "      -Hi",
        "      +Welcome",
        "  ? Run a command (ansible.builtin.command)  (check mode cannot tell)",
        f"db1: clean  [fingerprint {'0' * 12}]",
        f"ghost: unreachable  [fingerprint {'f' * 12}]",
        "    Failed to connect to the host via ssh",
        "",
        f"1 clean, 1 drifted, 1 unreachable. Source {SHA[:12]}, run 20261125T203622Z-a1b2c3.",
    ])


def test_check_output_without_color_has_no_escape_codes():
    assert "\x1b" not in render_check(check_json(), color=False)


def test_check_output_with_color_paints_status_and_diff_lines_but_not_headers():
    text = render_check(check_json(), color=True)

    assert "web1: \x1b[33mdrifted\x1b[0m" in text
    assert "db1: \x1b[32mclean\x1b[0m" in text and "ghost: \x1b[31munreachable\x1b[0m" in text
    assert "      \x1b[31m-Hi\x1b[0m\n" in text and "      \x1b[32m+Welcome\x1b[0m\n" in text
    assert "      \x1b[36m@@ -1 +1 @@\x1b[0m\n" in text
    assert "      --- before: /etc/motd\n" in text and "      +++ after: roles/" in text


def test_check_output_with_no_hosts_says_so():
    assert render_check(check_json(hosts={})).endswith(
        f"\nno hosts. Source {SHA[:12]}, run 20261125T203622Z-a1b2c3.")


def test_check_output_warns_when_the_fetch_failed():
    text = render_check(check_json(fetch_error="git fetch timed out after 120s"))

    assert text.endswith("\nwarning: git fetch timed out after 120s; checked the last good "
                         "commit")


@pytest.mark.parametrize(("reports", "tail"), [
    ({"committed": {"web1": ["hosts/web1.yml", "applies/web1.yml"], "db1": ["hosts/db1.yml"]},
      "queued": 0, "pushed": True, "push": "pushed", "error": None},
     "\nreports: 3 commit(s) for web1, db1, pushed"),
    ({"committed": {"web1": ["hosts/web1.yml"]}, "queued": 3, "pushed": False, "push": "off",
      "error": None},
     "\nreports: 1 commit(s) for web1; 3 queued (reports.push is off)"),
    ({"committed": {}, "queued": 0, "pushed": False, "push": "nothing to push", "error": None},
     "\nreports: nothing new to commit; nothing to push"),
    ({"committed": {"web1": ["hosts/web1.yml"]}, "queued": 1, "pushed": False,
      "push": "rejected", "error": "push to pk rejected"},
     "\nreports: 1 commit(s) for web1; push rejected, 1 commit(s) queued for the next cycle"
     "\nwarning: push to pk rejected"),
    ({"committed": {}, "queued": 2, "pushed": False, "push": "failed", "error": "git push x "
      "failed: unable to access"},
     "\nreports: nothing new to commit; push failed, 2 commit(s) queued for the next cycle"
     "\nwarning: git push x failed: unable to access"),
])
def test_check_output_ends_with_what_happened_to_the_reports(reports: dict[str, Any],
                                                              tail: str):
    assert render_check(check_json(reports=reports)).endswith(tail)


# --- render_status ---------------------------------------------------------------------------

def status_json(**last: Any) -> dict[str, Any]:
    return {"schema": 1,
            "last_run": {"run_id": "r2", "started": "2026-11-25T21:00:00+00:00",
                         "source_sha": SHA, "exit_code": 2, "fetch_error": None,
                         "reports": {"committed": {}, "queued": 0, "pushed": False}, **last},
            "hosts": {
                "web1": {"status": "drifted", "changes": 2, "checked_at": "2026-11-25T21:00:00"
                         "+00:00", "source_sha": SHA},
                "db1": {"status": "clean", "changes": 4, "check_blind": 4,
                        "checked_at": "2026-11-25T21:00:00+00:00", "source_sha": SHA}}}


def test_status_output_has_the_last_run_then_one_line_per_host_sorted():
    assert render_status(status_json()).splitlines() == [
        f"last run r2 at 2026-11-25T21:00:00+00:00, source {SHA[:12]}, exit 2",
        "  reports: all pushed",
        f"db1: clean (0 changes, 4 check-blind), checked 2026-11-25T21:00:00+00:00 at "
        f"{SHA[:12]}",
        f"web1: drifted (2 changes), checked 2026-11-25T21:00:00+00:00 at {SHA[:12]}",
    ]


def test_status_output_shows_a_failed_fetch_and_queued_reports():
    lines = render_status(status_json(fetch_error="remote hung up",
                                      reports={"queued": 4})).splitlines()

    assert lines[1:3] == ["  fetch failed: remote hung up",
                          "  reports: 4 commit(s) queued, not yet pushed"]


PAUSE = {"by": "alice", "at": "2026-11-25T20:00:00+00:00", "reason": "swapping disks",
         "checks": False}


def test_pause_output_with_no_cycle_running_says_what_stops():
    assert render_pause(PAUSE, None) == ("paused applies (checks go on) as alice: swapping "
                                         "disks; petkeeper resume to undo")
    assert render_pause({**PAUSE, "checks": True}, None).startswith(
        "paused checks and applies as alice: ")


@pytest.mark.parametrize("applying, tail", [
    (None, "; no apply is running"),
    ("web1", "; an apply already running on web1 finishes")])
def test_pause_output_during_a_cycle_says_what_it_will_and_will_not_apply(applying, tail):
    running = {"pid": 4242, "run_id": "20261125T200000Z-abc123", "command": "petkeeper run",
               "applying": applying}

    lines = render_pause(PAUSE, running).splitlines()

    assert lines[1] == ("a cycle is running (PID 4242, run 20261125T200000Z-abc123); it will "
                        "apply nothing that has not started" + tail)


def test_status_shows_each_hosts_own_check_what_waits_and_its_last_apply():
    status = status_json()
    status["hosts"]["web1"].update(
        checked_at="2026-11-25T21:03:10+00:00",
        plan={"plan_id": "30c4aa367513c4ee", "action": "wait",
              "reason": "awaiting approval: petkeeper approve 30c4aa367513c4ee"})
    status["hosts"]["db1"].update(
        plan={"plan_id": "8381b01fc31e59fe", "action": "nothing", "reason": "nothing"},
        last_apply={"at": "2026-11-24T08:00:00+00:00", "result": "converged",
                    "plan_id": "1111aa367513c4ee", "approved_by": "alice", "run_id": "r1"})

    assert render_status(status).splitlines()[2:] == [
        f"db1: clean (0 changes, 4 check-blind), checked 2026-11-25T21:00:00+00:00 at "
        f"{SHA[:12]}",
        "  last apply 2026-11-24T08:00:00+00:00: converged (plan 1111aa367513c4ee, approved by "
        "alice)",
        f"web1: drifted (2 changes), checked 2026-11-25T21:03:10+00:00 at {SHA[:12]}",
        "  plan 30c4aa367513c4ee: awaiting approval: petkeeper approve 30c4aa367513c4ee",
    ]


def test_hostile_text_reaches_the_terminal_escaped_in_check_and_plan_output():
    evil = {**MOTD, "task": "Write\x1b]0;owned\x07 motd", "diff": "-Hi\x1b[2J\r\n+Welcome\n"}
    report = check_json(hosts={"web\x1b[1m1": {"status": "drifted", "fingerprint": FP,
                                                "message": "boom\x1b[31m\nfake line",
                                                "changes": [evil]}})
    for text in (render_check(report, color=True), render_plan(report, color=True)):
        plain = text.replace("\x1b[33m", "").replace("\x1b[31m", "").replace(
            "\x1b[32m", "").replace("\x1b[0m", "")  # our own colors aside
        assert "\x1b" not in plain and "\r" not in plain and "\x07" not in plain
        assert "web\\x1b[1m1" in plain and "Write\\x1b]0;owned\\x07 motd" in plain
        assert "-Hi\\x1b[2J\\x0d" in plain and "boom\\x1b[31m\\nfake line" in plain


def test_a_task_name_holding_the_role_separator_is_quoted_in_check_output():
    named = {**MOTD, "role": "os_hardening", "task": "os_hardening | Set limits"}

    text = render_check(check_json(hosts={"web1": {
        "status": "drifted", "fingerprint": FP, "message": None, "changes": [named]}}))

    assert '  ~ os_hardening | "os_hardening | Set limits" (ansible.builtin.copy)\n' in text


def test_check_output_says_why_a_check_blind_failure_could_not_be_judged():
    stopped = {**PROBE, "error": "chown failed: failed to look up user bob",
               "message": "failed in check mode after 'users | Create or remove the admin "
                          "users' would change this host; may pass once that change is applied"}

    lines = render_check(check_json(hosts={"web1": {
        "status": "drifted", "fingerprint": FP, "message": "partial check: ...",
        "partial": True, "changes": [MOTD, stopped]}})).splitlines()

    assert lines[0] == f"web1: drifted (1 change, 1 check-blind)  [fingerprint {FP[:12]}]"
    assert lines[1] == "    partial check: ..."
    assert lines[-5:-2] == [
        "  ? Run a command (ansible.builtin.command)  (check mode cannot tell)",
        "      failed in check mode after 'users | Create or remove the admin users' would "
        "change this host; may pass once that change is applied",
        "      error: chown failed: failed to look up user bob"]
