"""A small fleet (bench/fleet.py): 20 agents publish to one git daemon; nothing is lost and no
push is forced.

The simulation runs Petkeeper's own report path (queue, commit, push, rebase on reject) for
each agent, with a short splay and real time; the checks below read the remote and the agents'
mirrors with plain git, apart from the simulation's own figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AGENTS = 20
ADDRESS = "127.0.94.2"  # this module's own (bench/fleet.py runs on 127.0.94.1)
ZERO = "0" * 40
RUN = "%(trailers:key=Petkeeper-Host,valueonly,separator=%x2C) " \
      "%(trailers:key=Petkeeper-Run,valueonly,separator=%x2C)"


def git(git_dir: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], capture_output=True,
                          text=True, check=True, timeout=60).stdout


def reports(git_dir: Path, host: str | None = None) -> set[str]:
    """The (host, run) of every report commit reachable in GIT_DIR, of HOST or all."""
    lines = git(git_dir, "log", "--all", f"--format={RUN}").split("\n")
    return {line for line in lines if line.strip() and (host is None or
                                                        line.split()[0] == host)}


def is_ancestor(git_dir: Path, old: str, new: str) -> bool:
    return subprocess.run(["git", "--git-dir", str(git_dir), "merge-base", "--is-ancestor", old,
                           new], capture_output=True, timeout=60).returncode == 0


# With one shared reports branch (before #19) this failed here: 20 agents cycling every 8 s
# under load landed about one push in three, and one agent's reports were still queued after a
# minute. With a branch per host it passes in about 20 s.
def test_twenty_agents_lose_no_report_and_force_no_push(tmp_path):
    workdir = tmp_path / "fleet"
    figures_file = tmp_path / "figures.json"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fleet.py"), "--agents", str(AGENTS),
         "--splay", "4", "--check-interval", "4", "--heartbeat", "8", "--duration", "12",
         "--give-up", "60", "--time-scale", "1",
         "--workers", "2", "--threads", "4", "--address", ADDRESS, "--workdir", str(workdir),
         "--json", str(figures_file)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    print(proc.stdout[-3000:], f"\n(fleet run: {time.monotonic() - start:.0f}s)")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(figures_file.read_text())
    assert figures["lost"] == [] and figures["unlanded"] == [] and figures["forced"] == []
    assert figures["stale"] == [] and figures["ok"]
    # Every agent committed at least its report on the new source, and all of them landed.
    assert figures["committed"] >= AGENTS
    assert figures["on_remote"] == figures["committed"]

    remote = workdir / "srv" / "fleet.git"
    on_remote = reports(remote)
    for i in range(1, AGENTS + 1):
        host = f"pet{i:04d}"
        mine = reports(workdir / "agents" / host / "mirror.git", host)
        assert mine, f"{host} committed no report"
        assert mine <= on_remote, f"{host}: not on the remote: {sorted(mine - on_remote)}"

    # The remote's own ref history: every update of a reports ref was a fast-forward.
    logs = remote / "logs"
    updates = [line.split()[:2] for path in (logs / "refs").rglob("*")
               if path.is_file() and path != logs / "refs" / "heads" / "main"
               for line in path.read_text().splitlines()]
    assert len(updates) > 1
    for old, new in updates:
        assert old == ZERO or is_ancestor(remote, old, new), f"forced: {old} -> {new}"
