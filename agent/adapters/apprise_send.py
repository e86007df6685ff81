"""Apprise, and only here: one message to a person's chat, mail or push service per call.

Apprise knows a hundred services by their URL (slack://, mailto://, ntfy://, ...). Those URLs
hold tokens and passwords, and Apprise logs them (an URL it cannot load is logged whole, its
debug lines show the request URL), so its logger is cut off from ours: what it said is taken
from each call's result and passes the caller's mask before anyone sees it. The body is sent
as plain text; Apprise escapes it for services that read HTML or Markdown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

# Apprise's own loggers (and urllib3's, which logs each request's path, where webhook tokens
# live) reach no handler of ours: their lines are read from the result and masked.
for _name in ("apprise", "urllib3"):
    _logger = logging.getLogger(_name)
    _logger.propagate = False
    if not any(isinstance(h, logging.NullHandler) for h in _logger.handlers):
        _logger.addHandler(logging.NullHandler())
# Apprise's INFO lines say what a service answered ("Sent Email to ..."): kept for the result.
logging.getLogger("apprise").setLevel(logging.INFO)

KINDS = ("info", "success", "warning", "failure")  # Apprise's notify types


@dataclass(frozen=True)
class Answer:
    ok: bool
    text: str  # what the service answered (masked), e.g. "sent" or "connection error ..."


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def url_problem(url: str, mask: Callable[[str], str]) -> str | None:
    """Why Apprise cannot send to URL (masked), or None when it can."""
    import apprise  # here: a CLI run without notification targets does not load it (0.2 s)
    from apprise.manager_plugins import NotificationManager

    logger, capture = logging.getLogger("apprise"), _Capture()
    logger.addHandler(capture)
    try:
        loaded = apprise.Apprise().add(url)
    except Exception as e:  # a plugin that breaks on import, e.g. a stray module in sys.path
        return f"Apprise could not read it ({type(e).__name__}: {mask(str(e))})"
    finally:
        logger.removeHandler(capture)
    if loaded:
        return None
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        return f"Apprise knows no service at this {scheme}:// address (for a plain webhook " \
               "set format: cloudevents)"
    if scheme not in NotificationManager():  # a singleton: the plugins load once
        return f"Apprise has no service with the scheme {scheme}://"
    said = [mask(line).rstrip(".") for line in capture.lines if "URL" not in line]
    return f"Apprise cannot read this {scheme}:// URL" + (f": {said[0]}" if said else "")


def send_message(url: str, title: str, body: str, kind: str, timeout: float,
                 mask: Callable[[str], str]) -> Answer:
    """Send one plain-text message through Apprise to URL, giving up after TIMEOUT seconds."""
    import apprise

    service = apprise.Apprise()
    if not service.add(url):
        return Answer(False, url_problem(url, mask) or "Apprise cannot read the URL")
    result = service.notify(body=body, title=title, notify_type=kind if kind in KINDS else "info",
                            body_format=apprise.NotifyFormat.TEXT, timeout=max(timeout, 0.1),
                            log_level=logging.INFO)
    said = [(entry.level, mask(entry.message)) for entry in result.logs()]
    if result:
        sent = [text for level, text in said if level == "INFO" and "sent" in text.lower()]
        return Answer(True, sent[-1] if sent else "sent")
    problems = [text for level, text in said if level in ("WARNING", "ERROR")]
    status = getattr(result.status, "name", str(result.status)).lower()
    return Answer(False, problems[0] if problems else f"not sent ({status})")
