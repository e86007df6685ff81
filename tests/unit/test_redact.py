"""agent.core.redact: credentials in URLs never reach a log line, a report or an error."""

from __future__ import annotations

import pytest

from agent.core.redact import Masker, leaf_strings, redact_text, url_secrets


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


# -- masks ------------------------------------------------------------------------------------

KEY = b"k" * 32


def test_each_secret_gets_its_own_stable_mask_and_disappears():
    mask = Masker({"hunter22-alpha", "s3cr3t-beta"}, KEY)
    text = "password=hunter22-alpha\ntoken=s3cr3t-beta\nagain hunter22-alpha"
    masked = mask(text)
    assert "hunter22" not in masked and "s3cr3t" not in masked
    alpha, beta = mask("hunter22-alpha"), mask("s3cr3t-beta")
    assert alpha != beta and alpha.startswith("<secret:") and masked.count(alpha) == 2
    assert Masker({"hunter22-alpha"}, KEY)("hunter22-alpha") == alpha  # stable under one key
    assert Masker({"hunter22-alpha"}, b"x" * 32)("hunter22-alpha") != alpha  # keyed


def test_a_changed_secret_stays_visible_as_a_changed_mask_in_a_diff():
    mask = Masker({"old-password", "new-password"}, KEY)
    diff = mask("-password: old-password\n+password: new-password\n")
    minus, plus = diff.splitlines()
    assert minus.removeprefix("-") != plus.removeprefix("+")
    assert "old-password" not in diff and "new-password" not in diff


def test_the_longest_secret_wins_where_one_contains_another():
    mask = Masker({"abcd", "abcdefgh"}, KEY)
    assert mask("abcdefgh") == mask.masks["abcdefgh"]


def test_each_line_of_a_multiline_secret_is_masked_in_a_diff():
    key_text = "-----BEGIN KEY-----\nAAAAsecretline1\nBBBBsecretline2\n-----END KEY-----"
    mask = Masker({key_text}, KEY)
    diff = "\n".join("+" + line for line in key_text.splitlines())
    masked = mask(diff)
    assert "secretline" not in masked and "BEGIN KEY" not in masked
    assert mask(key_text) == mask.masks[key_text]


def test_values_too_short_to_mask_are_left_alone():
    mask = Masker({"yes", ""}, KEY)
    assert mask("yes, it is") == "yes, it is" and mask.masks == {}


def test_no_secrets_masks_nothing():
    assert Masker((), KEY)("anything at all") == "anything at all"


@pytest.mark.parametrize(("url", "secrets"), [
    ("https://deploy:pa%40ss@git.example.org/pets.git", {"pa@ss"}),
    ("https://ghp_TOKEN1234@github.example/pets.git", {"ghp_TOKEN1234"}),
    ("ssh://git@git.example.org/pets.git", {"git"}),
    ("file:///srv/git/pets.git", set()),
    ("/srv/git/pets.git", set()),
])
def test_url_secrets_are_the_password_or_the_token(url, secrets):
    assert url_secrets(url) == secrets


def test_leaf_strings_walk_nested_data_but_skip_booleans_and_nulls():
    data = {"a": ["x1", {"b": 12345}], "c": True, "d": None, "e": 1.5}
    assert leaf_strings(data) == {"x1", "12345", "1.5"}
