"""Which execution strategy a cycle's Ansible runs use: Mitogen's, or Ansible's own.

Mitogen (https://mitogen.networkgenomics.com) runs the same modules in one persistent Python
interpreter per host instead of a new one per task. It hooks in as a strategy plugin, which
ansible-core 2.19 deprecated with no replacement announced: the plain strategy stays the
tested fallback. Pure functions: the caller reads the installed versions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MITOGEN, PLAIN = "mitogen", "plain"
# The oldest Mitogen that supports each ansible-core, from Mitogen's changelog: 0.3.25 added
# ansible-core 2.19 (Ansible 12), 0.3.33 added 2.20, 0.3.49 added 2.21 and 0.3.50 fixed its
# embedded dnf; Petkeeper asks for 0.3.44 at least (it stopped warnings of one task leaking
# into the next). A newer ansible-core than this table knows is not accelerated.
MITOGEN_FOR = {(2, 19): (0, 3, 44), (2, 20): (0, 3, 44), (2, 21): (0, 3, 50)}
STRATEGY = "mitogen_linear"  # plays that name another strategy (free, host_pinned) keep it
# Mitogen's words for an SSH connection that failed: ssh's own last lines after this.
MITOGEN_EOF = re.compile(r"EOF on stream; last \d+ lines received:\s*\n(.*)", re.S)
# Mitogen's words for a connection lost while a task ran (the host went away mid-run); they ask
# for a bug report, which is not what a pet that went down needs.
MITOGEN_LOST = re.compile(r"Mitogen was disconnected from the remote environment while a call "
                          r"was in-progress\..*?Original error was: (.*)", re.S)


@dataclass(frozen=True)
class Choice:
    """The strategy for a cycle's runs: MITOGEN or PLAIN, why, and whether that is a warning
    (Mitogen was asked for by name and cannot be used)."""

    setting: str  # ansible.accelerator: auto, mitogen or off
    strategy: str
    reason: str
    warning: bool = False

    @property
    def accelerated(self) -> bool:
        return self.strategy == MITOGEN

    def as_dict(self) -> dict[str, object]:
        return {"setting": self.setting, "strategy": self.strategy, "reason": self.reason,
                "warning": self.warning}


def choose_strategy(setting: str, mitogen: str | None, ansible_core: str) -> Choice:
    """Given ansible.accelerator's SETTING, the installed Mitogen's version (None when it is not
    installed) and ansible-core's, return the strategy to use and why."""
    if setting == "off":
        return Choice(setting, PLAIN, "ansible.accelerator is off")
    problem = _unsupported(mitogen, ansible_core)
    if problem is None:
        return Choice(setting, MITOGEN, f"Mitogen {mitogen} supports ansible-core "
                                        f"{ansible_core}")
    if setting == "auto":
        return Choice(setting, PLAIN, f"{problem} (ansible.accelerator: auto)")
    return Choice(setting, PLAIN, f"ansible.accelerator is mitogen, but {problem}; this cycle "
                  "used the plain strategy", warning=True)


def fallen_back(choice: Choice, error: str) -> Choice:
    """CHOICE after Mitogen's strategy failed before a run's first task with ERROR: the run
    was repeated with the plain strategy, and so are the cycle's later runs."""
    return Choice(choice.setting, PLAIN, f"Mitogen's strategy failed before the first task "
                  f"({error}); the run was repeated with the plain strategy, and so was the "
                  "rest of this cycle", warning=True)


def _unsupported(mitogen: str | None, ansible_core: str) -> str | None:
    """Why MITOGEN cannot run ANSIBLE_CORE, or None when it can."""
    if mitogen is None:
        return "Mitogen is not installed (pip install 'mitogen>=0.3.44')"
    core, have = _numbers(ansible_core)[:2], _numbers(mitogen)
    if core not in MITOGEN_FOR:
        known = ", ".join(f"{a}.{b}" for a, b in MITOGEN_FOR)
        return (f"ansible-core {ansible_core} is not one Petkeeper runs with Mitogen "
                f"({known})")
    need = MITOGEN_FOR[core]
    if have < need:
        return (f"Mitogen {mitogen} does not support ansible-core {ansible_core} "
                f"(pip install 'mitogen>={'.'.join(map(str, need))}')")
    return None


def _numbers(text: str) -> tuple[int, ...]:
    """"0.3.54" -> (0, 3, 54); "2.21.0rc1" -> (2, 21, 0); what is not a number stops it."""
    found = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(part) for part in found[0].split(".")) if found else ()


def plain_words(msg: str) -> str:
    """An unreachable host's MSG as the plain strategy words it: Mitogen's "EOF on stream;
    last 100 lines received: <ssh's lines>" becomes "Failed to connect to the host via ssh:
    <ssh's last line>", so reports read the same with and without the accelerator; a
    connection Mitogen lost mid-task is said as such, without its request for a bug report."""
    lost = MITOGEN_LOST.search(msg)
    if lost is not None:
        return (msg[:lost.start()] + "the connection to the host was lost during the task "
                f"(Mitogen: {lost.group(1).strip()})")
    found = MITOGEN_EOF.search(msg)
    if found is None:
        return msg
    lines = [line.strip() for line in found.group(1).splitlines() if line.strip()]
    said = f"Failed to connect to the host via ssh: {lines[-1]}" if lines else \
        "Failed to connect to the host via ssh"
    return msg[:found.start()] + said
