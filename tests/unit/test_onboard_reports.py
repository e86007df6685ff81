"""doctor's reports push check: a `git push --dry-run` of the branches the agent really pushes,
one per host of the limit (petkeeper/hosts/<host>), against a real bare repository (file://),
which it leaves as it was. Which hosts a limit selects is ansible-inventory's answer (the
integration test test_onboarding runs it with a group limit); here the listing is given."""

from __future__ import annotations

from pathlib import Path

from agent.adapters.gitrepo import Mirror
from agent.adapters.inventory import Listing
from agent.config import Config, Overrides, parse_config
from agent.cycle.detect import local_host_name, this_host_names
from agent.onboard.findings import OK, WARN, Finding
from agent.onboard.host_checks import Targets, select_doctor_targets
from agent.onboard.reports_checks import check_reports, describe_branches
from agent.onboard.source_checks import Fetched
from tests.conftest import GitRemote, git

DRY_RUN = "; a dry run proves authentication, not what server-side hooks would say"


def setup(tmp_path: Path, **settings: object) -> tuple[Config, Fetched, GitRemote]:
    """A source repository, a reports repository where web1 has reported already, and the
    config of an agent whose limit is the group web."""
    source, reports = GitRemote(tmp_path / "source"), GitRemote(tmp_path / "reports")
    source.commit({"site.yml": "- hosts: all\n"})
    reports.commit({"hosts/web1.yml": "schema: 2\n"}, branch="petkeeper/hosts/web1")
    config = parse_config({"repo": {"url": source.url}, "reports": {"url": reports.url},
                           "inventory": "hosts.yml", "limit": "web",
                           "state_dir": str(tmp_path / "state"), **settings},
                          str(tmp_path / "agent.yml"), Overrides())
    fetched = Fetched(Mirror(tmp_path / "doctor.git", config.repo.url, 30.0))
    return config, fetched, reports


def refs(remote: GitRemote) -> str:
    return git("--git-dir", str(remote.bare), "for-each-ref")


def test_a_group_limit_dry_runs_the_push_of_each_hosts_branch_not_one_named_after_the_group(
        tmp_path: Path):
    config, fetched, reports = setup(tmp_path)
    before = refs(reports)
    findings: list[Finding] = []

    check_reports(config, fetched, Targets(Listing({"web1": ("web",), "web2": ("web",)})),
                  findings)

    assert findings[-1] == Finding("reports push", OK, (
        f"{reports.url} accepts the agent's key for a push to petkeeper/hosts/web1 (exists), "
        f"petkeeper/hosts/web2 (would be created){DRY_RUN}"))
    assert refs(reports) == before  # nothing pushed


def test_a_push_the_remote_refuses_fails_for_all_hosts_and_pushes_nothing(tmp_path: Path):
    config, fetched, _ = setup(tmp_path, reports={
        "url": f"file://{tmp_path}/missing.git"})
    findings: list[Finding] = []

    check_reports(config, fetched, Targets(Listing({"web1": (), "web2": ()})), findings)

    status, message = findings[-1].status, findings[-1].message
    assert (findings[-1].check, status) == ("reports push", "fail")
    assert message.startswith(f"git push file://{tmp_path}/missing.git failed: ")
    assert message.endswith("; the reports remote must take the agent's push: give the "
                            "agent's SSH key write access to it, or set reports.url and "
                            "reports.ssh_key")
    assert not (tmp_path / "missing.git").exists()


def test_unknown_hosts_leave_the_push_unchecked_rather_than_probe_a_made_up_branch(
        tmp_path: Path):
    config, fetched, reports = setup(tmp_path)
    before = refs(reports)
    findings: list[Finding] = []

    check_reports(config, fetched, Targets(None, problem="not checked: no source"), findings)

    assert findings[-1] == Finding("reports push", WARN, (
        "not checked: the agent pushes a branch per host of the limit, and which hosts those "
        "are is not known (see the hosts line)"))
    assert refs(reports) == before


def test_without_an_inventory_the_pet_reports_as_the_name_it_checks_itself_as(tmp_path: Path):
    config, fetched, _ = setup(tmp_path, inventory=None, limit=None)

    targets = select_doctor_targets(config, fetched)

    assert (targets.hosts, targets.local) == ([local_host_name(this_host_names())], True)


def test_many_branches_are_counted_after_the_first_few():
    answers = {f"petkeeper/hosts/web{i}": "new branch" if i < 3 else "exists ([rejected])"
               for i in range(1, 8)}

    assert describe_branches(answers) == (
        "7 branches, petkeeper/hosts/web1, petkeeper/hosts/web2, petkeeper/hosts/web3, "
        "petkeeper/hosts/web4 and 3 more (2 would be created, 5 exist)")
