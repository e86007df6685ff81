"""Keep secrets out of everything Petkeeper writes: pure functions over text."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def redact_text(text: str) -> str:
    """Given a URL or free text (an error, a log line), return it with every URL's
    user:password replaced by '***'."""
    return URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}***@", text)


MIN_SECRET = 4  # shorter values cannot be masked without garbling every diff


class Masker:
    """Replace each known secret value in a text by its mask: distinct per value (a change of
    a secret stays visible in a diff), stable under one key, and not reversible."""

    def __init__(self, secrets: Iterable[str], key: bytes) -> None:
        self.masks: dict[str, str] = {}
        for secret in sorted(set(secrets)):
            if len(secret) < MIN_SECRET:
                continue
            tag = hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()[:10]
            self.masks[secret] = f"<secret:{tag}>"
            lines = [ln for ln in secret.splitlines() if len(ln.strip()) >= MIN_SECRET]
            for i, line in enumerate(lines if len(lines) > 1 else (), 1):
                self.masks.setdefault(line, f"<secret:{tag}:{i}>")  # a diff shows lines
        longest_first = sorted(self.masks, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, longest_first))) if longest_first \
            else None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(lambda m: self.masks[m.group(0)], text)


def url_secrets(url: str) -> set[str]:
    """The password (or token) in a URL's user info, if any."""
    m = URL_CREDENTIALS.match(url.strip())
    if not m:
        return set()
    user, _, password = m["userinfo"].partition(":")
    return {unquote(password)} if password else {unquote(user)}


def leaf_strings(data: Any) -> set[str]:
    """Every string or number inside DATA (nested dicts and lists), as text."""
    if isinstance(data, dict):
        return set().union(*map(leaf_strings, data.values())) if data else set()
    if isinstance(data, list):
        return set().union(*map(leaf_strings, data)) if data else set()
    if isinstance(data, str | int | float) and not isinstance(data, bool):
        return {str(data)}
    return set()
