"""ansible-core's vault, behind one module: the values a repo keeps encrypted, so that reports
can mask them (Ansible shows a vaulted variable in clear in a template's diff)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from agent.core.redact import leaf_strings
from agent.core.schema import load_yaml

log = logging.getLogger(__name__)

VAULT_HEADER = b"$ANSIBLE_VAULT;"
# An inline `!vault |` scalar: the header and hex lines, indented under the key.
INLINE = re.compile(r"!vault\s*\|[-+]?[ \t]*\n((?:[ \t]+\S[^\n]*(?:\n|$))+)")
MAX_FILE = 1 << 20  # vars files are small; a big file is data, not vault


def vault_values(tree: Path, password_file: str | None) -> set[str]:
    """Every value held vault-encrypted in TREE (whole files and inline `!vault` scalars),
    decrypted with PASSWORD_FILE. What cannot be decrypted is skipped: Ansible cannot show it
    either."""
    if not password_file:
        return set()
    found = list(_encrypted(tree))
    if not found:
        return set()
    from ansible.parsing.dataloader import DataLoader  # heavy: only when there is vault data
    from ansible.parsing.vault import VaultLib, get_file_vault_secret

    try:
        secret = get_file_vault_secret(filename=password_file, vault_id="default",
                                       loader=DataLoader())
        secret.load()
    except Exception as e:  # the check itself reports a bad password file
        log.warning("vault password file %s unusable (%s): vaulted values cannot be masked, "
                    "nor used by Ansible", password_file, type(e).__name__)
        return set()
    vault = VaultLib([("default", secret)])
    values: set[str] = set()
    for whole_file, ciphertext in found:
        try:
            plain = vault.decrypt(ciphertext).decode(errors="replace")
        except Exception:  # another vault id or password: Ansible fails on it, visibly
            continue
        values.add(plain.strip("\n") if not whole_file else plain)
        if whole_file:
            values |= leaf_strings(_load(plain))
    return {v for v in values if v.strip()}


def _encrypted(tree: Path) -> Iterator[tuple[bool, bytes]]:
    """(whole file?, ciphertext) for each vault blob in TREE's regular files."""
    for root, dirs, files in os.walk(tree):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in files:
            path = Path(root, name)
            try:
                if path.is_symlink() or path.stat().st_size > MAX_FILE:
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            if VAULT_HEADER not in data:
                continue
            if data.lstrip().startswith(VAULT_HEADER):
                yield True, data.strip()
                continue
            for m in INLINE.finditer(data.decode(errors="replace")):
                lines = [ln.strip() for ln in m.group(1).splitlines() if ln.strip()]
                if lines and lines[0].startswith(VAULT_HEADER.decode()):
                    yield False, "\n".join(lines).encode()


def _load(text: str) -> Any:
    try:
        return load_yaml(text)
    except yaml.YAMLError:  # e.g. Ansible's own tags: the whole text is masked anyway
        return None

