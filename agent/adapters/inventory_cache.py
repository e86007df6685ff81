"""The inventory's listing, kept between cycles when nothing it depends on can have changed.

A static inventory (YAML or INI host files: none executable, none naming an inventory plugin
with a ``plugin:`` key, which ``constructed`` and every dynamic source need) lists the same
hosts and groups for the same files, limit, vault password, ansible.cfg and ansible-core: the
listing is kept in the state directory under a key of all of them and of the source commit, so
a no-change cycle starts no ansible-inventory. Any other inventory is listed every time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

import agent
from agent.adapters.inventory import Listing, list_inventory
from agent.adapters.process import Cancel
from agent.adapters.state import read_json, write_json
from agent.core.ansible_cfg import CFG_NAME
from agent.errors import StalledError

log = logging.getLogger(__name__)

KEPT = 8  # listings kept: one per limit in use, and a few commits' worth
VAR_FOLDERS = ("group_vars", "host_vars")  # variables only: no host or group comes from them
MAX_FILE = 4 * 1024 * 1024  # an inventory file larger than this is listed, not read here


def cached_listing(tree: Path, inventory: Path, limit: str | None, *, commit: str,
                   cache: Path, vault_password_file: str | None = None,
                   extra_env: Mapping[str, str] | None = None, cancel: Cancel = None) -> Listing:
    """list_inventory's answer, from CACHE when INVENTORY is static and was listed with the
    same key (agent.adapters.inventory.list_inventory runs otherwise, and a static answer is
    kept)."""
    files = static_files(inventory)
    if files is None:
        return list_inventory(tree, inventory, limit, vault_password_file, extra_env,
                              cancel=cancel)
    key = listing_key(commit=commit, inventory=str(inventory), files=files, limit=limit,
                      vault=_vault_identity(vault_password_file),
                      ansible_cfg=_digest_of(tree / CFG_NAME), env=dict(extra_env or {}),
                      ansible_core=_installed("ansible-core"), petkeeper=agent.__version__)
    kept = _read(cache)
    entry = kept.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("hosts"), dict):
        log.debug("inventory %s: listing kept from an earlier cycle", inventory.name)
        return Listing({h: tuple(g) for h, g in entry["hosts"].items()},
                       dict(entry.get("hostvars") or {}))
    listing = list_inventory(tree, inventory, limit, vault_password_file, extra_env,
                             cancel=cancel)
    kept = {k: v for k, v in kept.items() if k != key}
    kept[key] = {"hosts": {h: list(g) for h, g in listing.groups.items()},
                 "hostvars": {h: dict(v) for h, v in listing.hostvars.items()}}
    write_json(cache, dict(list(kept.items())[-KEPT:]))
    return listing


def _read(cache: Path) -> dict[str, Any]:
    """The kept listings; a damaged file is only a cache: it is listed again and rewritten."""
    try:
        kept = read_json(cache, {})
    except StalledError as e:
        log.warning("%s; the inventory is listed again", e)
        return {}
    return kept if isinstance(kept, dict) else {}


def listing_key(**parts: Any) -> str:
    """A digest of everything a static inventory's listing depends on."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def static_files(inventory: Path) -> dict[str, str] | None:
    """The digest of each file of INVENTORY (a file, or a folder of them), or None when any
    could run code or name a plugin: an executable, a YAML mapping with a `plugin:` key, an
    unreadable or a very large file."""
    if inventory.is_file():
        paths = [inventory]
    elif inventory.is_dir():
        paths = _files_of(inventory)
    else:
        return None
    digests = {}
    for path in paths:
        try:
            st = path.stat()
            if st.st_mode & 0o111 or st.st_size > MAX_FILE:
                return None
            data = path.read_bytes()
        except OSError:
            return None
        if _names_a_plugin(data):
            return None
        digests[str(path.relative_to(inventory.parent))] = hashlib.sha256(data).hexdigest()
    return digests


def _files_of(folder: Path) -> list[Path]:
    """The files of an inventory folder, its variable folders left out."""
    found: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in VAR_FOLDERS)
        found.extend(Path(root, name) for name in sorted(names))
    return found


def _names_a_plugin(data: bytes) -> bool:
    """Whether DATA is YAML (or JSON) naming an inventory plugin: `plugin: NAME` at the top.
    INI files and other text read as no mapping, or not at all: static."""
    try:
        parsed = yaml.safe_load(data)
    except yaml.YAMLError:
        return False
    return isinstance(parsed, dict) and "plugin" in parsed


def _vault_identity(path: str | None) -> list[Any] | None:
    """Which vault password file, and which version of it (never its content)."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return [path]
    return [path, st.st_ino, st.st_size, st.st_mtime_ns]


def _digest_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None
