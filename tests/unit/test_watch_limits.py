"""The file watch at its limits: daemon.watch_max, and the kernel's, for real:
fs.inotify.max_user_watches reached, and no inotify instance to be had (max_user_instances).

The kernel's limits are counted per user namespace (Linux 5.11+): a child started in a user
namespace of its own sets /proc/sys/user/max_inotify_watches (and _instances) there, as that
namespace's root, and meets the same ENOSPC and EMFILE a daemon meets when the machine's limit
is exhausted; the machine's own settings are not touched. The child runs the daemon's Triggers on
a real state directory and prints what it saw as JSON."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.adapters.state import StateDir, write_managed_paths
from agent.config import Overrides, parse_config
from agent.daemon.trigger import Triggers
from agent.operate.output import render_watch

ROOT = Path(__file__).parents[2]
LIMITS = Path("/proc/sys/user")


def in_own_user_namespace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["unshare", "--user", "--map-root-user", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def namespaces() -> None:
    tried = in_own_user_namespace("true")
    if tried.returncode != 0:  # e.g. kernel.unprivileged_userns_clone=0 for a non-root user
        pytest.skip(f"no user namespace of our own here ({tried.stderr.strip()}): the kernel's "
                    "inotify limits cannot be lowered without changing the machine's")


def at_the_limits(root: str) -> None:
    """In the child (a user namespace of its own): two watches at most, four folders managed;
    then no inotify instance left. Prints what the daemon's Triggers made of it."""
    warnings: list[str] = []

    class Kept(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    logging.getLogger("agent").addHandler(Kept())
    (LIMITS / "max_inotify_watches").write_text("2\n")
    state = StateDir(Path(root) / "state")
    state.ensure()
    files = [Path(root) / "pet" / folder / "f" for folder in ("a", "b", "c", "d")]
    for f in files:
        f.parent.mkdir(parents=True)
        f.write_text("managed\n")
    write_managed_paths(state, "pet", {"paths": [str(f) for f in files], "local": True})
    config = parse_config({"repo": {"url": "file:///srv/pets.git"}, "state_dir": str(state.root),
                           "daemon": {"watch_debounce": "5s"}}, "agent.yml", Overrides())
    triggers = Triggers(config, state)
    triggers.rebuild()  # as after each cycle: still at the limit, still one warning
    seen: dict[str, Any] = {"info": dict(triggers.info),
                            "saved": json.loads(state.watch_file.read_text())}
    for i, f in enumerate(files):  # a change in each folder, each its own burst
        f.write_text("by hand\n")
        triggers.turn(1000.0 * i, busy=False)
        seen.setdefault("fired", []).append(triggers.turn(1000.0 * i + 100, busy=False) and
                                            (triggers.take()[0] or {}).get("path"))
    (LIMITS / "max_inotify_instances").write_text("1\n")  # the one above is the only one
    second = Triggers(config, state)
    seen.update(warnings=warnings, unavailable=dict(second.info), fds=second.fds())
    print(json.dumps(seen))


def test_the_kernels_watch_limit_leaves_the_rest_to_the_scheduled_check_with_one_warning(
        namespaces: None, tmp_path: Path) -> None:
    done = in_own_user_namespace(sys.executable, "-c", "from tests.unit.test_watch_limits "
                                 f"import at_the_limits; at_the_limits({str(tmp_path)!r})")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)

    limit = ("the kernel's limit of inotify watches is reached (fs.inotify.max_user_watches); "
             "they are found by the scheduled check only")
    assert seen["info"]["on"] and seen["info"]["paths"] == 4 and seen["info"]["watches"] == 2
    assert seen["info"]["problem"] == limit and seen["saved"]["problem"] == limit
    pet = tmp_path / "pet"
    assert seen["fired"] == [str(pet / "a" / "f"), str(pet / "b" / "f"), False, False]
    assert f"  {limit}" in render_watch(seen["saved"])
    # No instance at all: the watch is off, said once, and the daemon goes on without it.
    assert not seen["unavailable"]["on"] and seen["fds"] == []
    assert seen["unavailable"]["problem"].startswith("inotify: Too many open files; only the "
                                                     "scheduled check (daemon.check_interval)")
    assert seen["warnings"] == [f"file watch: {limit}",
                                f"file watch: {seen['unavailable']['problem']}"]


def test_watch_max_watches_the_fullest_folders_and_warns_once(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture):
    state = StateDir(tmp_path / "state")
    state.ensure()
    files = [tmp_path / "pet" / "a" / "f", tmp_path / "pet" / "b" / "f1",
             tmp_path / "pet" / "b" / "f2"]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("managed\n")
    write_managed_paths(state, "pet", {"paths": [str(f) for f in files], "local": True})
    config = parse_config({"repo": {"url": "file:///srv/pets.git"}, "state_dir": str(state.root),
                           "daemon": {"watch_max": 1}}, "agent.yml", Overrides())
    caplog.set_level(logging.WARNING, "agent.daemon.trigger")

    problem = ("daemon.watch_max (1 folders) is reached: 1 managed path(s) are not watched; they "
               "are found by the scheduled check only")
    triggers = Triggers(config, state)
    try:
        triggers.rebuild()
        assert triggers.info["problem"] == problem
        assert (triggers.info["paths"], triggers.info["watches"]) == (3, 1)
        files[0].write_text("by hand\n")  # in the folder left out
        assert not triggers.turn(0.0, busy=False) and not triggers.turn(1000.0, busy=False)
        files[1].write_text("by hand\n")
        triggers.turn(2000.0, busy=False)
        assert triggers.turn(3000.0, busy=False)
    finally:
        triggers.close()

    assert [r.getMessage() for r in caplog.records] == [f"file watch: {problem}"]
