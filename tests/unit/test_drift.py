"""agent.core.drift: ansible-runner events in, one report per host out.

The golden cases under fixtures/drift/ hold real events (see fixtures/drift/README.md).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import uuid
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from agent.core.accelerator import plain_words
from agent.core.drift import (
    CLEAN,
    DRIFTED,
    FAILED,
    HIDDEN,
    UNKNOWN,
    Change,
    HostReport,
    build_host_reports,
    fingerprint,
    mask_reports,
    parse_host_key_refusal,
    render_diff,
    repo_task_path,
    short_module,
)

FIXTURES = Path(__file__).parent / "fixtures" / "drift"
# Every fixture's paths were rewritten to this materialised tree (see the README).
TREE = "/var/lib/petkeeper/trees/8f14e45fceea167a5a36dedd4bea2543b2c1e7c8"
# The ansible-core versions every recorded case has a recording of (tests/tools/record_fixture.py).
RECORDED = json.loads((FIXTURES / "recorded.json").read_text())
INSTALLED = ".".join(version("ansible-core").split(".")[:2])


def recordings(case: str) -> list[str]:
    """The ansible-core versions CASE was recorded with, oldest first; [""] for a case whose
    events.json lies in its own folder (hand-made)."""
    if (FIXTURES / case / "events.json").exists():
        return [""]
    found = [p.parent.name for p in (FIXTURES / case).glob("*/events.json")]
    return sorted(found, key=lambda v: tuple(int(n) for n in v.split(".")))


def default_recording(case: str) -> str:
    """The installed ansible-core's recording of CASE, or else its newest."""
    found = recordings(case)
    return INSTALLED if INSTALLED in found else found[-1]


def load_events(case: str, recording: str | None = None) -> list[dict[str, Any]]:
    folder = FIXTURES / case / (default_recording(case) if recording is None else recording)
    return json.loads((folder / "events.json").read_text())


def load_expected(case: str) -> dict[str, Any]:
    return json.loads((FIXTURES / case / "expected.json").read_text())


def load_facts(case: str, recording: str | None = None) -> list[dict[str, Any]]:
    """What the petkeeper_facts callback recorded in that run, where the case has it."""
    folder = FIXTURES / case / (default_recording(case) if recording is None else recording)
    path = folder / "facts.json"
    return json.loads(path.read_text()) if path.exists() else []


def golden_cases() -> list[Any]:
    """One parameter per case and recording."""
    cases = []
    for folder in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        expected = load_expected(folder.name)
        marks = [pytest.mark.xfail(strict=True, reason=expected["xfail"])] \
            if "xfail" in expected else []
        for recording in recordings(folder.name):
            cases.append(pytest.param(folder.name, recording, marks=marks,
                                      id=f"{folder.name}-{recording or 'hand-made'}"))
    return cases


def reports_of(case: str, tree_root: str = TREE, recording: str | None = None
               ) -> dict[str, Any]:
    events = load_events(case, recording)
    return build_host_reports(events, load_expected(case)["hosts"], tree_root,
                              load_facts(case, recording))


def find(events: list[dict[str, Any]], kind: str, task: str, host: str | None = None
         ) -> dict[str, Any]:
    [event] = [e for e in events if e["event"] == kind and e["event_data"].get("task") == task
               and (host is None or e["event_data"].get("host") == host)]
    return event


# --- golden fixtures -------------------------------------------------------------------------

def test_every_golden_case_has_events_and_expected_hosts():
    folders = [p for p in FIXTURES.iterdir() if p.is_dir()]
    assert len(folders) >= 15
    for folder in folders:
        for recording in recordings(folder.name):
            events = load_events(folder.name, recording)
            assert events and all("event" in e and "event_data" in e for e in events), folder
        assert load_expected(folder.name)["hosts"], folder.name


def test_every_recorded_case_has_a_recording_of_each_ansible_core_in_the_range():
    assert {"2.19", "2.20", "2.21"} <= set(RECORDED)
    for scenario in FIXTURES.glob("*/scenario.yml"):
        assert recordings(scenario.parent.name) == list(RECORDED), scenario.parent.name


@pytest.mark.parametrize(("case", "recording"), golden_cases())
def test_golden_case_reports_status_changes_message_and_fingerprint(case: str, recording: str):
    expected = load_expected(case)["hosts"]

    reports = reports_of(case, recording=recording)

    actual = {name: {"status": r.status, "message": r.message, "changes": r.as_dict()["changes"],
                     "fingerprint": r.fingerprint, **({"partial": True} if r.partial else {})}
              for name, r in reports.items()}
    assert actual == {name: expected_for(report, recording) for name, report in expected.items()}


def expected_for(report: dict[str, Any], recording: str) -> dict[str, Any]:
    """A host's expected report for one recording: Ansible's own words in a message, or in a
    check-blind failure's error, may differ by version (message_by_version, and a change's
    error_by_version); hand-made cases leave the fingerprint out."""
    by_version = report.get("message_by_version", {})
    wanted = {k: v for k, v in report.items() if k != "message_by_version"}
    wanted["message"] = by_version.get(recording, report["message"])
    wanted["changes"] = [
        {**{k: v for k, v in c.items() if k != "error_by_version"},
         **({"error": c["error_by_version"].get(recording, c["error"])}
            if "error_by_version" in c else {})} for c in report["changes"]]
    return wanted


@pytest.mark.parametrize(("case", "recording"), [c for c in golden_cases() if not c.marks])
def test_golden_case_fingerprint_is_the_hash_of_its_status_and_changes(case: str,
                                                                       recording: str):
    for report in reports_of(case, recording=recording).values():
        assert re.fullmatch(r"[0-9a-f]{64}", report.fingerprint)
        assert report.fingerprint == fingerprint(report.status, report.changes, report.partial)


@pytest.mark.parametrize("case", sorted(p.parent.name for p in FIXTURES.glob("*/scenario.yml")))
def test_each_ansible_core_gives_the_same_reports_and_fingerprints(case: str):
    """Upgrading ansible-core within the range changes no report but Ansible's own words in a
    message: approvals (bound to fingerprints) stay valid."""
    reports = {recording: {name: {**r.as_dict(), "message": None, "changes": [
        {**c, "error": None} for c in r.as_dict()["changes"]]} for name, r in reports_of(
        case, recording=recording).items()} for recording in recordings(case)}

    first = next(iter(reports.values()))
    assert all(r == first for r in reports.values()), json.dumps(reports, indent=1)


# --- status rules, beyond the golden cases ---------------------------------------------------

def test_check_with_no_events_at_all_reports_every_expected_host_unknown_not_clean():
    reports = build_host_reports([], ["web1", "db1"], TREE)

    assert {n: r.status for n, r in reports.items()} == {"db1": UNKNOWN, "web1": UNKNOWN}
    assert all("ended before" in (r.message or "") for r in reports.values())


def test_host_in_the_events_but_not_expected_is_still_reported():
    events = load_events("unreachable_host")

    reports = build_host_reports(events, ["web1"], TREE)

    assert set(reports) == {"web1", "ghost"}
    assert reports["ghost"].status == "unreachable"


def test_no_log_ambiguous_marks_each_hidden_change_check_blind():
    reports = reports_of("no_log_ambiguous")

    changes = reports["web1"].changes
    assert [(c.task, c.diff, c.check_blind) for c in changes] == [
        ("Unchanged secret", HIDDEN, True), ("Changed secret", HIDDEN, True)]


def test_no_log_result_never_contributes_its_content_to_the_report():
    events = load_events("no_log_exact")
    secret = find(events, "runner_on_ok", "Secret", "web1")
    # Even if a censored result carried more keys, only the placeholder may come out.
    secret["event_data"]["res"]["diff"] = {"before": "", "after": "hunter2-canary\n"}

    reports = build_host_reports(events, ["web1"], TREE)

    assert "hunter2-canary" not in json.dumps(reports["web1"].as_dict())
    assert [c.diff for c in reports["web1"].changes if c.task == "Secret"] == [HIDDEN]


def test_failed_no_log_task_message_is_hidden_not_echoed():
    events = load_events("failed_first")
    failed = find(events, "runner_on_failed", "Must pass", "db1")
    failed["event_data"]["res"] = {"censored": "the output has been hidden due to the fact that"
                                                " 'no_log: true' was specified for this result"}

    reports = build_host_reports(events, ["db1"], TREE)

    assert reports["db1"].status == FAILED
    assert reports["db1"].message == f"task 'Must pass': {HIDDEN}"


def test_failure_message_falls_back_to_stderr_and_is_capped():
    events = load_events("failed_first")
    res = find(events, "runner_on_failed", "Must pass", "db1")["event_data"]["res"]
    res["msg"] = ""
    res["stderr"] = "x" * 2000

    message = build_host_reports(events, ["db1"], TREE)["db1"].message

    assert message is not None
    assert message.startswith("task 'Must pass': xxx")
    assert message.endswith("...") and len(message) < 600


def test_unreachable_wins_over_a_failure_seen_earlier():
    events = load_events("failed_first")
    failed = find(events, "runner_on_failed", "Must pass", "db1")
    unreachable = copy.deepcopy(failed)
    unreachable["event"] = "runner_on_unreachable"
    unreachable["event_data"]["res"] = {"unreachable": True, "changed": False,
                                        "msg": "Failed to connect to the host via ssh"}
    events.insert(events.index(failed) + 1, unreachable)

    report = build_host_reports(events, ["db1"], TREE)["db1"]

    assert report.status == "unreachable"
    assert report.message == "Failed to connect to the host via ssh"


# --- host keys ssh refused -------------------------------------------------------------------

def refusal(case: str) -> str:
    """ssh's words in the unreachable result of golden case CASE."""
    return find(load_events(case), "runner_on_unreachable",
                "Write the message of the day")["event_data"]["res"]["msg"]


def test_changed_host_key_message_names_the_new_fingerprint_the_line_and_the_fix():
    message = parse_host_key_refusal(refusal("host_key_changed"))

    assert message == (
        "host key changed: [127.0.97.12]:2222 now sends ED25519 key "
        "SHA256:tQ8HWHLRY5HL8GF6atzMNBVN3f+iOAhxqfRB9sEUyuQ, not the one in "
        "/etc/petkeeper/known_hosts:2; refused, as it may be a man in the middle: verify that "
        "fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then "
        "replace the old key (ssh-keygen -R '[127.0.97.12]:2222' -f /etc/petkeeper/known_hosts) "
        "with the verified one")


def test_unknown_host_key_message_says_it_is_never_trusted_on_first_use():
    message = parse_host_key_refusal(refusal("host_key_unknown"))

    assert message == (
        "host key unknown: no ED25519 key for [127.0.97.12]:2222 in known_hosts; refused, never "
        "trusted on first use: verify the key on the host (ssh-keygen -lf "
        "/etc/ssh/ssh_host_ed25519_key.pub), then add it to the known_hosts file "
        "(ansible.known_hosts_file)")


@pytest.mark.parametrize("case", ["host_key_changed", "host_key_unknown"])
def test_a_host_key_refused_under_mitogen_is_unreachable_with_the_same_fingerprint(case: str):
    # Mitogen's strategy keeps ssh's words: its refusal names neither the key nor the host
    # (a documented limit, docs/accelerator.md#parity). What counts is the same: unreachable,
    # the same fingerprint, and a line that says it was refused and where to look.
    events = load_events(case)
    plain = build_host_reports(events, ["web1", "web2"], TREE)
    find(events, "runner_on_unreachable", "Write the message of the day")["event_data"][
        "res"]["msg"] = ("Host key checking is enabled, and SSH reported an unrecognized or "
                         "mismatching host key.")

    mitogen = build_host_reports(events, ["web1", "web2"], TREE)

    assert mitogen["web2"].status == plain["web2"].status == "unreachable"
    assert mitogen["web2"].fingerprint == plain["web2"].fingerprint
    assert mitogen["web1"] == plain["web1"]
    assert mitogen["web2"].message == (
        "host key unknown or changed (Mitogen's strategy does not say which key the host "
        "sent); refused, never trusted on first use: petkeeper doctor shows the key the host "
        "sends and how to fix it")


@pytest.mark.parametrize("case", ["unreachable_host", "real_check_run"])
def test_a_refused_connection_reads_the_same_under_mitogen(case: str):
    # Mitogen words it "EOF on stream; last 100 lines received:" and ssh's lines (the golden
    # cases replayed with tests/tools/record_fixture.py --accelerator mitogen).
    events = load_events(case)
    plain = build_host_reports(events, ["web1", "ghost"], TREE, load_facts(case))
    unreachable = next(e for e in events if e["event"] == "runner_on_unreachable")
    res = unreachable["event_data"]["res"]
    res["msg"] = ("Task failed: EOF on stream; last 100 lines received:\nssh: connect to host "
                  "127.0.97.99 port 2222: Connection refused")

    mitogen = build_host_reports(events, ["web1", "ghost"], TREE, load_facts(case))

    assert mitogen == plain
    assert mitogen["ghost"].message == ("Task failed: Failed to connect to the host via ssh: ssh: "
                                        "connect to host 127.0.97.99 port 2222: Connection "
                                        "refused")


def test_a_connection_mitogen_lost_mid_task_says_so_without_asking_for_a_bug_report():
    msg = ("Task failed: Mitogen was disconnected from the remote environment while a call was "
           "in-progress. If you feel this is in error, please file a bug. Original error was: "
           "the respondent Context has disconnected")

    assert plain_words(msg) == ("Task failed: the connection to the host was lost during the "
                                "task (Mitogen: the respondent Context has disconnected)")
    assert plain_words("Task failed: something else") == "Task failed: something else"


def test_changed_host_key_without_its_fingerprint_still_names_the_host_and_the_fix():
    text = "\r\n".join(line for line in refusal("host_key_changed").replace("\r\n", "\n")
                        .splitlines() if "SHA256:" not in line and "key sent by" not in line)

    message = parse_host_key_refusal(text)

    assert message is not None
    assert message.startswith("host key changed: [127.0.97.12]:2222 now sends new key "
                              "(fingerprint not shown), not the one in ")
    assert "ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub" in message


@pytest.mark.parametrize("text", [
    "Task failed: Failed to connect to the host via ssh: ssh: connect to host 127.0.80.99 "
    "port 2222: Connection refused",
    'Task failed: Data could not be sent to remote host "127.0.97.12". Make sure this host '
    "can be reached over ssh:",
    "Host key verification failed.",  # no detail to build a fix from: ssh's own words stay
    "",
])
def test_other_unreachable_messages_are_not_host_key_refusals(text: str):
    assert parse_host_key_refusal(text) is None


def test_refused_host_key_is_unreachable_with_one_line_instead_of_the_ssh_banner():
    events = load_events("host_key_changed")

    report = build_host_reports(events, ["web2"], TREE)["web2"]

    assert report.status == "unreachable"
    assert report.message is not None and report.message.startswith("host key changed: ")
    assert "\n" not in report.message and "@@@" not in report.message


def test_skipped_task_of_a_module_without_check_mode_is_check_blind_and_keeps_host_clean():
    events = load_events("check_blind_only")

    report = build_host_reports(events, ["web1"], TREE)["web1"]

    assert report.status == CLEAN
    assert [(c.task, c.check_blind) for c in report.changes] == [("Run a command", True)]


def test_a_changed_command_is_a_known_change_only_when_the_callback_says_creates_was_set():
    case = "command_creates_would_run"
    events, facts = load_events(case), load_facts(case)
    [fact] = [f for f in facts if f["event"] == "changed"]
    assert fact["predicted"] is True

    told = build_host_reports(events, ["web1"], TREE, facts)["web1"]
    fact["predicted"] = False
    not_told = build_host_reports(events, ["web1"], TREE, facts)["web1"]
    no_facts = build_host_reports(events, ["web1"], TREE)["web1"]

    assert (told.status, [c.check_blind for c in told.changes]) == (DRIFTED, [False])
    assert (not_told.status, [c.check_blind for c in not_told.changes]) == (CLEAN, [True])
    assert (no_facts.status, [c.check_blind for c in no_facts.changes]) == (CLEAN, [True])


def test_the_modules_arguments_in_a_result_are_not_read_only_the_callbacks_facts():
    """ansible-core 2.21 stopped sending `invocation`: reading it would make 2.19 and 2.21
    disagree. A result that carries creates there changes nothing."""
    events = load_events("command_creates_would_run")
    facts = [{**f, "predicted": False} for f in load_facts("command_creates_would_run")]
    res = find(events, "runner_on_ok", "Run a command with creates", "web1")["event_data"]["res"]
    res["invocation"] = {"module_args": {"_raw_params": "touch /etc/made",
                                         "creates": "/etc/made", "removes": "/etc/made"}}

    report = build_host_reports(events, ["web1"], TREE, facts)["web1"]

    assert [c.check_blind for c in report.changes] == [True]


# --- fingerprint -----------------------------------------------------------------------------

def fingerprints(events: list[dict[str, Any]], tree_root: str = TREE) -> dict[str, str]:
    return {n: r.fingerprint for n, r in build_host_reports(events, ["web1", "ghost"],
                                                             tree_root).items()}


def restamp(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same run as if it ran again: new uuids, run id, pid, times and ansible tmp dirs."""
    text = json.dumps(events)
    ids = set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text))
    for old in ids:
        text = text.replace(old, str(uuid.uuid4()))
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+", "2027-01-02T03:04:05.678901", text)
    text = re.sub(r"ansible-local-\d+_\w+/tmp\w+", "ansible-local-999_zzzzzzz/tmpabcdefgh", text)
    new = json.loads(text)
    for e in new:
        e["pid"] = 4242
        e["counter"] += 100
        if "duration" in e["event_data"]:
            e["event_data"]["duration"] = 9.5
    return new


def test_same_events_twice_give_the_same_fingerprint():
    first = fingerprints(load_events("real_check_run"))
    second = fingerprints(load_events("real_check_run"))

    assert first == second
    assert first["web1"] != first["ghost"]


def test_run_ids_timestamps_uuids_and_tmp_paths_do_not_change_the_fingerprint():
    events = load_events("real_check_run")
    again = restamp(events)
    assert json.dumps(again) != json.dumps(events)  # the restamp did change the events

    assert fingerprints(again) == fingerprints(events)


def test_same_drift_in_the_tree_of_another_commit_has_the_same_fingerprint():
    events = load_events("real_check_run")
    other_tree = "/var/lib/petkeeper/trees/c9f0f895fb98ab9159f51fd0297e236d0e8a2a1b"
    moved = json.loads(json.dumps(events).replace(TREE, other_tree))

    assert fingerprints(moved, other_tree) == fingerprints(events, TREE)


def test_a_different_diff_changes_the_fingerprint():
    events = load_events("real_check_run")
    before = fingerprints(events)
    res = find(events, "runner_on_ok", "Write motd", "web1")["event_data"]["res"]
    res["diff"][0]["after"] = "Welcome, again\n"

    assert fingerprints(events)["web1"] != before["web1"]


def test_a_different_status_changes_the_fingerprint():
    events = load_events("drifted_with_diffs")
    before = build_host_reports(events, ["web1"], TREE)["web1"]
    without_stats = [e for e in events if e["event"] != "playbook_on_stats"]

    after = build_host_reports(without_stats, ["web1"], TREE)["web1"]

    assert (before.status, after.status) == (DRIFTED, UNKNOWN)
    assert after.changes == before.changes
    assert after.fingerprint != before.fingerprint


def test_fingerprint_depends_on_status_and_each_change_field():
    change = Change("Baseline", "base", "Write motd", "ansible.builtin.copy", "-a\n+b\n")
    base = fingerprint(DRIFTED, [change])

    assert fingerprint(DRIFTED, [change]) == base
    assert fingerprint(FAILED, [change]) != base
    assert fingerprint(DRIFTED, []) != base
    for field, value in (("play", "Other"), ("role", None), ("task", "Other"),
                         ("module", "ansible.builtin.template"), ("diff", "-a\n+c\n"),
                         ("check_blind", True)):
        changed = Change(**{**change.__dict__, field: value})
        assert fingerprint(DRIFTED, [changed]) != base, field


def test_fingerprint_is_the_sha256_of_the_canonical_json_of_status_and_changes():
    """Pinned: another canonical form re-commits every host's report once. Do it on purpose."""
    change = Change("Baseline", "base", "Write motd", "ansible.builtin.copy", "-a\n+b\n")
    canonical = ('{"changes":[{"check_blind":false,"diff":"-a\\n+b\\n","module":'
                 '"ansible.builtin.copy","play":"Baseline","role":"base","task":"Write motd"}],'
                 '"status":"drifted"}')

    assert fingerprint(DRIFTED, [change]) == hashlib.sha256(canonical.encode()).hexdigest()


# --- render_diff -----------------------------------------------------------------------------

def test_render_diff_writes_a_unified_diff_with_cleaned_headers():
    diff = {"before_header": "/etc/motd", "before": "old\n",
            "after_header": f"{TREE}/roles/base/files/motd", "after": "new\n"}

    assert render_diff(diff, TREE) == (
        "--- before: /etc/motd\n+++ after: roles/base/files/motd\n@@ -1 +1 @@\n-old\n+new\n")


def test_render_diff_replaces_ansible_tmp_paths_with_generated():
    diff = {"before": "", "after": "x\n",
            "after_header": "/home/deploy/.ansible/tmp/ansible-local-77_ab/tmpq/app.j2"}

    assert "+++ after: (generated)\n" in render_diff(diff, TREE)


def test_render_diff_keeps_prepared_text_of_modules_without_before_after():
    diff = {"prepared": "The following packages will be upgraded:\n  openssl\n"}

    assert render_diff([diff]) == "The following packages will be upgraded:\n  openssl\n"


def test_render_diff_skips_parts_that_are_equal_or_hold_only_headers():
    parts = [{"before_header": "/etc/x (file attributes)", "after_header": "/etc/x (file "
              "attributes)"}, {"before": "same\n", "after": "same\n"}, "not a mapping", None]

    assert render_diff(parts) == ""


def test_render_diff_renders_structured_before_and_after_as_sorted_json():
    diff = {"before": {"state": "absent"}, "after": {"state": "present", "mode": "0644"}}

    text = render_diff(diff)

    assert '-  "state": "absent"\n' in text
    assert '+  "mode": "0644",\n+  "state": "present"\n' in text


def test_render_diff_marks_a_missing_final_newline():
    text = render_diff({"before": "a\n", "after": "a\nb"})

    assert text.endswith("+b\n\\ No newline at end of file\n")


@pytest.mark.parametrize(("action", "short"), [
    ("ansible.builtin.command", "command"), ("ansible.legacy.shell", "shell"), ("raw", "raw"),
    ("community.general.ini_file", "ini_file"), ("", "")])
def test_short_module_drops_the_collection(action: str, short: str):
    assert short_module(action) == short


# --- check mode's blind spots: a failure after a change --------------------------------------

def without_task(events: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event_data"].get("task") != task]


def test_a_failure_after_a_change_of_the_same_run_is_check_blind_and_the_host_partial():
    report = reports_of("failed_task")["db1"]

    assert (report.status, report.partial) == (DRIFTED, True)
    stopped = report.changes[-1]
    assert (stopped.task, stopped.check_blind) == ("Must pass", True)
    assert stopped.error.rstrip(".").endswith("non-zero return code")  # 2.21 adds words
    assert "'web | Template motd'" in stopped.message
    assert report.fingerprint == fingerprint(DRIFTED, report.changes, partial=True)


def test_a_failure_after_a_check_blind_change_only_stays_a_failure():
    events = load_events("failed_task")
    res = find(events, "runner_on_ok", "Template motd", "db1")
    res["event"] = "runner_on_skipped"  # a module that skipped itself: check-blind, not known
    res["event_data"]["res"] = None

    report = build_host_reports(events, ["db1"], TREE)["db1"]

    assert (report.status, report.partial) == (FAILED, False)
    assert report.message.startswith("task 'Must pass': ")
    assert report.message.rstrip(".").endswith("non-zero return code")  # 2.21 adds words


def test_a_change_in_an_earlier_playbook_does_not_excuse_a_failure_in_a_later_one():
    events = load_events("failed_task")
    first = [copy.deepcopy(e) for e in events if e["event"] in (
        "playbook_on_start", "playbook_on_play_start", "playbook_on_stats")
        or e["event_data"].get("task") == "Template motd"]
    for e in first:
        e["runner_ident"] = "first-playbook"
        if e["event"] == "playbook_on_stats":
            e["event_data"]["failures"] = {}
    second = without_task(events, "Template motd")

    report = build_host_reports(first + second, ["db1"], TREE)["db1"]

    assert (report.status, report.partial) == (FAILED, False)


def test_a_rescued_failure_after_a_change_is_neither_a_failure_nor_check_blind():
    events = load_events("rescued_failure_does_not_fail")
    find(events, "runner_on_ok", "Write motd", "web1")["event_data"]["res"]["changed"] = True
    stats = next(e for e in events if e["event"] == "playbook_on_stats")["event_data"]
    stats["changed"] = {"web1": 1}

    report = build_host_reports(events, ["web1"], TREE)["web1"]

    assert (report.status, report.partial) == (DRIFTED, False)
    assert [c.task for c in report.changes] == ["Write motd"]


def test_a_run_cut_short_after_a_check_blind_failure_is_unknown_and_still_lists_it():
    events = [e for e in load_events("failed_task") if e["event"] != "playbook_on_stats"]

    report = build_host_reports(events, ["db1"], TREE)["db1"]

    assert (report.status, report.partial) == (UNKNOWN, True)
    assert [c.check_blind for c in report.changes] == [False, True]


def test_a_partial_report_differs_in_fingerprint_from_the_same_changes_unpartial():
    changes = reports_of("failed_task")["db1"].changes

    assert fingerprint(DRIFTED, changes, True) != fingerprint(DRIFTED, changes)


def test_the_words_of_a_check_blind_failure_do_not_change_the_fingerprint():
    """Ansible's error differs between versions (and may between runs): an approval of a
    partial plan must survive both."""
    changes = reports_of("failed_task")["db1"].changes
    reworded = [replace(c, error=c.error and "The command exited with a non-zero return code.",
                        message=c.message and "other words") for c in changes]

    assert fingerprint(DRIFTED, reworded, True) == fingerprint(DRIFTED, changes, True)


def test_the_error_of_a_check_blind_failure_is_masked_with_the_rest():
    reports = reports_of("failed_task")

    masked = mask_reports(reports, lambda text: text.replace("return code", "++++"))

    stopped = masked["db1"].changes[-1]
    assert stopped.error.rstrip(".").endswith("non-zero ++++")
    assert masked["db1"].fingerprint == fingerprint(DRIFTED, masked["db1"].changes, True)
    assert masked["db1"].partial


def test_a_change_lists_error_and_message_only_when_it_has_them():
    report = reports_of("failed_task")["db1"]

    first, stopped = report.as_dict()["changes"]
    assert "error" not in first and "message" not in first
    # the module's own words: 2.19's "non-zero return code", 2.21's "The command ... code."
    assert "return code" in stopped["error"] and "\n" not in stopped["error"]
    assert report.as_dict()["partial"] is True


# --- skip reasons the callback records -------------------------------------------------------

def skipped_with(fact: dict[str, Any]) -> HostReport:
    """check_blind_only's skipped command, with FACT as what the callback said about it."""
    events = load_events("check_blind_only")
    skip = find(events, "runner_on_skipped", "Run a command", "web1")["event_data"]
    facts = [{"host": "web1", "task_uuid": skip["task_uuid"], "event": "skipped", **fact}]
    return build_host_reports(events, ["web1"], TREE, facts)["web1"]


@pytest.mark.parametrize(("fact", "blind"), [
    ({"conditional": False, "reason": "module"}, True),
    ({"conditional": True, "reason": "when"}, False),
    ({"conditional": False, "reason": "no_items"}, False),
    ({"conditional": False, "reason": "never_changes"}, False),
    ({"conditional": True, "reason": "check_mode"}, True),
    ({"conditional": True}, False),  # recorded before reasons were
    ({"conditional": False}, True),
])
def test_a_skipped_task_is_check_blind_only_when_check_mode_hides_what_it_would_do(
        fact: dict[str, Any], blind: bool):
    report = skipped_with(fact)

    assert [c.task for c in report.changes if c.check_blind] == (["Run a command"] if blind
                                                                  else [])
    assert report.status == CLEAN


def test_tags_a_task_inherits_twice_are_listed_once():
    report = skipped_with({"conditional": False, "reason": "module",
                           "tags": ["cron", "os_hardening", "cron", "os_hardening"]})

    assert report.changes[0].tags == ("cron", "os_hardening")


@pytest.mark.parametrize("recording", ["2.19", "2.20", "2.21"])
def test_userdel_with_the_home_kept_makes_the_old_users_role_partial_not_failed(recording: str):
    """The issue's own case, recorded: the chown of bob's ~/.ssh fails in check mode after the
    user task would recreate him; the error names the loop item, on every ansible-core."""
    report = reports_of("failed_after_userdel", recording=recording)["web1"]

    assert (report.status, report.partial) == (DRIFTED, True)
    account, ssh_folder = report.changes
    assert (account.task, account.check_blind) == ("Create or remove the admin users", False)
    assert (ssh_folder.task, ssh_folder.check_blind) == ("Create the admins' .ssh folders", True)
    assert ssh_folder.error == "bob: chown failed: failed to look up user bob"
    assert "'users | Create or remove the admin users'" in ssh_folder.message

# --- task_path -------------------------------------------------------------------------------

def test_task_path_is_stored_relative_to_the_tree_with_its_line():
    assert repo_task_path(f"{TREE}/roles/web/tasks/main.yml:12", TREE) == \
        "roles/web/tasks/main.yml:12"


def test_task_path_outside_the_tree_is_left_out_so_no_controller_path_is_reported():
    assert repo_task_path("/root/.ansible/roles/galaxy.role/tasks/main.yml:3", TREE) == ""
    assert repo_task_path(f"{TREE}-other/site.yml:3", TREE) == ""


def test_task_path_stays_out_of_the_fingerprint():
    change = Change("p", "r", "t", "copy", "-a\n+b\n", task_path="roles/r/tasks/main.yml:1")
    moved = Change("p", "r", "t", "copy", "-a\n+b\n", task_path="roles/r/tasks/main.yml:9")
    assert fingerprint(DRIFTED, [change]) == fingerprint(DRIFTED, [moved])
