"""agent.operate.progress: one updating line on a terminal, from the runner's real events."""

from __future__ import annotations

import os
import pty
import time
from pathlib import Path

import pytest

from agent.adapters.runner import PlaybookRun
from agent.operate.progress import Progress, ProgressLine, render_progress
from tests.unit.test_drift import load_events

RUN = PlaybookRun(tree=Path("/tree"), playbook="site.yml", inventory=Path("/tree/hosts.yml"),
                  limit="web1", check=True, ident="r1")


def test_progress_follows_play_task_host_and_counts_task_results():
    p = Progress()
    for event in load_events("drifted_with_diffs"):
        p.update("check", "site.yml", event)
        if event["event"] == "runner_on_start" and event["event_data"]["task"] == "Line":
            assert (p.play, p.task, p.host, p.done) == ("Baseline", "Line", "web1", 2)
    assert (p.mode, p.playbook, p.done) == ("check", "site.yml", 4)  # four tasks on web1


def test_the_line_says_mode_playbook_host_play_task_results_and_elapsed_time():
    p = Progress("apply", "site.yml", "web1", "Baseline", "Write motd", 12)
    assert render_progress(p, 94.7) == \
        "apply site.yml | web1 | Baseline | Write motd | 12 tasks done | 1:34"
    assert render_progress(Progress("check", "site.yml", done=1), 3) == \
        "check site.yml | 1 task done | 0:03"


def test_the_line_fits_the_terminal_shortening_the_task_but_never_the_count_and_time():
    p = Progress("check", "site.yml", "web1", "Baseline", "Write the message of the day" * 9, 12)
    line = render_progress(p, 5, width=80)
    assert len(line) == 79 and line.endswith("... | 12 tasks done | 0:05")
    assert line.startswith("check site.yml | web1 | Baseline | Write the")


def test_the_line_shows_control_characters_from_the_repo_as_escapes():
    p = Progress("check", "site.yml", "web1", "Baseline", "Evil \x1b[2J\rtask", 1)
    line = render_progress(p, 5, width=200)
    assert "\x1b" not in line and "\r" not in line and "Evil \\x1b[2J\\x0dtask" in line


def read_terminal(fd: int, until: str, timeout: float = 10) -> str:
    """What was written to the terminal so far, polled until UNTIL shows up (the terminal's
    own \r\n for a newline read as \n)."""
    seen, deadline = "", time.monotonic() + timeout
    while until not in seen:
        assert time.monotonic() < deadline, f"{until!r} never shown; got {seen!r}"
        try:
            seen += os.read(fd, 4096).decode().replace("\r\n", "\n")
        except BlockingIOError:
            time.sleep(0.02)
    return seen


@pytest.fixture
def terminal():
    """A real pseudo-terminal: (what the program writes to, what the person would see)."""
    leader, follower = pty.openpty()
    os.set_blocking(leader, False)
    stream = os.fdopen(follower, "w")
    yield stream, leader
    stream.close()
    os.close(leader)


def test_the_line_updates_in_place_on_a_terminal_and_is_erased_at_the_end(terminal):
    stream, screen = terminal
    line = ProgressLine(stream, refresh=0.05)
    for event in load_events("drifted_with_diffs"):
        line(RUN, event)
    shown = read_terminal(screen, "4 tasks done")
    assert "\n" not in shown  # one line, redrawn with \r and erase-to-end-of-line
    assert shown.startswith("\rcheck site.yml | 1 task done") or "\rcheck site.yml" in shown
    assert "\rcheck site.yml | web1 | Baseline | User | 4 tasks done | 0:00\x1b[K" in shown
    line.close()
    assert read_terminal(screen, "\r\x1b[K").endswith("\r\x1b[K")


def test_without_events_the_elapsed_time_still_moves(terminal):
    stream, screen = terminal
    clock = [100.0]
    line = ProgressLine(stream, clock=lambda: clock[0], refresh=0.02)
    line(RUN, load_events("drifted_with_diffs")[1])  # the play starts
    read_terminal(screen, "0:00")
    clock[0] += 65
    read_terminal(screen, "| 1:05")  # redrawn by the refresh, no event needed
    line.close()


def test_a_log_line_steps_around_the_progress_line(terminal):
    stream, screen = terminal
    line = ProgressLine(stream, refresh=60)
    line(RUN, load_events("drifted_with_diffs")[1])
    read_terminal(screen, "0:00")
    with line.interlude():
        stream.write("petkeeper: warning: something\n")
    shown = read_terminal(screen, "something\n\rcheck")
    assert "\r\x1b[Kpetkeeper: warning: something\n\rcheck site.yml" in shown
    line.close()
