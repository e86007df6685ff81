"""agent.operate.logs: times on a terminal or in a file; priorities, no times, in the journal."""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path

from agent.operate.logs import JournalFormatter, PlainFormatter, journal_stream, setup_logging


def record(level: int, message: str, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError as e:
            info = (type(e), e, e.__traceback__)
    return logging.LogRecord("agent.x", level, __file__, 1, message, (), info)


def test_the_journal_is_recognised_by_the_device_and_inode_of_stderr(tmp_path: Path):
    with open(tmp_path / "journal", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert journal_stream(stream, env)
        assert not journal_stream(other, env)  # stderr redirected elsewhere by hand
        assert not journal_stream(stream, {})
        assert not journal_stream(stream, {"JOURNAL_STREAM": "garbage"})
        assert not journal_stream(io.StringIO(), env)  # no file descriptor at all


def test_each_journal_line_carries_its_priority_and_no_time():
    f = JournalFormatter()
    assert f.format(record(logging.INFO, "cycle r1: 2 clean")) == "<6>cycle r1: 2 clean"
    assert f.format(record(logging.WARNING, "push rejected")) == "<4>warning: push rejected"
    assert f.format(record(logging.ERROR, "stalled")) == "<3>error: stalled"
    assert f.format(record(logging.DEBUG, "detail")) == "<7>detail"
    assert f.format(record(logging.CRITICAL, "x")) == "<2>critical: x"


def test_a_traceback_in_the_journal_keeps_its_priority_on_every_line():
    lines = JournalFormatter().format(record(logging.ERROR, "a bug", exc=True)).splitlines()
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines), lines
    assert lines[-1] == "<3>ValueError: boom"


def test_plain_lines_carry_a_utc_time_when_asked():
    rec = record(logging.WARNING, "push rejected")
    assert PlainFormatter(timestamps=False).format(rec) == "petkeeper: warning: push rejected"
    stamped = PlainFormatter(timestamps=True).format(rec)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ petkeeper: warning: push rejected",
                        stamped), stamped


def test_setup_sends_the_agents_records_at_the_asked_level_to_one_handler(tmp_path: Path,
                                                                          restore_logging):
    with open(tmp_path / "journal", "w+") as stream:
        st = os.fstat(stream.fileno())
        setup_logging(1, stream=stream, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        logging.getLogger("agent.cycle.steps").info("cycle r1: 1 clean")
        logging.getLogger("agent.cycle.steps").debug("not at -v")
        logging.getLogger("some.library").info("not ours: warnings and up only")
        logging.getLogger("some.library").warning("theirs, but a warning")
        assert len(logging.getLogger().handlers) == 1
        stream.seek(0)
        assert stream.read() == "<6>cycle r1: 1 clean\n<4>warning: theirs, but a warning\n"
