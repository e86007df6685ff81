"""adapters/vault: the values a repo keeps vault-encrypted, found and decrypted for masking."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.adapters.vault import vault_values

VAULT = [str(Path(sys.executable).parent / "ansible-vault")]


@pytest.fixture
def password(tmp_path: Path) -> Path:
    path = tmp_path / "vault_pass"
    path.write_text("correct horse\n")
    return path


def encrypt_string(value: str, name: str, password: Path) -> str:
    return subprocess.run([*VAULT, "encrypt_string", "--vault-password-file", str(password),
                           value, "--name", name], capture_output=True, text=True, check=True,
                          timeout=60).stdout


def test_inline_and_whole_file_vault_values_are_found(tmp_path: Path, password: Path):
    tree = tmp_path / "repo"
    (tree / "group_vars" / "all").mkdir(parents=True)
    (tree / "group_vars" / "all" / "vars.yml").write_text(
        "plain: visible\n" + encrypt_string("inline-canary-1", "db_password", password))
    secret_file = tree / "group_vars" / "all" / "vault.yml"
    secret_file.write_text("api_token: file-canary-2\nnested: {key: file-canary-3}\n")
    subprocess.run([*VAULT, "encrypt", "--vault-password-file", str(password),
                    str(secret_file)], check=True, capture_output=True, timeout=60)
    assert "file-canary" not in secret_file.read_text()

    values = vault_values(tree, str(password))

    assert {"inline-canary-1", "file-canary-2", "file-canary-3"} <= values
    assert "visible" not in values


def test_no_password_file_or_no_vault_data_means_nothing_to_mask(tmp_path: Path,
                                                                  password: Path):
    (tmp_path / "site.yml").write_text("- hosts: all\n")
    assert vault_values(tmp_path, None) == set()
    assert vault_values(tmp_path, str(password)) == set()


def test_a_wrong_password_skips_what_it_cannot_decrypt(tmp_path: Path, password: Path):
    (tmp_path / "vars.yml").write_text(encrypt_string("never-shown", "x", password))
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password\n")
    assert vault_values(tmp_path, str(wrong)) == set()
    assert vault_values(tmp_path, str(tmp_path / "missing")) == set()
