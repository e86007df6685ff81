"""JUnit XML of a preview, as Jenkins reads it (the junit-10.xsd of its xUnit plugin): a
testsuite per host, a failed testcase per change, a skipped one per check-blind task, a
passing one per change the head resolves and for a host without changes; an error for a
host that failed, was unreachable or unknown. Host text is XML-escaped, and characters XML
cannot hold (terminal controls) are shown as escapes (\\x1b)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from agent.core.delta import ERRORS, RESOLVED
from agent.operate.output import terminal_safe

NOT_XML = re.compile("[\ud800-\udfff\ufffe\uffff]")  # no XML 1.0 document may hold these


def xml_text(text: str) -> str:
    """TEXT as XML 1.0 can hold it: controls as \\x1b escapes, newlines and tabs kept."""
    return NOT_XML.sub(lambda m: f"\\u{ord(m.group()):04x}", terminal_safe(text, newlines=True))


def change_label(change: Mapping[str, Any]) -> str:
    """How a change is named: role | task (module)."""
    role = f"{change['role']} | " if change.get("role") else ""
    return f"{role}{change['task']} ({change['module']})"


def render_junit(preview: Mapping[str, Any]) -> str:
    """Given preview data, return the JUnit XML document."""
    suites = ET.Element("testsuites", name="petkeeper preview")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for name, host in preview["hosts"].items():
        suite = _suite(name, host)
        suites.append(suite)
        for key in totals:
            totals[key] += int(suite.get(key, "0"))
    for key, value in totals.items():
        suites.set(key, str(value))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"


def _suite(name: str, host: Mapping[str, Any]) -> ET.Element:
    suite = ET.Element("testsuite", name=xml_text(name), hostname=xml_text(name))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}

    def case(label: str, classname: str) -> ET.Element:
        counts["tests"] += 1
        return ET.SubElement(suite, "testcase", name=xml_text(label),
                             classname=xml_text(classname))

    if host["status"] in ERRORS:
        counts["errors"] += 1
        ET.SubElement(case("check", name), "error", type=host["status"],
                      message=xml_text(f"{host['status']}: {host.get('message') or ''}"))
    for change in host.get("changes") or []:
        label = f"{change['kind']}: {change_label(change)}"
        test = case(label, f"{name}.{change.get('play') or 'play'}")
        if change["kind"] == RESOLVED:
            ET.SubElement(test, "system-out").text = "the base would change this; the head " \
                                                     "does not"
        elif change.get("check_blind"):
            counts["skipped"] += 1
            ET.SubElement(test, "skipped", message="check mode cannot tell whether this task "
                                                   "would change the host")
        else:
            counts["failures"] += 1
            failure = ET.SubElement(test, "failure", type=change["kind"],
                                    message=xml_text(f"{change['kind']}: would change "
                                                     f"{name} ({_where(change)})"))
            failure.text = xml_text(change.get("diff") or "")
    if not counts["tests"]:
        case("clean", name)
    for key, value in counts.items():
        suite.set(key, str(value))
    return suite


def _where(change: Mapping[str, Any]) -> str:
    return change.get("task_path") or "task outside the repository"
