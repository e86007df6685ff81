"""core/cron: cron expressions for maintenance windows, read in the window's time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.core.cron import next_start, parse_cron

PARIS = "Europe/Paris"


# --- parse_cron ------------------------------------------------------------------------------

@pytest.mark.parametrize("expr", ["0 2 * * *", "*/15 * * * *", "30 1 * * mon-fri", "0 0 1 jan *",
                                  "0 22 * * 6,0", "5 4 1-7 * sun"])
def test_parse_cron_accepts_five_field_crons(expr: str):
    assert parse_cron(expr, PARIS) is None


@pytest.mark.parametrize(("expr", "says"), [
    ("0 2 * *", "got 4, expected 5"),
    ("0 2 * * * *", "got 6, expected 5"),
    ("", "got 0, expected 5"),
    ("@daily", "got 1, expected 5"),
    ("61 * * * *", "(61) is higher than the maximum value (59)"),
    ("0 25 * * *", "(25) is higher than the maximum value (23)"),
    ("*/0 * * * *", "Increment must be higher than 0"),
    ("0 2 * smarch *", "smarch"),
])
def test_parse_cron_says_why_an_expression_is_not_a_cron(expr: str, says: str):
    reason = parse_cron(expr, "UTC")

    assert reason is not None and says in reason


# --- next_start ------------------------------------------------------------------------------

def test_next_start_is_inclusive_of_the_instant_given():
    at_two = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)

    assert next_start("0 2 * * *", "UTC", at_two) == at_two
    assert next_start("0 2 * * *", "UTC", at_two + timedelta(microseconds=1)) == \
        at_two + timedelta(days=1)


def test_next_start_reads_the_cron_in_the_windows_time_zone():
    start = next_start("0 2 * * *", PARIS, datetime(2026, 6, 1, 12, 0, tzinfo=UTC))

    assert start == datetime(2026, 6, 2, 0, 0, tzinfo=UTC)  # 02:00 CEST
    assert start is not None and start.utcoffset() == timedelta(hours=2)


def test_next_start_follows_local_time_across_the_spring_dst_change():
    # 2026-03-29: Paris moves from CET (+1) to CEST (+2) at 02:00 local.
    saturday = next_start("0 3 * * *", PARIS, datetime(2026, 3, 28, 0, 0, tzinfo=UTC))
    sunday = next_start("0 3 * * *", PARIS, datetime(2026, 3, 28, 3, 0, tzinfo=UTC))

    assert saturday == datetime(2026, 3, 28, 2, 0, tzinfo=UTC)
    assert sunday == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
