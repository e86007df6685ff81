"""sd_notify(3) without a dependency: one datagram to $NOTIFY_SOCKET per message.

Outside systemd (no NOTIFY_SOCKET) every call does nothing, so the daemon runs the same in a
terminal, under another supervisor, or in a test that binds its own socket.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send MESSAGE ("READY=1", "STATUS=...", newline-separated pairs) to the service manager;
    return whether it was sent. A failure is logged, never raised: notification is advisory."""
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    target = build_address(address)
    if target is None:
        log.warning("NOTIFY_SOCKET=%r: neither a path nor an abstract (@) name; not notifying",
                    address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(message.encode())
    except OSError as e:
        log.warning("cannot notify the service manager at %s: %s", address, e.strerror or e)
        return False
    return True


def build_address(value: str) -> str | None:
    """Given $NOTIFY_SOCKET, return the AF_UNIX address: a path, or "\\0name" for "@name"."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when the watchdog is
    off or meant for another process ($WATCHDOG_PID)."""
    env = os.environ if env is None else env
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None
