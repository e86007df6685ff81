"""Plain webhooks: one CloudEvents 1.0 event per HTTP POST (structured mode), standard library
only.

A webhook's URL often carries its token (in the path or the query), so the URL is never part
of an answer or an error: they say what the receiver answered, nothing of where it is.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any

CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"  # CloudEvents' JSON format, 3.1
USER_AGENT = "petkeeper"


@dataclass(frozen=True)
class Answer:
    ok: bool
    text: str  # what the receiver answered, e.g. "HTTP 202 Accepted" or "timed out"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a new address: following it could carry the event (and
    the token in the URL's query) to another host."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post_event(url: str, event: Mapping[str, Any], timeout: float) -> Answer:
    """POST EVENT to URL as structured-mode CloudEvents JSON; 2xx is delivered."""
    body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": CONTENT_TYPE, "User-Agent": USER_AGENT})
    try:
        with _OPENER.open(request, timeout=max(timeout, 0.1)) as response:
            response.read(65536)
            return Answer(200 <= response.status < 300,
                          f"HTTP {response.status} {response.reason}".strip())
    except urllib.error.HTTPError as e:
        with e:
            return Answer(False, f"HTTP {e.code} {e.reason}".strip())
    except urllib.error.URLError as e:
        return Answer(False, _reason(e.reason))
    except TimeoutError:
        return Answer(False, f"no answer within {timeout:.0f}s")
    except (OSError, HTTPException) as e:
        return Answer(False, _reason(e))


def _reason(reason: object) -> str:
    """The cause of a failed connection. urllib does not put the URL there; the caller masks
    the URL's parts in every answer all the same."""
    if isinstance(reason, TimeoutError):
        return "no answer in time"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__
