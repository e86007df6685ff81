"""agent.core.ledger: each change's drift class, from the host's last converged apply and the tasks
that kept changing after one."""

from __future__ import annotations

from typing import Any

import pytest

from agent.core.drift import Change
from agent.core.ledger import (
    CHECK_BLIND,
    CORRECTIVE,
    FLAPPING,
    INTENTIONAL,
    classify,
    record_apply,
    record_check,
    task_key,
)

SRC = "8f14e45fceea167a5a36dedd4bea2543b2c1e7c8"
NEW_SRC = "c9f0f895fb98ab9159f51fd0297e236d0f0d4c1a"
MOTD = Change("Baseline", "base", "Write motd", "ansible.builtin.copy", "-Hi\n+Welcome\n")
CONF = Change("Baseline", None, "Write pet.conf", "ansible.builtin.copy", "-a\n+b\n")
PROBE = Change("Baseline", None, "Run a command", "ansible.builtin.command", "", True)


def test_task_key_names_play_role_and_task():
    assert task_key(MOTD) == "Baseline|base|Write motd"
    assert task_key(CONF) == "Baseline||Write pet.conf"


# --- classify --------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "entry", "source", "cls"), [
    (PROBE, {"converged_source": SRC, "flapping": {task_key(PROBE): 3}}, SRC, CHECK_BLIND),
    (MOTD, {"converged_source": SRC, "flapping": {task_key(MOTD): 1}}, SRC, FLAPPING),
    (MOTD, {"converged_source": SRC, "flapping": {task_key(CONF): 1}}, SRC, CORRECTIVE),
    (MOTD, {"converged_source": SRC}, SRC, CORRECTIVE),
    (MOTD, {"converged_source": SRC}, NEW_SRC, INTENTIONAL),
    (MOTD, {"flapping": {}}, SRC, INTENTIONAL),
    (MOTD, None, SRC, INTENTIONAL),
], ids=["check-blind-first", "flapping", "other-task-flapping", "same-source",
        "new-source", "never-converged", "no-entry"])
def test_a_change_is_check_blind_then_flapping_then_corrective_or_intentional(
        change: Change, entry: dict[str, Any] | None, source: str, cls: str):
    assert classify(change, entry, source) == cls


def test_a_change_the_host_made_on_its_own_is_corrective_only_at_the_converged_source():
    entry = {"converged_source": SRC, "flapping": {}}

    assert classify(MOTD, entry, SRC) == CORRECTIVE
    assert classify(MOTD, entry, NEW_SRC) == INTENTIONAL


# --- record_apply ----------------------------------------------------------------------------

def test_a_converged_apply_sets_the_converged_source_and_clears_flapping():
    entry = {"converged_source": SRC, "flapping": {task_key(MOTD): 2}}

    after = record_apply(entry, NEW_SRC, converged=True, leftovers=[])

    assert after == {"converged_source": NEW_SRC, "flapping": {}}
    assert entry == {"converged_source": SRC, "flapping": {task_key(MOTD): 2}}  # not mutated


def test_a_first_converged_apply_creates_the_entry():
    assert record_apply(None, SRC, converged=True, leftovers=[]) == \
        {"converged_source": SRC, "flapping": {}}


def test_tasks_still_changing_after_an_apply_are_counted_as_flapping():
    first = record_apply(None, SRC, converged=False, leftovers=[MOTD, CONF])
    second = record_apply(first, SRC, converged=False, leftovers=[MOTD])

    assert first == {"flapping": {task_key(MOTD): 1, task_key(CONF): 1}}
    assert second == {"flapping": {task_key(MOTD): 2, task_key(CONF): 1}}
    assert classify(MOTD, second, SRC) == FLAPPING


def test_check_blind_leftovers_are_not_flapping():
    after = record_apply({"converged_source": SRC}, NEW_SRC, converged=False,
                         leftovers=[PROBE, MOTD])

    assert after["flapping"] == {task_key(MOTD): 1}


def test_an_apply_that_did_not_converge_keeps_the_previous_converged_source():
    after = record_apply({"converged_source": SRC, "flapping": {}}, NEW_SRC, converged=False,
                         leftovers=[MOTD])

    assert after["converged_source"] == SRC
    assert classify(CONF, after, SRC) == CORRECTIVE
    assert classify(CONF, after, NEW_SRC) == INTENTIONAL


# --- record_check: the last clean check ------------------------------------------------------

AT = "2026-11-25T21:00:00+00:00"


def test_a_hand_edit_on_a_host_seen_clean_at_this_source_is_corrective_without_any_apply():
    entry = record_check(None, SRC, "clean", AT)

    assert entry == {"clean": {"source": SRC, "checked_at": AT}}
    assert classify(MOTD, entry, SRC) == CORRECTIVE
    assert classify(MOTD, entry, NEW_SRC) == INTENTIONAL
    assert classify(PROBE, entry, SRC) == CHECK_BLIND


@pytest.mark.parametrize("status", ["drifted", "failed", "unreachable", "unknown"])
def test_a_check_that_is_not_clean_leaves_the_entry_as_it_was(status: str):
    entry = {"converged_source": SRC, "clean": {"source": SRC, "checked_at": AT}}

    assert record_check(entry, NEW_SRC, status, "2026-11-26T00:00:00+00:00") == entry


def test_a_later_clean_check_replaces_the_last_one_and_keeps_the_rest():
    entry = {"converged_source": SRC, "flapping": {task_key(MOTD): 1},
             "clean": {"source": SRC, "checked_at": AT}}

    after = record_check(entry, NEW_SRC, "clean", "2026-11-26T00:00:00+00:00")

    assert after == {"converged_source": SRC, "flapping": {task_key(MOTD): 1},
                     "clean": {"source": NEW_SRC, "checked_at": "2026-11-26T00:00:00+00:00"}}
    assert classify(CONF, after, NEW_SRC) == CORRECTIVE
    assert classify(CONF, after, SRC) == CORRECTIVE  # converged by an apply there
    assert entry["clean"]["source"] == SRC  # not mutated
