"""Preview a pull request (`petkeeper preview --base REF`): check the checkout, then compare,
per host and per task, with the newest report of each host that checked the base commit."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.adapters.gitrepo import Checkout, Mirror
from agent.adapters.reportstore import HostReports, ReportReader
from agent.adapters.runner import Watcher
from agent.adapters.state import StateDir
from agent.config import COMMAND_LINE, Config
from agent.core.delta import compare_changes, counts, preview_exit
from agent.cycle.checkout import check_tree, tree_policy
from agent.cycle.record import layout_of
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
    """Each host's reports as the reports remote has them, read into MIRROR through
    agent.adapters.reportstore (every host's branch, and the shared branch of before)."""

    def __init__(self, mirror: Mirror, config: Config, url: str | None = None) -> None:
        self.reader = ReportReader(mirror, url or config.reports_url, layout_of(config),
                                   shallow=False)  # MIRROR may be an agent's: never shallow
        self._latest: dict[str, HostReports] | None = None

    def fetch(self) -> None:
        """Fetch every host's reports; FetchError when the remote does not answer."""
        try:
            self.reader.fetch()
        except RepoError as e:  # no reports at all yet
            log.warning("%s: every host's base is unknown", e)

    def newest(self, host: str) -> dict[str, Any] | None:
        """HOST's newest report, or None."""
        if self._latest is None:
            self._latest = {r.host: r for r in self.reader.latest()}
        return _with_commit(self._latest.get(host))

    def report_of_source(self, host: str, sha: str) -> dict[str, Any] | None:
        """The newest report of HOST that checked commit SHA, or None."""
        return _with_commit(self.reader.report_of_source(host, sha))


def _with_commit(found: HostReports | None) -> dict[str, Any] | None:
    if found is None or found.report is None:
        return None
    return {**found.report, "commit": found.commit}


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
    reports = Reports(mirror, config, where)
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
