"""adapters/runner: the pty ansible-runner runs ansible-playbook under is closed without
ptyprocess's pause once ansible-playbook has been reaped (the end of every run); a child still
alive is closed as before, pause and all. Real processes under real ptys; the pauses are
recorded (ptyprocess's own time.sleep, spied on), not timed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import ptyprocess
import ptyprocess.ptyprocess
import pytest

from agent.adapters.runner import _close_reaped_ptys_at_once

PAUSE = 0.1  # ptyprocess's delayafterclose


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The pauses ptyprocess takes, each still taken."""
    taken: list[float] = []
    sleep = time.sleep

    def spy(seconds: float) -> None:
        taken.append(seconds)
        sleep(seconds)

    monkeypatch.setattr(ptyprocess.ptyprocess.time, "sleep", spy)
    yield taken


def test_the_pty_of_a_reaped_child_closes_without_ptyprocess_pause(pauses) -> None:
    _close_reaped_ptys_at_once()
    child = ptyprocess.PtyProcess.spawn(["true"])
    assert child.wait() == 0  # reaped, as ansible-runner's loop leaves ansible-playbook
    assert child.delayafterclose == PAUSE

    child.close()

    assert PAUSE not in pauses and max(pauses, default=0) == 0
    assert child.closed and child.exitstatus == 0


def test_the_pty_of_a_live_child_still_pauses_then_ends_the_child(pauses) -> None:
    _close_reaped_ptys_at_once()
    child = ptyprocess.PtyProcess.spawn(["sleep", "60"])
    try:
        child.close()

        assert PAUSE in pauses
        assert child.closed and not child.isalive()
        assert child.signalstatus is not None  # ended by close, not by itself
    finally:
        if child.isalive():
            child.kill(9)
