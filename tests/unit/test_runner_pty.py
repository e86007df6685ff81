"""adapters/runner: the pty ansible-runner runs ansible-playbook under is closed without
ptyprocess's pause once ansible-playbook has been reaped (the end of every run); a child still
alive is closed as before, pause and all. Real processes under real ptys."""

from __future__ import annotations

import time

import ptyprocess

from agent.adapters.runner import _close_reaped_ptys_at_once

PAUSE = 0.1  # ptyprocess's delayafterclose


def test_the_pty_of_a_reaped_child_closes_without_ptyprocess_pause() -> None:
    _close_reaped_ptys_at_once()
    child = ptyprocess.PtyProcess.spawn(["true"])
    assert child.wait() == 0  # reaped, as ansible-runner's loop leaves ansible-playbook
    assert child.delayafterclose == PAUSE

    start = time.monotonic()
    child.close()

    assert time.monotonic() - start < PAUSE
    assert child.closed and child.exitstatus == 0


def test_the_pty_of_a_live_child_still_pauses_then_ends_the_child() -> None:
    _close_reaped_ptys_at_once()
    child = ptyprocess.PtyProcess.spawn(["sleep", "60"])
    try:
        start = time.monotonic()
        child.close()

        assert time.monotonic() - start >= PAUSE
        assert child.closed and not child.isalive()
        assert child.signalstatus is not None  # ended by close, not by itself
    finally:
        if child.isalive():
            child.kill(9)
