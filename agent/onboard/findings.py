"""What each of doctor's checks found: ok, warn or fail, with the fix."""

from __future__ import annotations

from dataclasses import dataclass

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Finding:
    """One check's verdict: CHECK names what was checked, MESSAGE what was found and, unless
    it is ok, the fix."""

    check: str
    status: str
    message: str
