"""`petkeeper approve PLAN_ID --via-git`: approve a plan from wherever the person is.

The plan must be one a host's report shows as waiting for an approval. The approval is a file,
``approvals/<host>.yml``, committed to the source branch with the person's own Git identity
(and their own signature, with ``--sign``), then pushed without force; a rejected push is
fetched, rebased and tried once more, never forced. No root, no agent state: the commit is
made in the fleet's cache (agent.operate.fleet_git).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from agent.adapters.gitrepo import Author
from agent.adapters.reportstore import HostReports, ReportReader, file_name, format_message
from agent.config import Config
from agent.core.approval import APPROVALS_DIR
from agent.core.redact import redact_text
from agent.core.schema import printable_key
from agent.cycle.record import layout_of
from agent.errors import AgentError, RepoError
from agent.operate.commands import approval_expiry
from agent.operate.fleet_git import allowed_signers, default_cache, fetch_head, open_cache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GitApproval:
    host: str
    plan_id: str
    approver: str  # "Name <email>", as Git records the author
    expires_at: str
    commit: str
    branch: str


def approve_plans_via_git(config: Config, cache: Path | None, plan_ids: Sequence[str],
                          expires: str | None, comment: str, sign: bool,
                          now: datetime | None = None,
                          partial: bool = False) -> list[GitApproval]:
    """`petkeeper approve PLAN_ID... --via-git`: each plan's approval file committed and pushed
    on its own, once every plan is known to be waiting (else nothing is written). A partial
    plan needs PARTIAL (`--partial`: the approver knows its check stopped early)."""
    now = now or datetime.now(UTC).replace(microsecond=0)
    until = approval_expiry(config, now, expires)
    cache = cache or default_cache(config.reports_url)
    ids = list(dict.fromkeys(plan_ids))
    if len(ids) > 1:
        reader = ReportReader(open_cache(config, cache), config.reports_url, layout_of(config),
                              allowed_signers(config))
        reader.fetch()
        found = reader.latest()
        for plan_id in ids:
            waiting_host(found, plan_id, partial)
    return [approve_via_git(config, cache, plan_id, now=now, expires=until, comment=comment,
                            sign=sign, partial=partial) for plan_id in ids]


def approve_via_git(config: Config, cache: Path, plan_id: str, *, now: datetime,
                    expires: datetime, comment: str, sign: bool,
                    partial: bool = False) -> GitApproval:
    """Commit and push the approval of PLAN_ID; RepoError when no report shows it waiting,
    AgentError when verification is on and SIGN is not, or the push is rejected twice."""
    mirror = open_cache(config, cache)
    reader = ReportReader(mirror, config.reports_url, layout_of(config), allowed_signers(config))
    reader.fetch()
    host = waiting_host(reader.latest(), plan_id, partial)
    branch = config.repo.branch
    head = fetch_head(mirror, config)
    if not sign and (config.repo.verify != "off" or config.approvals.verify or
                     mirror.is_signed(head)):
        why = f"repo.verify is {config.repo.verify}" if config.repo.verify != "off" else \
            "approvals.verify is on" if config.approvals.verify else \
            f"the head of {branch} is signed, so the pets likely verify signatures"
        raise AgentError(f"approve --via-git: {why}: an unsigned approval would be refused; "
                         "add --sign (your Git signing key: user.signingKey, gpg.format)")
    name, email = mirror.user_identity()
    author = Author(name, email, own_signature=sign)
    path = f"{APPROVALS_DIR}/{file_name(host)}.yml"
    when = now.isoformat(timespec="seconds")
    content = approval_file(host, plan_id, f"{name} <{email}>", expires, comment, partial)
    message = format_message(f"Approve plan {plan_id} for {host}", comment or
                             f"Approved by {name} from a workstation.",
                             {"Host": host, "Plan": plan_id})
    for attempt in (1, 2):
        commit = mirror.commit_files(head, {path: content}, message, author, when)
        if mirror.push(config.repo.url, {commit: f"refs/heads/{branch}"})[f"refs/heads/{branch}"]:
            return GitApproval(host, plan_id, f"{name} <{email}>",
                               expires.isoformat(timespec="seconds"), commit, branch)
        if attempt == 1:
            log.info("push to %s rejected: fetching, rebasing and trying once more", branch)
            head = fetch_head(mirror, config)
    raise AgentError(f"approve --via-git: push to {branch} of {redact_text(config.repo.url)} "
                     "rejected twice (the branch keeps moving, or the server refuses it); "
                     "nothing was written: try again, or ask who guards the branch")


def waiting_host(found: list[HostReports], plan_id: str, partial: bool = False) -> str:
    """The host whose newest report shows PLAN_ID waiting for an approval; RepoError why not
    (a partial plan without PARTIAL, too: its host would refuse the approval)."""
    mine = [r for r in found if r.report and (r.report.get("plan") or {}).get("id") == plan_id]
    pid = printable_key(plan_id)
    if not mine:
        raise RepoError(f"plan {pid}: no host's newest report shows it; run petkeeper fleet "
                        "and approve a plan id it lists as waiting")
    r = mine[0]
    assert r.report is not None
    plan = r.report["plan"]
    if r.trust is not None and not r.trust.trusted:
        raise RepoError(f"plan {pid} ({r.host}): its report is untrusted ({r.trust.reason}); "
                        "check the host itself and approve there")
    if plan.get("mode") == "report":
        raise RepoError(f"plan {pid} ({r.host}): the policy says report only; an approval "
                        "would never be applied: change the policy in Git instead")
    if plan.get("action") != "wait" or plan.get("approved_by"):
        by = f", approved by {plan['approved_by']}" if plan.get("approved_by") else ""
        raise RepoError(f"plan {pid} ({r.host}): not waiting for an approval "
                        f"([{plan.get('action')}] {plan.get('reason')}{by})")
    if r.report.get("partial") and not partial:
        raise RepoError(f"plan {pid} ({r.host}): its check was partial (it stopped at a task "
                        "that failed in check mode; the tasks after it were not checked): "
                        "approve it knowingly with --partial")
    return r.host


def approval_file(host: str, plan_id: str, approver: str, expires: datetime,
                  comment: str, partial: bool = False) -> bytes:
    """approvals/<host>.yml as agent.core.approval.parse_git_approval reads it."""
    data = {"host": host, "plan": plan_id, "expires": expires.isoformat(timespec="seconds"),
            **({"comment": comment} if comment else {}), **({"partial": True} if partial else {})}
    head = f"# plan {plan_id} of {host}, approved by {approver} with petkeeper approve --via-git"
    return (" ".join(head.split()) + "\n" + yaml.safe_dump(data, sort_keys=False)).encode()
