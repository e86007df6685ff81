"""cycle/source: which SSH options reach the source remote and which the reports remote."""

from __future__ import annotations

from agent.config import Overrides, parse_config
from agent.cycle.source import remote_ssh

KEY = ("-o", "IdentityFile=/etc/petkeeper/deploy_key", "-o", "IdentitiesOnly=yes")
KNOWN = ("-o", "UserKnownHostsFile=/etc/petkeeper/known_hosts")


def config(reports: dict[str, str]):
    return parse_config({"repo": {"url": "ssh://git@git.example.org/ops/pets.git",
                                  "ssh_key": "/etc/petkeeper/deploy_key",
                                  "known_hosts": "/etc/petkeeper/known_hosts"},
                         "reports": reports}, "agent.yml", Overrides())


def test_reports_use_the_source_key_and_known_hosts_unless_they_have_their_own():
    assert remote_ssh(config({})) == (KEY + KNOWN, KEY + KNOWN)

    source, reports = remote_ssh(config({"url": "ssh://git@git.example.org/ops/reports.git",
                                         "ssh_key": "/etc/petkeeper/reports_key"}))

    assert source == KEY + KNOWN
    assert reports == ("-o", "IdentityFile=/etc/petkeeper/reports_key", "-o",
                       "IdentitiesOnly=yes", *KNOWN)


def test_a_reports_known_hosts_file_replaces_the_source_one_for_the_reports_only():
    source, reports = remote_ssh(config({"url": "ssh://git@reports.example.org/r.git",
                                         "known_hosts": "/etc/petkeeper/reports_known_hosts"}))

    assert source == KEY + KNOWN
    assert reports == (*KEY, "-o", "UserKnownHostsFile=/etc/petkeeper/reports_known_hosts")
