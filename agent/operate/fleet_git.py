"""The fleet as Git has it: `petkeeper fleet` on any machine that can read the repo.

Reads every host's newest report through agent.adapters.reportstore into a cache of its own
(no agent state, no root), the source branch's head (is a report behind it?) and, when one is
given, the inventory (missing and retired hosts, groups); agent.operate.fleet makes the view.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.adapters.gitrepo import Mirror, MissingBranch
from agent.adapters.inventory import list_hosts
from agent.adapters.reportstore import ReportReader
from agent.adapters.state import write_atomic
from agent.config import Config, Overrides, load_config, parse_config
from agent.core.redact import redact_text
from agent.core.schema import parse_duration
from agent.cycle.record import layout_of
from agent.cycle.source import resolve_in_tree
from agent.errors import AgentError, RepoError
from agent.operate.commands import parse_since
from agent.operate.fleet import FleetInput, build_fleet
from agent.operate.fleet_page import render_page

PAGE_HISTORY = 7 * 86400.0  # the page's timeline, by default


@dataclass(frozen=True)
class FleetRequest:
    config: Config  # repo and reports keys (from a file, or --repo and --reports-url)
    cache: Path  # a bare repository of the fleet's own
    now: datetime
    stale_after: float | None = None  # seconds; default twice reports.heartbeat
    inventory: Path | None = None  # a local inventory; default the configured one, if any
    page: Path | None = None  # write the view as a web page there, too
    history_since: datetime | None = None  # the page's timeline (default: a week)


def default_cache(url: str) -> Path:
    """~/.cache/petkeeper/fleet-<hash of URL>.git: one cache per reports repository."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "petkeeper" / f"fleet-{hashlib.sha256(url.encode()).hexdigest()[:12]}.git"


def survey_fleet(req: FleetRequest) -> dict[str, Any]:
    """Fetch the tips of every report branch and the source head; return the fleet view
    (agent.operate.fleet), and write it as a page when asked."""
    config = req.config
    mirror = open_cache(config, req.cache)
    signers = allowed_signers(config)
    reader = ReportReader(mirror, config.reports_url, layout_of(config), signers)
    reader.fetch()
    branch = config.repo.branch
    head = fetch_head(mirror, config)
    inventory = _inventory(req, mirror, head)
    given = FleetInput(now=req.now, stale_after=req.stale_after or 2 * config.reports.heartbeat,
                       source_branch=branch, source_head=head,
                       source_url=redact_text(config.repo.url), inventory=inventory)
    view = build_fleet([r.as_dict() for r in reader.latest()], given)
    if req.page is not None:
        since = req.history_since or req.now - timedelta(seconds=PAGE_HISTORY)
        history = reader.history(since=since.isoformat(timespec="seconds"))
        write_atomic(req.page, render_page(view, history).encode(), mode=0o644)
    return view


def fleet_request(config: Config, cache: Path | None, *, stale: str | None,
                  inventory: Path | None, page: Path | None, since: str,
                  now: datetime | None = None) -> FleetRequest:
    """petkeeper fleet's options, checked: one error naming the option."""
    now = now or datetime.now(UTC).replace(microsecond=0)
    stale_after = parse_duration(stale) if stale else None
    if stale and not stale_after:
        raise AgentError(f"fleet: --stale: expected a duration like 48h, got {stale!r}")
    return FleetRequest(config, cache or default_cache(config.reports_url), now, stale_after,
                        inventory, page, parse_since(since, now, "fleet"))


def remote_config(path: Path, repo: str | None, branch: str | None,
                  reports_url: str | None) -> Config:
    """The repo and reports of REPO (--repo: no config file needed) or of the config file at
    PATH, with BRANCH (--branch) and REPORTS_URL (--reports-url) over them."""
    if repo:
        reports = {"url": reports_url} if reports_url else {}
        return parse_config({"repo": {"url": repo, **({"branch": branch} if branch else {})},
                             "reports": reports}, "--repo", Overrides())
    config = load_config(path)
    return replace(config, repo=replace(config.repo, branch=branch or config.repo.branch),
                   reports=replace(config.reports, url=reports_url or config.reports.url))


def fetch_head(mirror: Mirror, config: Config) -> str:
    """Fetch the newest commit of the source branch alone; return it."""
    branch = config.repo.branch
    try:
        mirror.fetch_refs(config.repo.url,
                          [f"+refs/heads/{branch}:refs/remotes/origin/{branch}"], depth=1,
                          missing=branch)
    except MissingBranch as e:
        raise RepoError(f"{e}; give the source branch with --branch (repo.branch)") from None
    head = mirror.resolve(branch)
    assert head is not None  # fetched, or MissingBranch
    return head


def open_cache(config: Config, cache: Path) -> Mirror:
    repo = config.repo
    ssh = (("-o", f"IdentityFile={repo.ssh_key}", "-o", "IdentitiesOnly=yes") if repo.ssh_key
           else ()) + (("-o", f"UserKnownHostsFile={repo.known_hosts}") if repo.known_hosts
                       else ())
    try:
        return Mirror(cache, config.reports_url, repo.timeout, ssh)
    except OSError as e:
        raise AgentError(f"{cache}: cannot create the fleet's cache ({e.strerror}); give a "
                         "folder you may write with --cache") from None


def allowed_signers(config: Config) -> Path | None:
    path = config.reports.allowed_signers
    if path and not Path(path).is_file():
        raise RepoError(f"{config.path}: reports.allowed_signers: {path} not found; give the "
                        "allowed signers file that names each host's key")
    return Path(path) if path else None


def _inventory(req: FleetRequest, mirror: Mirror, head: str | None
               ) -> dict[str, Sequence[str]] | None:
    """The hosts the fleet should have, with their groups: --inventory FILE, or the
    configured inventory at the source head, or none."""
    config = req.config
    if req.inventory is not None:
        if not req.inventory.exists():
            raise RepoError(f"--inventory: {req.inventory} not found; give an inventory file "
                            "or folder")
        folder = req.inventory if req.inventory.is_dir() else req.inventory.parent
        return dict(list_hosts(folder, req.inventory.absolute(), None,
                               config.vault_password_file))
    if not config.inventory or head is None:
        return None
    tree = mirror.materialise(head, mirror.path / "petkeeper-trees" / head)
    path = resolve_in_tree(tree, config.inventory, f"{config.path}: inventory")
    return dict(list_hosts(tree, path, None, config.vault_password_file))
