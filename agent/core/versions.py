"""The ansible-core and Python versions Petkeeper is tested with (README: Supported versions).

Both ends of the range run on every CI run (.ci/run), 2.20 through its recorded drift fixtures.
Pure functions: the caller reads the installed versions.
"""

from __future__ import annotations

import re

OLDEST, NEWEST = (2, 19), (2, 21)  # ansible-core minor versions, both tested
RANGE = "2.19 to 2.21 (2.19 on Python 3.11; 2.20 and 2.21 on Python 3.12 and 3.13)"


def untested_ansible(ansible_core: str, python: tuple[int, int]) -> str | None:
    """Given ansible-core's version and Python's (major, minor), return a one-line warning when
    that ansible-core is outside the tested range (naming the range and a tested install for
    this Python), or None when it is inside."""
    found = re.match(r"(\d+)\.(\d+)", ansible_core)
    minor = (int(found[1]), int(found[2])) if found else None
    if minor is not None and OLDEST <= minor <= NEWEST:
        return None
    pin = "ansible-core>=2.19,<2.20" if python < (3, 12) else "ansible-core>=2.20,<2.22"
    return (f"ansible-core {ansible_core} is outside the range Petkeeper is tested with, "
            f"{RANGE}: drift reports may be wrong; install a tested one: pip install '{pin}'")


RUNNER_OLDEST, RUNNER_NEWEST = (2, 4), (2, 4)  # ansible-runner minor versions tested


def untested_runner(ansible_runner: str) -> str | None:
    """Given ansible-runner's version, a one-line warning when it is outside the tested range
    (whose events the drift parser reads), or None when it is inside."""
    found = re.match(r"(\d+)\.(\d+)", ansible_runner)
    minor = (int(found[1]), int(found[2])) if found else None
    if minor is not None and RUNNER_OLDEST <= minor <= RUNNER_NEWEST:
        return None
    return (f"ansible-runner {ansible_runner} is outside the range Petkeeper is tested with, "
            "2.4: drift reports may be wrong; install a tested one: pip install "
            "'ansible-runner>=2.4,<2.5'")
