"""Mitogen, and only here: where it is installed, and a cycle's runs through its strategy.

Nothing here imports Mitogen: Ansible loads its strategy plugin, from the folder found here,
in the ansible-playbook process. A run whose strategy fails before its first task (an import
error, an unsupported version) is run again with the plain strategy, and so is the rest of the
cycle; a run that failed after a task started is never repeated (an apply would run twice).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from agent.adapters.runner import PlaybookRun, RunResult, Watcher, run_playbook
from agent.core.accelerator import STRATEGY, Choice, choose_strategy, fallen_back

log = logging.getLogger(__name__)


@dataclass
class Accelerator:
    """One cycle's strategy: chosen once, plain for the rest of the cycle once Mitogen failed."""

    choice: Choice
    plugins: Path | None = None  # Mitogen's strategy plugin folder

    def env(self) -> dict[str, str]:
        """The environment that selects Mitogen's strategy, or nothing for the plain one."""
        if not self.choice.accelerated or self.plugins is None:
            return {}
        return {"ANSIBLE_STRATEGY": STRATEGY, "ANSIBLE_STRATEGY_PLUGINS": str(self.plugins)}

    def run(self, run: PlaybookRun, work_dir: Path, keep_artifacts: int = 5,
            cancel: Callable[[], bool] | None = None,
            watch: Watcher | None = None) -> RunResult:
        """Run RUN with this cycle's strategy; when Mitogen's fails before the first task,
        run it again with the plain one (said in the log and in self.choice)."""
        extra = self.env()
        if not extra:
            return run_playbook(run, work_dir, keep_artifacts, cancel, watch)
        result = run_playbook(replace(run, env={**run.env, **extra}), work_dir, keep_artifacts,
                              cancel, watch)
        if not strategy_failed(result):
            return result
        error = result.error
        plain = run_playbook(replace(run, ident=f"{run.ident}-plain"), work_dir,
                             keep_artifacts, cancel, watch)
        if strategy_failed(plain) and plain.error == error:
            return plain  # the same failure without Mitogen: the play's, not the strategy's
        self.choice = fallen_back(self.choice, error)
        log.warning("%s: %s", run.playbook, self.choice.reason)
        return plain


def strategy_failed(result: RunResult) -> bool:
    """Whether RESULT's run failed after its play started and before any task did: where a
    strategy plugin is loaded. A playbook Ansible refuses fails before its play starts."""
    tasks = any(e.get("event") == "playbook_on_task_start" for e in result.events)
    return result.status == "failed" and result.started and not tasks


def choose_accelerator(setting: str) -> Accelerator:
    """The strategy for a cycle with ansible.accelerator SETTING, logged once with why."""
    plugins = mitogen_plugins()
    found = mitogen_version() if plugins is not None else None
    choice = choose_strategy(setting, found, _installed("ansible-core") or "unknown")
    if choice.warning:
        log.warning("accelerator: %s", choice.reason)
    else:
        log.info("accelerator: %s strategy: %s", choice.strategy, choice.reason)
    return Accelerator(choice, plugins)


def mitogen_version() -> str | None:
    return _installed("mitogen")


def mitogen_plugins() -> Path | None:
    """The folder of Mitogen's strategy plugins, found without importing Mitogen."""
    try:
        spec = importlib.util.find_spec("ansible_mitogen")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "plugins" / "strategy"
        if (folder / f"{STRATEGY}.py").is_file():
            return folder
    return None


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None
