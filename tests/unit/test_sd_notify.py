"""agent.daemon.sd_notify: sd_notify datagrams to a real socket, path and abstract names."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from agent.daemon.sd_notify import build_address, notify, watchdog_interval


def test_notify_sends_one_datagram_to_a_path_socket(tmp_path: Path):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        assert notify("READY=1\nSTATUS=starting", {"NOTIFY_SOCKET": str(path)})
        assert server.recv(4096) == b"READY=1\nSTATUS=starting"


def test_notify_reaches_an_abstract_socket_named_with_at():
    name = f"petkeeper-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert server.recv(4096) == b"WATCHDOG=1"


def test_notify_without_socket_does_nothing():
    assert notify("READY=1", {}) is False


def test_notify_to_a_missing_socket_is_logged_not_raised(tmp_path: Path, caplog):
    assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent")}) is False
    assert "cannot notify" in caplog.text


@pytest.mark.parametrize(("value", "address"), [
    ("/run/systemd/notify", "/run/systemd/notify"), ("@abc", "\0abc"), ("@", None),
    ("relative", None)])
def test_build_address(value: str, address: str | None):
    assert build_address(value) == address


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process():
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}) \
        == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
