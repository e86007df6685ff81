"""Preview a pull request (`petkeeper preview --base REF`): check the checkout, then compare,
per host and per task, with the newest report of each host that checked the base commit."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.adapters.gitrepo import Checkout, Mirror
from agent.adapters.runner import Watcher
from agent.adapters.state import StateDir
from agent.config import COMMAND_LINE, Config
from agent.core.delta import compare_changes, counts, preview_exit
from agent.core.redact import redact_text
from agent.core.schema import load_yaml
from agent.cycle.checkout import check_tree, tree_policy
from agent.cycle.record import report_history, report_path
from agent.errors import RepoError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preview:
    data: dict[str, Any]  # check --json's data, each host with its base and changes by kind
    exit_code: int


def resolve_base(tree: Path, ref: str) -> tuple[str, str]:
    """The commit REF names in the checkout TREE, and TREE's folder in its repository ("" at
    its top); RepoError naming --base when there is no such commit."""
    checkout = Checkout.open(tree)
    if checkout is None:
        raise RepoError(f"{COMMAND_LINE}: --base {ref}: {tree} is not a Git checkout, so no "
                        "base commit can be found; run the preview in the checkout of the "
                        "pull request")
    try:
        sha = checkout.resolve_commit(ref)
        folder = tree.relative_to(checkout.path.resolve()).as_posix()
    finally:
        checkout.close()
    if sha is None:
        raise RepoError(f"{COMMAND_LINE}: --base {ref}: no such commit in the checkout {tree}; "
                        "fetch it first (git fetch origin main; actions/checkout: fetch-depth: "
                        "0) or give the base commit's id")
    return sha, "" if folder == "." else folder


def reports_url(config: Config, tree: Path, given: str | None) -> str:
    """Where the base's reports are: --reports-url, else the config's, else the checkout's
    origin; RepoError when none is known."""
    if given:
        return given
    if config.repo.url:
        return config.reports_url
    checkout = Checkout.open(tree)
    url = checkout.origin_url() if checkout else None
    if checkout:
        checkout.close()
    if not url:
        raise RepoError(f"{COMMAND_LINE}: preview: no reports URL: the checkout has no origin "
                        "and no --config names one; give --reports-url URL (where the agents "
                        "push their reports)")
    return url


class Reports:
    """The reports branch as MIRROR holds it, read per host. The shared-branch layout is read
    through agent.cycle.record."""

    def __init__(self, mirror: Mirror, branch: str) -> None:
        self.mirror, self.branch = mirror, branch

    def fetch(self) -> None:
        self.mirror.fetch_reports(self.mirror.url, self.branch)
        if self.mirror.remote_reports(self.branch) is None:
            log.warning("no reports branch %s in %s: every host's base is unknown",
                        self.branch, redact_text(self.mirror.url))

    def newest(self, host: str) -> dict[str, Any] | None:
        """HOST's newest report, or None."""
        return self._first(host, lambda entry: True)

    def report_of_source(self, host: str, sha: str) -> dict[str, Any] | None:
        """The newest report of HOST that checked commit SHA, or None."""
        return self._first(host, lambda e: e["trailers"].get("Petkeeper-Source") == sha)

    def _first(self, host: str, wanted: Callable[[dict[str, Any]], bool]
               ) -> dict[str, Any] | None:
        for entry in report_history(self.mirror, self.branch, host):
            if not wanted(entry):
                continue
            try:
                data = load_yaml(self.mirror.read_blob(entry["sha"], report_path(host)) or b"")
            except yaml.YAMLError:
                return None
            return {**data, "commit": entry["sha"]} if isinstance(data, dict) else None
        return None


def preview_tree(config: Config, tree: Path, base_ref: str, *, url: str | None = None,
                 fail_on: str = "introduced", wait: float = 0.0,
                 cancel: Callable[[], bool] | None = None,
                 watch: Watcher | None = None) -> Preview:
    """Check the checkout TREE and compare each host with its report of BASE_REF's commit."""
    base_sha, folder = resolve_base(tree, base_ref)
    StateDir(config.state_dir).ensure()
    where = reports_url(config, tree, url)
    mirror = Mirror(StateDir(config.state_dir).mirror, where, config.repo.timeout,
                    keys={where: "--reports-url"})
    reports = Reports(mirror, config.reports.branch)
    try:
        reports.fetch()  # before the check: a wrong URL is said at once
        cycle = check_tree(config, tree, wait=wait, cancel=cancel, watch=watch)
        data = cycle.as_json()
        data["base"] = {"ref": base_ref, "sha": base_sha}
        data["policy"] = tree_policy(cycle)
        data["hosts"] = {name: with_base(host, reports.report_of_source(name, base_sha))
                         for name, host in data["hosts"].items()}
    finally:
        mirror.close()
    code = preview_exit(data["hosts"], fail_on)
    data.update(counts=counts(data["hosts"]), fail_on=fail_on, exit_code=code, folder=folder)
    return Preview(data, code)


def with_base(host: Mapping[str, Any], base: Mapping[str, Any] | None) -> dict[str, Any]:
    """HOST's check data with its changes by kind and what its base report was."""
    return {**host, "changes": compare_changes(host["changes"],
                                               None if base is None else base.get("changes")),
            "base": None if base is None else {
                k: base.get(k) for k in ("status", "fingerprint", "commit", "run_id",
                                         "checked_at", "checked_by")}}
