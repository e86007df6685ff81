"""Keep secrets out of everything Petkeeper writes: pure functions over text."""

from __future__ import annotations

import re

URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def redact_text(text: str) -> str:
    """Given a URL or free text (an error, a log line), return it with every URL's
    user:password replaced by '***'."""
    return URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}***@", text)
