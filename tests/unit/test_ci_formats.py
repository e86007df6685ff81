"""The CI formats of a preview (agent.core.delta, agent.operate.junit, codequality, summary):
kinds, exit codes, and host text escaped by each format's own rules."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from agent.core.delta import (
    BASE_UNKNOWN,
    EXISTING,
    INTRODUCED,
    RESOLVED,
    compare_changes,
    counts,
    preview_exit,
)
from agent.operate.codequality import render_codequality, split_task_path
from agent.operate.junit import render_junit
from agent.operate.summary import (
    code_span,
    escape_data,
    escape_property,
    fenced,
    render_annotations,
    render_markdown,
    render_preview,
    short_source,
    without_commands,
)

XSD = Path(__file__).parent / "fixtures" / "ci" / "junit-10.xsd"
HOSTILE = ("-50% done\r\n+::error file=x,line=1::forged, yes: really\n+```\n"
           "+</details><script>alert(1)</script> & ]]> @octocat | cell |\n+\x1b[31mred\x00\n")


def change(task: str, diff: str = "-a\n+b\n", blind: bool = False, **more: Any
           ) -> dict[str, Any]:
    return {"play": "Pets", "role": "web", "task": task, "module": "ansible.builtin.copy",
            "diff": diff, "check_blind": blind, "tags": [], "task_path":
            "roles/web/tasks/main.yml:3", **more}


def preview_of(hosts: dict[str, dict[str, Any]], fail_on: str = "introduced") -> dict[str, Any]:
    return {"source_sha": "f" * 40, "base": {"ref": "origin/main", "sha": "b" * 40},
            "hosts": hosts, "counts": counts(hosts), "fail_on": fail_on,
            "exit_code": preview_exit(hosts, fail_on)}


def host(status: str, changes: list[dict[str, Any]], base: dict[str, Any] | None = None,
         message: str | None = None) -> dict[str, Any]:
    return {"status": status, "fingerprint": "0" * 64, "message": message,
            "changes": changes, "base": base if base is not None else {"status": "drifted"}}


# --- kinds and exit codes --------------------------------------------------------------------

def test_same_task_same_diff_is_existing_new_diff_introduced_gone_resolved():
    base = [change("motd", "-hand\n+managed\n"), change("conf", "-x\n+y\n")]
    head = [change("motd", "-hand\n+managed\n"), change("notes", "-v1\n+v2\n")]

    kinds = [(c["task"], c["kind"]) for c in compare_changes(head, base)]

    assert kinds == [("motd", EXISTING), ("notes", INTRODUCED), ("conf", RESOLVED)]


def test_a_task_the_pull_request_changes_on_a_drifting_host_is_introduced():
    base = [change("motd", "-hand\n+managed\n")]
    head = [change("motd", "-hand\n+new text\n")]

    assert [c["kind"] for c in compare_changes(head, base)] == [INTRODUCED]


def test_a_task_that_runs_twice_is_matched_by_its_order():
    base = [change("line", "-1\n+2\n"), change("line", "-3\n+4\n")]
    head = [change("line", "-1\n+2\n")]

    kinds = [c["kind"] for c in compare_changes(head, base)]

    assert kinds == [EXISTING, RESOLVED]


def test_without_a_base_report_every_change_says_base_unknown():
    assert [c["kind"] for c in compare_changes([change("a")], None)] == [BASE_UNKNOWN]


@pytest.mark.parametrize(("kinds", "fail_on", "code"), [
    ([INTRODUCED], "introduced", 2), ([EXISTING], "introduced", 0),
    ([EXISTING], "drift", 2), ([RESOLVED], "drift", 0), ([BASE_UNKNOWN], "introduced", 2),
    ([], "drift", 0)])
def test_exit_code_follows_fail_on(kinds: list[str], fail_on: str, code: int):
    hosts = {"web1": host("drifted", [{**change(k), "kind": k} for k in kinds])}
    assert preview_exit(hosts, fail_on) == code


def test_check_blind_changes_never_fail_a_preview_and_errors_exit_1():
    blind = {"web1": host("clean", [{**change("cmd", blind=True), "kind": INTRODUCED}])}
    assert preview_exit(blind, "drift") == 0
    assert preview_exit({"web1": host("unreachable", [], message="no route")}, "drift") == 1
    assert preview_exit({}, "introduced") == 1


# --- JUnit ------------------------------------------------------------------------------------

def hostile_preview() -> dict[str, Any]:
    return preview_of({
        "web1": host("drifted", [{**change("motd", HOSTILE), "kind": INTRODUCED},
                                 {**change("cmd", "", blind=True), "kind": EXISTING},
                                 {**change("conf"), "kind": RESOLVED}]),
        "db1": host("clean", []),
        "ghost": host("unreachable", [], None, "ssh: \x1b[2J connect refused <b>"),
    })


def test_junit_validates_against_jenkins_schema_with_hostile_text():
    import xmlschema

    document = render_junit(hostile_preview())

    xmlschema.XMLSchema(str(XSD)).validate(document)
    suites = {s.get("name"): s for s in ET.fromstring(document).iter("testsuite")}
    web1 = suites["web1"]
    assert (web1.get("tests"), web1.get("failures"), web1.get("skipped")) == ("3", "1", "1")
    [failure] = web1.iter("failure")
    assert "</details><script>" in (failure.text or "") and "\\x1b[31mred\\x00" in failure.text
    assert "\\x0d" in failure.text and "\r" not in failure.text
    assert [c.get("name") for c in suites["db1"].iter("testcase")] == ["clean"]
    assert suites["ghost"].get("errors") == "1"


# --- GitHub annotations -----------------------------------------------------------------------

def test_workflow_command_escapes_percent_cr_lf_and_in_properties_colon_and_comma():
    assert escape_data("100%\r\n::x") == "100%25%0D%0A::x"
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"


def test_one_annotation_per_change_at_its_file_and_line_none_for_resolved():
    lines = render_annotations(hostile_preview())

    assert len(lines) == 2
    assert lines[0].startswith("::warning file=roles/web/tasks/main.yml,line=3,title=web1%3A "
                               "introduced%3A web | motd (ansible.builtin.copy)::")
    assert lines[1].startswith("::notice ")
    assert all("\n" not in ln and "\r" not in ln and "\x1b" not in ln for ln in lines)


def test_the_log_output_is_fenced_off_from_workflow_commands():
    text = without_commands("::error::forged")
    token = text.splitlines()[0].removeprefix("::stop-commands::")
    assert re.fullmatch(r"[0-9a-f]{32}", token) and text.endswith(f"\n::{token}::")


# --- GitLab Code Quality ----------------------------------------------------------------------

def test_codequality_has_the_required_keys_with_file_and_line():
    issues = json.loads(render_codequality(hostile_preview()))

    assert [i["check_name"] for i in issues] == ["petkeeper-introduced", "petkeeper-existing"]
    assert issues[0]["location"] == {"path": "roles/web/tasks/main.yml", "lines": {"begin": 3}}
    assert issues[0]["severity"] == "major" and issues[1]["severity"] == "info"
    assert len({i["fingerprint"] for i in issues}) == 2
    assert all("\x1b" not in i["description"] for i in issues)


def test_task_path_outside_the_repository_points_at_its_top():
    assert split_task_path("") == (".", 1)
    assert split_task_path("a:b/tasks.yml:7") == ("a:b/tasks.yml", 7)


# --- Markdown ---------------------------------------------------------------------------------

def test_markdown_keeps_host_text_inside_code_with_fences_it_cannot_close():
    md = render_markdown(hostile_preview())

    fence = fenced(HOSTILE)
    assert fence.startswith("````diff") and fence in md
    outside = md.replace(fence, "")
    for hostile in ("<script>", "@octocat", "]]>", "::error"):
        assert hostile not in outside
    assert outside.count("<details>") == outside.count("</details>") == 3
    assert "\x1b" not in md and "\r" not in md


def test_code_spans_outlast_backticks_and_escape_table_pipes():
    assert code_span("a`b") == "``a`b``"
    assert code_span("`x") == "`` `x ``"
    assert code_span("a|b", table=True) == "`a\\|b`"


def test_terminal_preview_shows_kinds_and_escapes_controls():
    text = render_preview(hostile_preview())

    assert "introduced: web | motd (ansible.builtin.copy)  [roles/web/tasks/main.yml:3]" in text
    assert "\x1b" not in text and "ghost: unreachable" in text
    assert text.splitlines()[-1].startswith("preview of ffff")


def test_a_checked_subfolder_prefixes_the_files_the_ci_system_is_shown():
    assert split_task_path("roles/web/tasks/main.yml:3", "ansible") == \
        ("ansible/roles/web/tasks/main.yml", 3)
    data = {**hostile_preview(), "folder": "ansible"}
    assert render_annotations(data)[0].startswith("::warning file=ansible/roles/web/")
    assert json.loads(render_codequality(data))[0]["location"]["path"].startswith("ansible/")


def test_markdown_says_what_the_policy_would_do_after_merge():
    data = {**hostile_preview(), "policy": {"web1": {"mode": "approve", "rule": "rules[0]"}}}
    assert "After merge, the policy says `approve` (`rules[0]`)." in render_markdown(data)


@pytest.mark.parametrize(("sha", "short"), [
    ("d5386aad788120326526ad15dfe6ed1ddcd562a1", "d5386aad7881"),
    ("d5386aad788120326526ad15dfe6ed1ddcd562a1-dirty", "d5386aad7881-dirty"),
    ("tree:" + "ab" * 32, "tree:abababababab"), ("None", "None")])
def test_the_summary_heading_names_the_source_as_short_as_the_base(sha: str, short: str):
    assert short_source(sha) == short
