"""agent.redact: credentials in URLs never reach a log line, a report or an error."""

from __future__ import annotations

import pytest

from agent.redact import redact_text


@pytest.mark.parametrize(("text", "redacted"), [
    ("https://deploy:hunter2-canary@git.example.com/ops/pets.git",
     "https://***@git.example.com/ops/pets.git"),
    ("https://ghp_hunter2canary@github.com/ops/pets.git", "https://***@github.com/ops/pets.git"),
    ("ssh://git@git.example.com:2222/ops/pets.git", "ssh://***@git.example.com:2222/ops/pets.git"),
    ("https://u:p%40ss%2Fw0rd@host:8443/x", "https://***@host:8443/x"),
    ("HTTPS://User:Secret@Host/Repo", "HTTPS://***@Host/Repo"),
    ("git+ssh://me:pw@host/r", "git+ssh://***@host/r"),
])
def test_url_credentials_are_replaced(text: str, redacted: str):
    assert redact_text(text) == redacted


def test_every_url_in_free_text_is_redacted_and_the_rest_kept():
    text = ("fatal: unable to access 'https://bot:tok3n-canary@git.example.com/pets.git/': "
            "Could not resolve host; mirror ssh://ops:pa55-canary@backup/pets.git also failed")

    redacted = redact_text(text)

    assert redacted == ("fatal: unable to access 'https://***@git.example.com/pets.git/': "
                        "Could not resolve host; mirror ssh://***@backup/pets.git also failed")
    assert "canary" not in redacted


@pytest.mark.parametrize("text", [
    "file:///srv/git/pets.git", "https://git.example.com/ops/pets.git",
    "git@github.com:ops/pets.git",  # scp-like: a user name, no password, no scheme
    "https://host/path/with@sign/v1", "/srv/git/pets@2024.git", "no url here: a@b", ""])
def test_text_without_url_credentials_is_unchanged(text: str):
    assert redact_text(text) == text


def test_redacting_twice_changes_nothing_more():
    once = redact_text("https://u:p@host/x and https://v:q@other/y")

    assert redact_text(once) == once
