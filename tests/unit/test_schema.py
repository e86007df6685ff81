"""agent.core.schema: typed reads from parsed YAML, every problem with its key path."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from agent.core.schema import (
    Problems,
    Section,
    load_yaml,
    parse_duration,
    printable_key,
    yaml_problem,
)
from agent.errors import ConfigError


def read(data: dict[str, Any], known: set[str], reads: dict[str, tuple[str, Any]]
         ) -> tuple[dict[str, Any], list[str]]:
    """Read DATA as a section "s." with KNOWN keys; READS maps key -> (method, default)."""
    p = Problems("agent.yml")
    section = Section(p, data, "s.", known)
    values = {}
    for key, (method, default) in reads.items():
        reader = getattr(section, method)
        if method in ("duration", "boolean"):
            values[key] = reader(key, default)
        elif method == "integer":
            values[key] = reader(key, default, minimum=1)
        else:
            values[key] = reader(key)
    return values, p.items


def test_every_problem_of_a_section_is_collected_with_its_key_path_and_fix():
    values, problems = read(
        {"timout": "5m", "forks": 0, "push": "yes", "name": ["a"], "every": "soon"},
        {"timeout", "forks", "push", "name", "every"},
        {"forks": ("integer", 5), "push": ("boolean", True), "name": ("string", None),
         "every": ("duration", 60.0)})

    assert values == {"forks": 5, "push": True, "name": None, "every": 60.0}  # the defaults
    assert problems == [
        "agent.yml: s.timout: unknown key; did you mean s.timeout?",
        "agent.yml: s.forks: expected a whole number >= 1, got 0; set s.forks to e.g. 5",
        "agent.yml: s.push: expected true or false, got 'yes'; set s.push: true or false",
        "agent.yml: s.name: expected a string, got a list; write s.name as a single value",
        'agent.yml: s.every: expected a duration like "15m", got \'soon\'; use a number with '
        's, m, h or d, e.g. "90s", "15m", "24h"']
    Problems("agent.yml").raise_if_any()  # nothing to say: no error
    p = Problems("agent.yml")
    p.add("k", "bad", "fix it")
    with pytest.raises(ConfigError) as e:
        p.raise_if_any()
    assert e.value.problems == ["agent.yml: k: bad; fix it"]


def test_a_list_of_strings_may_be_one_comma_separated_string_as_on_the_command_line():
    p = Problems("agent.yml")
    section = Section(p, {"tags": "a, b,,c", "vars": "x=1,y=2", "n": [1, "b"]}, "",
                      {"tags", "vars", "n"})

    assert section.strings("tags") == ["a", "b", "c"]
    assert section.strings("vars", split=False) == ["x=1,y=2"]
    assert section.strings("n") == ["1", "b"]
    assert p.items == []


@pytest.mark.parametrize(("value", "seconds"), [
    ("90s", 90.0), ("15m", 900.0), ("24h", 86400.0), ("2d", 172800.0), (30, 30.0),
    ("45", 45.0), (" 1.5h ", 5400.0), (2.5, 2.5), (0, 0.0)])
def test_durations_are_read_as_seconds(value: Any, seconds: float):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "15 minutes", "-5m", -5, "", "1w", True, None,
                                   [15], "m", "3651d", 1e400])
def test_invalid_durations_are_none(value: Any):
    assert parse_duration(value) is None


@pytest.mark.parametrize(("text", "problem"), [
    ("a: [1,", "not valid YAML at line 1, column 7: expected the node content"),
    ("a: !!bool maybe", "a tagged value cannot be read"),
    ("[" * 5000, "nested too deeply")])
def test_unreadable_yaml_is_one_yaml_error_with_a_one_line_problem(text: str, problem: str):
    with pytest.raises(yaml.YAMLError) as e:
        load_yaml(text)
    assert problem in yaml_problem(e.value) and "\n" not in yaml_problem(e.value)


@pytest.mark.parametrize(("key", "shown"), [
    ("repo", "repo"), (" repo", "' repo'"), ("a\nb", "'a\\nb'"), ("", "''"), (12, "12")])
def test_keys_are_shown_as_written_or_quoted_when_they_would_break_the_line(key: Any,
                                                                           shown: str):
    assert printable_key(key) == shown
