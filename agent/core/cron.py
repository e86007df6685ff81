"""Cron arithmetic for maintenance windows: APScheduler 3.x's CronTrigger, a pure computation
(no thread, no clock of its own). The daemon's ticker, APScheduler's scheduler, is in
agent/daemon/ticker.py."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger


def parse_cron(expr: str, timezone: str) -> str | None:
    """Return why EXPR is not a 5-field cron expression, or None when it is."""
    try:
        _trigger(expr, timezone)
    except (ValueError, TypeError) as e:
        return str(e)
    return None


def next_start(expr: str, timezone: str, after: datetime) -> datetime | None:
    """The first time at or after AFTER that cron EXPR fires, in TIMEZONE."""
    return _trigger(expr, timezone).get_next_fire_time(None, after)


@lru_cache(maxsize=64)
def _trigger(expr: str, timezone: str) -> CronTrigger:
    # Imported here: `status`, `--help` and the daemon's fetch tick have no window to compute.
    from apscheduler.triggers.cron import CronTrigger

    return CronTrigger.from_crontab(expr, timezone=ZoneInfo(timezone))
