"""How drift is named where people read it (terminal, report comments, commit subjects): one
wording everywhere. Pure functions over plain data."""

from __future__ import annotations

import json

SEPARATOR = " | "  # between a change's role and its task


def task_title(role: str | None, task: str) -> str:
    """`role | task`; a task name that holds the separator itself (or starts with a quote) is
    quoted, so that `a | b | c` cannot be read two ways."""
    shown = json.dumps(task, ensure_ascii=False) if SEPARATOR in task or task.startswith('"') \
        else task
    return f"{role}{SEPARATOR}{shown}" if role else shown


def change_counts(known: int, blind: int) -> str:
    """"1 change", "0 changes, 4 check-blind": what a host's changes come to."""
    text = f"{known} change{'' if known == 1 else 's'}"
    return f"{text}, {blind} check-blind" if blind else text
