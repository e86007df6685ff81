"""agent.core.wording: one way to name a change and to count changes, wherever people read it."""

from __future__ import annotations

import pytest

from agent.core.wording import change_counts, task_title


@pytest.mark.parametrize(("role", "task", "title"), [
    ("baseline", "Write the message of the day", "baseline | Write the message of the day"),
    (None, "Write pet.conf", "Write pet.conf"),
    # Names as some collections write them: the role's own prefix, or a " | " inside.
    ("os_hardening", "os_hardening | Set limits", 'os_hardening | "os_hardening | Set limits"'),
    (None, "a | b", '"a | b"'),
    (None, '"quoted" already', '"\\"quoted\\" already"'),
    ("ssh", "Create sshd_config|moduli", "ssh | Create sshd_config|moduli"),
])
def test_a_task_name_that_holds_the_separator_is_quoted_so_the_title_reads_one_way(
        role: str | None, task: str, title: str):
    assert task_title(role, task) == title


def test_titles_of_different_role_and_task_pairs_never_coincide():
    pairs = [("a", "b | c"), ("a | b", "c"), (None, "a | b | c"), ("a", 'b | c"')]

    assert len({task_title(role, task) for role, task in pairs}) == len(pairs)


@pytest.mark.parametrize(("known", "blind", "text"), [
    (0, 0, "0 changes"), (1, 0, "1 change"), (2, 0, "2 changes"),
    (0, 4, "0 changes, 4 check-blind"), (1, 1, "1 change, 1 check-blind"),
])
def test_change_counts_say_known_changes_then_check_blind_ones(known: int, blind: int,
                                                                text: str):
    assert change_counts(known, blind) == text
