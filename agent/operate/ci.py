"""Petkeeper in CI pipelines: `check --tree` and `preview`, from the options to the files the
CI system reads (JUnit, GitHub's job summary, GitLab's Code Quality, Markdown)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.adapters.runner import Watcher
from agent.adapters.state import write_atomic
from agent.config import COMMAND_LINE, Config, Overrides, apply_overrides, load_config
from agent.cycle.checkout import (
    check_tree,
    open_tree,
    temporary_state_dir,
    tree_config,
    tree_policy,
)
from agent.cycle.preview import Preview, preview_tree
from agent.errors import RepoError
from agent.operate.codequality import render_codequality
from agent.operate.junit import render_junit
from agent.operate.summary import render_annotations, render_markdown


@dataclass(frozen=True)
class TreeOptions:
    """What --tree and preview take over (or instead of) agent.yml."""

    tree: Path
    config: Path | None = None  # agent.yml, when --config or $PETKEEPER_CONFIG names one
    overrides: Overrides = field(default_factory=Overrides)
    inventory: str | None = None
    policy: str | None = None
    state_dir: Path | None = None  # None: a temporary one, removed afterwards
    private_key: str | None = None
    known_hosts: str | None = None
    wait: float = 0.0


@dataclass(frozen=True)
class Formats:
    junit: Path | None = None
    github: bool = False
    codequality: Path | None = None
    markdown: Path | None = None


@dataclass(frozen=True)
class PreviewResult:
    data: dict[str, Any]
    exit_code: int
    annotations: list[str]  # GitHub workflow commands for the log, with --github
    written: list[str]  # the files written, for the log


def check_checkout(o: TreeOptions, watch: Watcher | None = None) -> tuple[dict[str, Any], int]:
    """`check --tree`: check the checkout; return check --json's data and the exit code."""
    tree = open_tree(o.tree)
    with _tree_state(o) as config:
        cycle = check_tree(config, tree, wait=o.wait, watch=watch)
        return {**cycle.as_json(), "policy": tree_policy(cycle)}, cycle.exit_code


def preview(o: TreeOptions, base: str, formats: Formats, env: Mapping[str, str], *,
            reports_url: str | None = None, fail_on: str = "introduced",
            watch: Watcher | None = None) -> PreviewResult:
    """`preview --base BASE`: check the checkout, compare with the base's reports, write the
    FORMATS asked for (ENV: the CI system's environment)."""
    tree = open_tree(o.tree)
    summary = _github_summary(formats, env)
    for path, option in ((formats.junit, "--junit"), (formats.codequality,
                                                      "--gitlab-codequality"),
                         (formats.markdown, "--markdown")):
        if path is not None and not path.absolute().parent.is_dir():
            raise RepoError(f"{COMMAND_LINE}: {option} {path}: no folder {path.parent}; "
                            "create it or write the file elsewhere")
    with _tree_state(o) as config:
        result: Preview = preview_tree(config, tree, base, url=reports_url, fail_on=fail_on,
                                       wait=o.wait, watch=watch)
    data, written = result.data, []
    for path, render in ((formats.junit, render_junit), (formats.codequality,
                                                         render_codequality),
                         (formats.markdown, render_markdown)):
        if path is not None:
            write_atomic(path.absolute(), render(data).encode(), mode=0o644)
            written.append(str(path))
    if summary is not None:
        with open(summary, "a", encoding="utf-8") as f:  # other steps' summaries stay
            f.write(render_markdown(data))
        written.append(str(summary))
    annotations = render_annotations(data) if formats.github else []
    return PreviewResult(data, result.exit_code, annotations, written)


def _github_summary(formats: Formats, env: Mapping[str, str]) -> Path | None:
    if not formats.github:
        return None
    if env.get("GITHUB_ACTIONS") != "true":
        raise RepoError(f"{COMMAND_LINE}: --github: not in GitHub Actions (GITHUB_ACTIONS is "
                        "not true); elsewhere use --markdown FILE or --junit FILE")
    summary = env.get("GITHUB_STEP_SUMMARY")
    return Path(summary) if summary else None


@contextlib.contextmanager
def _tree_state(o: TreeOptions) -> Iterator[Config]:
    """The configuration of a check of a checkout, in its state directory: --state-dir, or a
    temporary one removed afterwards."""
    loaded = load_config(o.config, o.overrides) if o.config else None
    state_dir = o.state_dir.absolute() if o.state_dir else temporary_state_dir()
    config = tree_config(loaded, state_dir, o.inventory, o.policy, o.private_key,
                         o.known_hosts)
    if loaded is None:
        config = apply_overrides(config, o.overrides)
    try:
        yield config
    finally:
        if o.state_dir is None:
            shutil.rmtree(state_dir, ignore_errors=True)


def require_tree(*given: object) -> None:
    """The options of a check of a checkout mean nothing without --tree: say so."""
    if any(value is not None for value in given):
        raise RepoError(f"{COMMAND_LINE}: -i, --policy, --private-key, --known-hosts and "
                        "--state-dir go with --tree DIR (check a checkout); without it, check "
                        "reads them from the config")


def config_for_tree(option: Path | None, environ: Mapping[str, str]) -> Path | None:
    """--tree reads agent.yml only when --config or $PETKEEPER_CONFIG names one."""
    if option is not None:
        return option
    named = environ.get("PETKEEPER_CONFIG")
    return Path(named) if named else None


