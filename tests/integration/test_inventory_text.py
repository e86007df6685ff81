"""Any text as the inventory file, read by the real ansible-inventory through list_hosts: the
hosts with their groups, or one clear error naming the file; never a traceback.

A property test (Hypothesis) with few examples: each one starts ansible-inventory (a second or
so), which is why it lives here and not with the pure parser's in tests/unit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.adapters.inventory import list_hosts
from agent.errors import RepoError

INVENTORY = "inventory/hosts.yml"
names = st.sampled_from(["web1", "db1", "all", "ungrouped", "web", "pets", "localhost",
                         "web[1:3]", "db-1.example.com"]) | st.text(max_size=6)
groups = st.recursive(
    st.fixed_dictionaries({}, optional={
        "hosts": st.dictionaries(names, st.none() | st.dictionaries(names, names, max_size=2),
                                 max_size=3) | names,
        "vars": st.dictionaries(names, names | st.integers(), max_size=2)}),
    lambda inner: st.fixed_dictionaries({}, optional={
        "children": st.dictionaries(names, inner | st.none(), max_size=3),
        "hosts": st.dictionaries(names, st.none(), max_size=2)}),
    max_leaves=6)
INI = ["[", "]", "web", "db", ":children", ":vars", "\n", " ", "=", "web1", "db1",
       "ansible_host=127.0.0.1", "[web]", "[pets:children]", "#", "web[1:3]", "\t"]
inventory_text = (st.dictionaries(names, groups | st.none() | names, max_size=3).map(
    lambda d: yaml.safe_dump(d, allow_unicode=True))
                  | st.lists(st.sampled_from(INI), max_size=25).map("".join)
                  | st.text(max_size=40))


@settings(max_examples=15, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(inventory_text, st.none() | st.sampled_from(["all", "web*", "nothere", "web1:&db",
                                                    "!db1", "web[0]", "~(", ","]))
@example("all: [\n", None)  # YAML that Ansible cannot parse
@example("all:\n  children:\n    web:\n      hosts: {web1: {}}\n", "web1")
@example("[web]\nweb1\n[pets:children]\nweb\n", "nothere")
@example("", None)
def test_any_text_as_the_inventory_lists_hosts_or_is_one_error_naming_the_file(
        tmp_path_factory: pytest.TempPathFactory, text: str, limit: str | None):
    tree = tmp_path_factory.mktemp("tree", numbered=True)
    path = tree / INVENTORY
    path.parent.mkdir()
    path.write_text(text, errors="surrogatepass")
    try:
        hosts = list_hosts(tree, path, limit)
    except RepoError as e:
        assert "\n" not in str(e) and str(e).startswith(f"{INVENTORY}: "), str(e)
        assert "Traceback" not in str(e)
        return
    assert all(isinstance(h, str) and isinstance(g, tuple) and
               all(isinstance(x, str) for x in g) for h, g in hosts.items())


def test_a_nested_yaml_inventory_lists_each_host_with_all_its_groups(tmp_path: Path):
    path = tmp_path / INVENTORY
    path.parent.mkdir()
    path.write_text("all:\n  children:\n    pets:\n      children:\n        web:\n"
                    "          hosts: {web1: {}}\n        db:\n          hosts: {db1: {}}\n")

    assert list_hosts(tmp_path, path, None) == {"db1": ("db", "pets"), "web1": ("pets", "web")}
    assert list_hosts(tmp_path, path, "web") == {"web1": ("pets", "web")}
