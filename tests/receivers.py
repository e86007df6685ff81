"""Real receivers of notifications on loopback: an HTTP server for webhooks (CloudEvents) and an
SMTP server (aiosmtpd) for Apprise's mailto://. Each records what it received."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

HANG_LIMIT = 120.0  # a hanging answer gives up after this, so a test never leaks a thread


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int  # the status the receiver answered with (0: it hung)
    at: float  # when it arrived (time.monotonic())

    def event(self) -> BaseCloudEvent:
        """The request parsed by the cloudevents SDK (which validates the required
        attributes), as a receiver would."""
        return from_http_event(HTTPMessage(headers=self.headers, body=self.body))

    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    """A webhook receiver on 127.0.0.1: answers `status` (202), or hangs when `hang` is set."""

    def __init__(self, status: int = 202) -> None:
        self.status, self.hang = status, False
        self.received: list[Received] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                at = time.monotonic()
                if receiver.hang:
                    receiver.received.append(Received(self.path, headers, body, 0, at))
                    receiver.release.wait(HANG_LIMIT)
                    return
                status = receiver.status
                receiver.received.append(Received(self.path, headers, body, status, at))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def accepted(self) -> list[Received]:
        return [r for r in self.received if 200 <= r.answered < 300]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.raw: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.raw.append(envelope.content)
        self.messages.append(email.message_from_bytes(  # type: ignore[arg-type]
            envelope.content, policy=email.policy.default))
        return "250 OK: queued as petkeeper-test"


class SmtpReceiver:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that takes one login, USER:PASSWORD, over
    plain text (loopback only), and keeps every message."""

    def __init__(self, user: str, password: str) -> None:
        self.mailbox = _Mailbox()

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                         auth_data: Any) -> AuthResult:
            ok = isinstance(auth_data, LoginPassword) and \
                auth_data.login.decode() == user and auth_data.password.decode() == password
            return AuthResult(success=ok, handled=False)

        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=free_port(),
                                     authenticator=authenticate, auth_require_tls=False,
                                     auth_required=False)
        self.controller.start()

    @property
    def port(self) -> int:
        return int(self.controller.port)

    @property
    def messages(self) -> list[EmailMessage]:
        return self.mailbox.messages

    def close(self) -> None:
        self.controller.stop()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for servers that cannot be given port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll PREDICATE until it holds (generous deadline); fail naming WHAT."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
