"""agent.adapters.inventory_cache: a static inventory's listing kept per commit, inventory,
limit, vault password, ansible.cfg and ansible-core; any other inventory listed every time.

ansible-inventory itself is replaced here by a recorder of the calls (what is under test is
when it is called); tests/integration/test_accelerator.py counts real calls in real cycles.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.adapters import inventory_cache
from agent.adapters.inventory import Listing
from agent.adapters.inventory_cache import cached_listing, static_files

YAML_INVENTORY = "all:\n  children:\n    web:\n      hosts:\n        web1: {}\n"
INI_INVENTORY = "[web]\nweb1 ansible_host=127.0.0.1\n\n[db]\ndb1\n"


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The calls that reach ansible-inventory; each lists web1 in the group web."""
    made: list[tuple[Any, ...]] = []

    def list_inventory(tree: Path, inventory: Path, limit: str | None, *rest: Any,
                       cancel: Any = None) -> Listing:
        made.append((inventory.name, limit, *rest))
        return Listing({"web1": ("web",)}, {"web1": {"ansible_host": "127.0.0.1"}})

    monkeypatch.setattr(inventory_cache, "list_inventory", list_inventory)
    return made


def tree_with(tmp_path: Path, files: dict[str, str], mode: int = 0o644) -> Path:
    tree = tmp_path / "tree"
    for name, text in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
        os.chmod(tree / name, mode)
    return tree


def listing(tree: Path, name: str, cache: Path, **kw: Any) -> dict[str, tuple[str, ...]]:
    return dict(full_listing(tree, name, cache, **kw).groups)


def full_listing(tree: Path, name: str, cache: Path, **kw: Any) -> Listing:
    return cached_listing(tree, tree / name, kw.pop("limit", "web"),
                          commit=kw.pop("commit", "a"), cache=cache, **kw)


@pytest.mark.parametrize("name, text", [("hosts.yml", YAML_INVENTORY), ("hosts", INI_INVENTORY),
                                        ("hosts.json", '{"all": {"hosts": {"web1": {}}}}')])
def test_a_static_inventory_is_listed_once_per_key(tmp_path: Path, calls: list, name: str,
                                                   text: str):
    tree = tree_with(tmp_path, {name: text})
    cache = tmp_path / "state" / "listings.json"
    cache.parent.mkdir()

    first = full_listing(tree, name, cache)
    again = full_listing(tree, name, cache)

    assert first == again == Listing({"web1": ("web",)}, {"web1": {"ansible_host": "127.0.0.1"}})
    assert len(calls) == 1
    assert oct(cache.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("change", ["commit", "limit", "inventory file", "ansible.cfg",
                                    "vault password", "galaxy paths"])
def test_anything_the_listing_depends_on_lists_it_again(tmp_path: Path, calls: list,
                                                        change: str):
    tree = tree_with(tmp_path, {"hosts.yml": YAML_INVENTORY, "ansible.cfg": "[defaults]\n"})
    vault = tmp_path / "vault_pass"
    vault.write_text("one")
    cache = tmp_path / "listings.json"
    kw: dict[str, Any] = {"vault_password_file": str(vault), "extra_env": {"A": "1"}}
    listing(tree, "hosts.yml", cache, **kw)

    if change == "commit":
        kw["commit"] = "b"
    elif change == "limit":
        kw["limit"] = "db"
    elif change == "inventory file":
        (tree / "hosts.yml").write_text(YAML_INVENTORY.replace("web1", "web2"))
    elif change == "ansible.cfg":
        (tree / "ansible.cfg").write_text("[inventory]\nenable_plugins = yaml\n")
    elif change == "vault password":
        vault.write_text("a new password")
    else:
        kw["extra_env"] = {"A": "2"}
    listing(tree, "hosts.yml", cache, **kw)

    assert len(calls) == 2


def test_the_vault_password_itself_never_reaches_the_cache(tmp_path: Path, calls: list):
    tree = tree_with(tmp_path, {"hosts.yml": YAML_INVENTORY})
    vault = tmp_path / "vault_pass"
    vault.write_text("hunter2-canary")
    cache = tmp_path / "listings.json"

    listing(tree, "hosts.yml", cache, vault_password_file=str(vault))

    assert "hunter2" not in cache.read_text()


@pytest.mark.parametrize("files, mode", [
    ({"hosts.yml": "plugin: constructed\nstrict: true\n"}, 0o644),
    ({"aws_ec2.yml": "plugin: amazon.aws.aws_ec2\nregions: [eu-west-1]\n"}, 0o644),
    ({"hosts.py": "#!/usr/bin/env python3\nprint('{}')\n"}, 0o755),
], ids=["constructed", "plugin", "executable"])
def test_a_dynamic_inventory_is_listed_every_time(tmp_path: Path, calls: list,
                                                  files: dict[str, str], mode: int):
    tree = tree_with(tmp_path, files, mode)
    name = next(iter(files))

    listing(tree, name, tmp_path / "listings.json")
    listing(tree, name, tmp_path / "listings.json")

    assert len(calls) == 2
    assert static_files(tree / name) is None


def test_an_inventory_folder_is_static_only_when_each_of_its_files_is(tmp_path: Path):
    tree = tree_with(tmp_path, {"inv/hosts.yml": YAML_INVENTORY,
                                "inv/group_vars/all.yml": "plugin: not a plugin, a variable\n",
                                "inv/more.ini": INI_INVENTORY})

    assert sorted(static_files(tree / "inv") or {}) == ["inv/hosts.yml", "inv/more.ini"]
    (tree / "inv/cloud.yml").write_text("plugin: amazon.aws.aws_ec2\n")
    assert static_files(tree / "inv") is None


def test_a_damaged_cache_is_listed_again_and_rewritten(tmp_path: Path, calls: list):
    tree = tree_with(tmp_path, {"hosts.yml": YAML_INVENTORY})
    cache = tmp_path / "listings.json"
    cache.write_text("{not json")

    assert listing(tree, "hosts.yml", cache) == {"web1": ("web",)}
    assert listing(tree, "hosts.yml", cache) == {"web1": ("web",)}
    assert len(calls) == 1


def test_only_the_latest_listings_are_kept(tmp_path: Path, calls: list):
    tree = tree_with(tmp_path, {"hosts.yml": YAML_INVENTORY})
    cache = tmp_path / "listings.json"

    for i in range(inventory_cache.KEPT + 3):
        listing(tree, "hosts.yml", cache, commit=str(i))

    import json
    assert len(json.loads(cache.read_text())) == inventory_cache.KEPT
    listing(tree, "hosts.yml", cache, commit=str(inventory_cache.KEPT + 2))
    assert len(calls) == inventory_cache.KEPT + 3
