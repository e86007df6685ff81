"""adapters/process: a child runs in a session of its own and, at its timeout, on cancel or on
Ctrl-C, is stopped with everything it started: children, a grandchild that left with setsid,
and an orphan whose parent already exited. Real processes (sh and sleep), checked by PID."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agent.adapters.process import (
    CANCELED,
    TIMEOUT,
    ProcessStopped,
    descendants,
    run_process,
)

# A tree as a hanging step builds it: a child of its own (sleep), a grandchild that left the
# session (setsid, as Ansible's workers do), and an orphan whose parent exited at once. Each
# writes its PID to PIDS; then the script waits forever.
TREE = """\
sleep 301 & echo $! >> "$1"
setsid sh -c 'echo $$ >> "$1"; exec sleep 302' - "$1" &
sh -c 'sleep 303 & echo $! >> "$1"' - "$1"
echo $$ >> "$1"
wait
"""


def pids_of(path: Path, count: int = 4) -> list[int]:
    """The PIDs the tree wrote to PATH, once all COUNT are there."""
    deadline = time.monotonic() + 30
    while len(lines := path.read_text().split() if path.exists() else []) < count:
        assert time.monotonic() < deadline, f"the tree wrote {lines}"
        time.sleep(0.05)
    return [int(pid) for pid in lines]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except OSError:
        return False


def test_a_child_that_finishes_gives_its_exit_code_and_output(tmp_path: Path):
    done = run_process(["sh", "-c", "echo out; echo err >&2; exit 3"], what="sh", timeout=30,
                       cwd=tmp_path)

    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


def test_a_child_runs_in_a_session_of_its_own(tmp_path: Path):
    done = run_process(["sh", "-c", "ps -o sid= -p $$; echo $$"], what="sh", timeout=30)

    sid, pid = done.stdout.split()
    assert sid == pid and int(sid) != os.getsid(0)


def test_at_its_timeout_the_whole_tree_is_stopped_and_the_error_is_one_line(tmp_path: Path):
    pids = tmp_path / "pids"
    started = time.monotonic()

    with pytest.raises(ProcessStopped) as e:
        run_process(["sh", "-c", TREE, "-", str(pids)], what="inventory.sh", timeout=1,
                    fix="check the script")

    print(f"stopped after {time.monotonic() - started:.2f}s")
    tree = pids_of(pids)
    assert not [pid for pid in tree if alive(pid)]
    assert e.value.reason == TIMEOUT and "\n" not in str(e.value)
    assert str(e.value).startswith("inventory.sh: no answer within 1s; stopped sh (")
    assert str(e.value).endswith("; check the script")
    for pid in tree:  # every one of them is named, with its PID
        assert f"({pid})" in str(e.value)


def test_a_cancel_stops_the_whole_tree_and_says_the_agent_is_stopping(tmp_path: Path):
    pids = tmp_path / "pids"

    with pytest.raises(ProcessStopped) as e:
        run_process(["sh", "-c", TREE, "-", str(pids)], what="galaxy", timeout=300,
                    cancel=lambda: len(pids.read_text().split()) >= 4 if pids.exists()
                    else False, fix="not said on cancel")

    assert not [pid for pid in pids_of(pids) if alive(pid)]
    assert e.value.reason == CANCELED
    assert str(e.value).startswith("galaxy: the agent is stopping; stopped sh (")
    assert "not said on cancel" not in str(e.value)


def test_ctrl_c_while_a_child_runs_stops_its_tree_too(tmp_path: Path):
    pids = tmp_path / "pids"

    def interrupt() -> bool:
        if pids.exists() and len(pids.read_text().split()) >= 4:
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        run_process(["sh", "-c", TREE, "-", str(pids)], what="tests", timeout=300,
                    cancel=interrupt)

    assert not [pid for pid in pids_of(pids) if alive(pid)]


def test_descendants_never_include_this_process_or_init():
    ours = descendants([os.getppid()])  # our parent's tree holds us

    assert os.getpid() not in ours and 1 not in descendants([1])
