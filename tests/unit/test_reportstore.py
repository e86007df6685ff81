"""adapters/reportstore: a branch per host, written by its agent alone, read by anyone; the move
from the one shared branch; signed reports. Real bare repositories and git, no Ansible."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from agent.adapters.gitrepo import Author, Mirror
from agent.adapters.reportstore import (
    SHARED_QUEUE,
    HostQueues,
    Layout,
    ReportReader,
    ref_name,
)
from agent.config import Config, Overrides, parse_config
from agent.core.drift import CLEAN, DRIFTED, Change, HostReport, fingerprint
from agent.cycle.record import PublishResult, RunInfo, drift_records, publish, render_report
from agent.errors import RepoError
from tests.unit.test_gitrepo import spy_commands

SOURCE = "8f14e45fceea167a5a36dedd4bea2543b2c1e7c8"
WHEN = datetime(2026, 11, 25, 20, 0, tzinfo=UTC)
MOTD = Change("Pets", "motd", "Write motd", "ansible.builtin.copy", "-old\n+new\n")


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True,
                          timeout=60, cwd=cwd).stdout


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    bare = tmp_path / "pets.git"
    git("init", "--quiet", "--bare", str(bare))
    return bare


def config_for(remote: Path, **reports: object) -> Config:
    return parse_config({"repo": {"url": f"file://{remote}"}, "reports": reports},
                        "agent.yml", Overrides())


def host(name: str, status: str = CLEAN) -> HostReport:
    changes = (MOTD,) if status == DRIFTED else ()
    return HostReport(name, status, changes, fingerprint(status, changes))


def check(mirror: Mirror, config: Config, reports: Mapping[str, HostReport],
          when: datetime = WHEN, source: str = SOURCE) -> PublishResult:
    """What an agent's record step does with REPORTS."""
    run = RunInfo(f"run-{when:%H%M%S}", source, when, "agent")
    return publish(mirror, config, reports, lambda base: drift_records(
        mirror, base, reports, run, config.reports.heartbeat))


def agent(tmp_path: Path, name: str, remote: Path) -> Mirror:
    return Mirror(tmp_path / f"{name}-mirror.git", f"file://{remote}", 30)


def reader(tmp_path: Path, remote: Path, signers: Path | None = None) -> ReportReader:
    """A workstation's reader, in a cache of its own."""
    r = ReportReader(Mirror(tmp_path / "cache.git", f"file://{remote}", 30), f"file://{remote}",
                     Layout(), signers)
    r.fetch()
    return r


def branches(remote: Path) -> dict[str, str]:
    out = git("--git-dir", str(remote), "for-each-ref", "--format=%(refname:short) %(objectname)")
    return dict(line.split() for line in out.splitlines())


def log_pushes(remote: Path, tmp_path: Path) -> Path:
    """A pre-receive hook writing one line per push, with the refs it updates."""
    pushes = tmp_path / "pushes.log"
    hook = remote / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\ncut -d' ' -f3 | tr '\\n' ' ' >> {pushes}; echo >> {pushes}\n")
    hook.chmod(0o755)
    return pushes


# --- writing ---------------------------------------------------------------------------------

def test_each_host_gets_a_branch_of_its_own_and_two_agents_never_race(tmp_path, remote):
    config = config_for(remote)
    one, two = agent(tmp_path, "one", remote), agent(tmp_path, "two", remote)

    first = check(one, config, {"web1": host("web1")})
    second = check(two, config, {"web2": host("web2", DRIFTED)})

    assert first.pushed and second.pushed and not first.error and not second.error
    assert sorted(branches(remote)) == ["petkeeper/hosts/web1", "petkeeper/hosts/web2"]
    report = yaml.safe_load(git("--git-dir", str(remote), "show",
                                "petkeeper/hosts/web2:hosts/web2.yml"))
    assert report["host"] == "web2" and report["status"] == DRIFTED
    # Each agent fetched its own branch, nothing of the other's.
    assert set(two.refs_under("refs/remotes/")) == {"refs/remotes/origin/petkeeper/hosts/web2"}


def test_an_agent_of_many_hosts_pushes_all_their_branches_in_one_push(tmp_path, remote):
    pushes = log_pushes(remote, tmp_path)
    mirror, config = agent(tmp_path, "beside", remote), config_for(remote)

    result = check(mirror, config, {h: host(h) for h in ("db1", "db2", "web1")})

    assert result.pushed and list(result.committed_by_host()) == ["db1", "db2", "web1"]
    assert pushes.read_text().split("\n")[0].split() == [
        "refs/heads/petkeeper/hosts/db1", "refs/heads/petkeeper/hosts/db2",
        "refs/heads/petkeeper/hosts/web1"]


def test_an_unchanged_report_is_not_committed_and_nothing_is_pushed(tmp_path, remote):
    pushes = log_pushes(remote, tmp_path)
    mirror, config = agent(tmp_path, "a", remote), config_for(remote)
    check(mirror, config, {"web1": host("web1")})
    tip = branches(remote)["petkeeper/hosts/web1"]

    again = check(mirror, config, {"web1": host("web1")}, WHEN + timedelta(minutes=15))

    assert again == PublishResult((), 0, False, push="nothing to push")
    assert branches(remote)["petkeeper/hosts/web1"] == tip
    assert len(pushes.read_text().splitlines()) == 1


def test_an_unchanged_cycle_reads_the_refs_once_and_asks_nothing_of_a_queue_the_remote_has(
        tmp_path, remote, monkeypatch):
    mirror, config = agent(tmp_path, "a", remote), config_for(remote)
    reports = {h: host(h) for h in ("db1", "web1")}
    check(mirror, config, reports)
    commands = spy_commands(mirror, monkeypatch)

    again = check(mirror, config, reports, WHEN + timedelta(minutes=15))

    assert again == PublishResult((), 0, False, push="nothing to push")
    # The refs in one go, the remote's tips, each host's last report, the queues to push.
    assert commands == ["for-each-ref", "ls-remote", "cat-file", "cat-file", "for-each-ref"]


def test_a_rejected_push_stays_queued_then_is_rebased_and_pushed_never_forced(tmp_path, remote):
    mirror, config = agent(tmp_path, "a", remote), config_for(remote)
    check(mirror, config, {"web1": host("web1")})
    other = tmp_path / "other"  # a second writer on web1's branch: it moves under the agent
    git("clone", "--quiet", "--branch", "petkeeper/hosts/web1", str(remote), str(other))
    (other / "notes.txt").write_text("hello\n")
    git("add", "--all", cwd=other)
    git("-c", "user.name=O", "-c", "user.email=o@x", "commit", "-qm", "note", cwd=other)
    git("push", "--quiet", "origin", "HEAD:petkeeper/hosts/web1", cwd=other)
    theirs = branches(remote)["petkeeper/hosts/web1"]
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nexit 1\n")
    hook.chmod(0o755)

    refused = check(mirror, config, {"web1": host("web1", DRIFTED)}, WHEN + timedelta(hours=1))
    assert refused.push == "rejected" and list(refused.committed_by_host()) == ["web1"]
    assert refused.queued == 1 and not refused.pushed
    assert "petkeeper/hosts/web1" in str(refused.error)
    assert branches(remote)["petkeeper/hosts/web1"] == theirs

    hook.unlink()
    later = check(mirror, config, {"web1": host("web1", DRIFTED)}, WHEN + timedelta(hours=2))
    assert later.pushed and later.queued == 0 and later.committed == () and later.push == "pushed"
    tip = branches(remote)["petkeeper/hosts/web1"]
    git("--git-dir", str(remote), "merge-base", "--is-ancestor", theirs, tip)  # not forced
    shown = git("--git-dir", str(remote), "show", f"{tip}:hosts/web1.yml")
    assert "status: drifted" in shown
    assert git("--git-dir", str(remote), "show", f"{tip}:notes.txt") == "hello\n"


def test_a_push_a_hook_declines_is_refused_and_stays_queued_not_a_failed_push(tmp_path,
                                                                             remote):
    # The remote's path holds no "rejected": only git's porcelain line says the push was refused.
    assert "rejected" not in str(remote)
    mirror, config = agent(tmp_path, "a", remote), config_for(remote)
    check(mirror, config, {"web1": host("web1")})
    before = branches(remote)
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'remote busy' >&2; exit 1\n")
    hook.chmod(0o755)

    declined = check(mirror, config, {"web1": host("web1", DRIFTED)}, WHEN + timedelta(hours=1))
    assert declined.push == "rejected" and declined.queued == 1 and not declined.pushed
    assert branches(remote) == before

    hook.unlink()
    later = check(mirror, config, {"web1": host("web1", DRIFTED)}, WHEN + timedelta(hours=2))
    assert later.pushed and later.queued == 0 and later.push == "pushed"


def test_a_failed_fetch_still_commits_locally_and_pushes_once_the_remote_is_back(tmp_path,
                                                                               remote):
    mirror, config = agent(tmp_path, "a", remote), config_for(remote)
    check(mirror, config, {"web1": host("web1")})
    remote.rename(tmp_path / "away.git")

    down = check(mirror, config, {"web1": host("web1", DRIFTED)}, WHEN + timedelta(hours=1))
    assert down.push == "failed" and list(down.committed_by_host()) == ["web1"]
    assert down.queued == 1 and not down.pushed
    assert "away" not in str(down.error) and str(remote) in str(down.error)

    (tmp_path / "away.git").rename(remote)
    up = check(mirror, config, {"web1": host("web1", DRIFTED)}, WHEN + timedelta(hours=2))
    assert up.pushed and up.queued == 0
    assert "status: drifted" in git("--git-dir", str(remote), "show",
                                    "petkeeper/hosts/web1:hosts/web1.yml")


@pytest.mark.parametrize(("name", "ref"), [
    ("web1", "web1"), ("web1.example.org", "web1.example.org"), ("fe80::1", "fe80__1"),
    ("../../etc", "_.__._etc"), (".hidden", "_hidden"), ("x.lock", "x.lock_"), ("a b", "a_b"),
    ("end.", "end._")])
def test_every_host_name_becomes_one_branch_name_git_takes(name: str, ref: str):
    assert ref_name(name) == ref
    git("check-ref-format", f"refs/heads/petkeeper/hosts/{ref}")


# --- moving from the shared branch -----------------------------------------------------------

def shared_branch(remote: Path, tmp_path: Path, hosts: dict[str, str]) -> str:
    """The one reports branch of old: a commit per host, as agents before wrote it."""
    old = Mirror(tmp_path / "old-agent.git", f"file://{remote}", 30)
    tip = None
    for n, (name, status) in enumerate(hosts.items()):
        data = {"schema": 1, "host": name, **host(name, status).as_dict(),
                "source_sha": SOURCE, "run_id": f"old-{n}", "checked_at": WHEN.isoformat(),
                "checked_by": "old"}
        files = {f"hosts/{name}.yml": render_report(data).encode()}
        if n == 0:
            files[f"applies/{name}.yml"] = b"# an old apply\nresult: converged\n"
        tip = old.commit_files(tip, files, f"{name}: {status}\n\nPetkeeper-Host: {name}\n",
                               Author("Petkeeper", "p@x"), f"2026-11-0{n + 1}T00:00:00Z")
    assert tip is not None
    old.update_ref(SHARED_QUEUE, tip, None)
    git("--git-dir", str(old.path), "push", "--quiet", f"file://{remote}",
        f"{SHARED_QUEUE}:refs/heads/petkeeper/reports")
    return tip


def test_a_host_moves_from_the_shared_branch_keeping_its_history_forcing_and_deleting_nothing(
        tmp_path, remote):
    old_tip = shared_branch(remote, tmp_path, {"web1": CLEAN, "web2": DRIFTED})
    mirror, config = agent(tmp_path, "web1", remote), config_for(remote)

    result = check(mirror, config, {"web1": host("web1", DRIFTED)})

    assert result.pushed and list(result.committed_by_host()) == ["web1"]
    assert branches(remote)["petkeeper/reports"] == old_tip  # the shared branch is untouched
    log = git("--git-dir", str(remote), "log", "--format=%s", "petkeeper/hosts/web1").split("\n")
    assert log[:4] == ["web1: drifted (1 change)",
                       "web1: reports move to branch petkeeper/hosts/web1",
                       "web2: drifted", "web1: clean"]
    moved = git("--git-dir", str(remote), "rev-parse", "petkeeper/hosts/web1~1").strip()
    assert git("--git-dir", str(remote), "rev-parse", f"{moved}^").strip() == old_tip
    files = git("--git-dir", str(remote), "ls-tree", "-r", "--name-only", "petkeeper/hosts/web1")
    assert files.split() == ["applies/web1.yml", "hosts/web1.yml"]  # its own files only


def test_an_unchanged_host_moves_without_a_new_report_and_its_queue_is_not_lost(tmp_path,
                                                                              remote):
    """The agent of old had a report queued (not pushed yet) when it was upgraded: the move
    starts from that queue, so the report lands."""
    shared_branch(remote, tmp_path, {"web1": CLEAN})
    mirror, config = agent(tmp_path, "web1", remote), config_for(remote)
    git("--git-dir", str(mirror.path), "fetch", "--quiet", f"file://{remote}",
        "+refs/heads/petkeeper/reports:refs/remotes/origin/petkeeper/reports")
    base = mirror.rev("refs/remotes/origin/petkeeper/reports")
    queued = mirror.commit_files(base, {"hosts/web1.yml": b"schema: 1\nhost: web1\nstatus: "
                                        b"failed\nchecked_at: '2026-11-25T20:00:00+00:00'\n"},
                                 "web1: failed (queued)\n", Author("P", "p@x"),
                                 "2026-11-25T20:00:00Z")
    mirror.update_ref(SHARED_QUEUE, queued, None)

    check(mirror, config, {"web1": host("web1")}, WHEN - timedelta(minutes=1))

    log = git("--git-dir", str(remote), "log", "--format=%s", "petkeeper/hosts/web1").split("\n")
    assert log[:3] == ["web1: clean (0 changes)",
                       "web1: reports move to branch petkeeper/hosts/web1", "web1: failed (queued)"]


def test_readers_read_hosts_not_moved_yet_from_the_shared_branch(tmp_path, remote):
    shared_branch(remote, tmp_path, {"web1": CLEAN, "web2": DRIFTED})
    check(agent(tmp_path, "web1", remote), config_for(remote), {"web1": host("web1", DRIFTED)})

    found = {r.host: r for r in reader(tmp_path, remote).latest()}

    assert sorted(found) == ["web1", "web2"]
    assert found["web1"].branch == "petkeeper/hosts/web1"
    assert found["web1"].report and found["web1"].report["status"] == DRIFTED
    assert found["web1"].apply == {"result": "converged"}  # moved with it
    assert found["web2"].branch == "petkeeper/reports"
    assert found["web2"].report and found["web2"].report["status"] == DRIFTED


# --- reading ---------------------------------------------------------------------------------

def test_a_fresh_cache_reads_each_hosts_newest_report_fetching_the_tips_only(tmp_path, remote):
    mirror, config = agent(tmp_path, "a", remote), config_for(remote)
    for n in range(3):
        check(mirror, config, {"web1": host("web1", (CLEAN, DRIFTED)[n % 2]),
                               "web2": host("web2")}, WHEN + timedelta(days=n))

    r = reader(tmp_path, remote)
    found = {h.host: h for h in r.latest()}

    assert found["web1"].report and found["web1"].report["status"] == CLEAN
    assert found["web1"].commit == branches(remote)["petkeeper/hosts/web1"]
    assert found["web1"].date.startswith("2026-11-27T20:00:00")
    assert git("--git-dir", str(r.mirror.path), "rev-list", "--all").count("\n") == 2  # tips
    assert found["web2"].trust is None  # no allowed signers: not checked


def test_history_is_fetched_only_when_asked_since_a_date_newest_first(tmp_path, remote):
    mirror, config = agent(tmp_path, "a", remote), config_for(remote)
    for n in range(4):
        check(mirror, config, {"web1": host("web1", (CLEAN, DRIFTED)[n % 2]),
                               "web2": host("web2", (CLEAN, DRIFTED)[n % 2])},
              WHEN + timedelta(days=n))
    r = reader(tmp_path, remote)

    recent = r.history(since=(WHEN + timedelta(days=2)).isoformat())
    dates = [e["date"][:10] for e in recent]
    assert dates == sorted(dates, reverse=True)  # newest first
    assert sorted((e["trailers"]["Petkeeper-Host"], e["date"][:10]) for e in recent) == [
        ("web1", "2026-11-27"), ("web1", "2026-11-28"),
        ("web2", "2026-11-27"), ("web2", "2026-11-28")]
    one = r.history("web1")
    assert [e["subject"] for e in one] == ["web1: drifted (1 change)", "web1: clean (0 changes)",
                                           "web1: drifted (1 change)", "web1: clean (0 changes)"]


def test_the_newest_report_of_a_host_that_checked_a_given_source_commit(tmp_path, remote):
    mirror, config = agent(tmp_path, "a", remote), config_for(remote)
    other = "1" * 40
    check(mirror, config, {"web1": host("web1", DRIFTED)}, WHEN, SOURCE)
    check(mirror, config, {"web1": host("web1")}, WHEN + timedelta(hours=1), other)
    r = reader(tmp_path, remote)

    found = r.report_of_source("web1", SOURCE)

    assert found is not None and found.report is not None
    assert found.report["source_sha"] == SOURCE and found.report["status"] == DRIFTED
    assert r.report_of_source("web1", "2" * 40) is None


def put_file(remote: Path, tmp_path: Path, branch: str, path: str, content: str) -> None:
    """Someone (not an agent) commits PATH to BRANCH."""
    work = tmp_path / f"w-{branch.replace('/', '-')}"
    git("clone", "--quiet", "--branch", branch, str(remote), str(work))
    (work / path).write_text(content)
    git("add", "--all", cwd=work)
    git("-c", "user.name=M", "-c", "user.email=m@x", "commit", "-qm", "edit", cwd=work)
    git("push", "--quiet", "origin", f"HEAD:{branch}", cwd=work)


@pytest.mark.parametrize(("content", "problem"), [
    ("status: [clean\n", "hosts/web1.yml (branch petkeeper/hosts/web1 at "),
    ("schema: 99\nhost: web1\nstatus: clean\n", "report schema 99 is not one this Petkeeper"),
    ("- a list\n", "missing or not a mapping"),
    ("schema: 1\nhost: web2\nstatus: clean\n", "a report for 'web2' where web1's belongs")])
def test_a_report_that_cannot_be_read_is_one_problem_and_the_other_hosts_still_show(
        tmp_path, remote, content: str, problem: str):
    check(agent(tmp_path, "a", remote), config_for(remote), {"web1": host("web1"),
                                                             "web2": host("web2")})
    put_file(remote, tmp_path, "petkeeper/hosts/web1", "hosts/web1.yml", content)

    found = {r.host: r for r in reader(tmp_path, remote).latest()}

    assert sorted(found) == ["web1", "web2"]
    assert found["web1"].report is None and problem in str(found["web1"].problem)
    assert found["web2"].report and found["web2"].problem is None


def test_a_remote_without_reports_is_one_clear_error(tmp_path, remote):
    with pytest.raises(RepoError) as e:
        reader(tmp_path, remote)
    assert str(e.value).startswith(f"no reports in file://{remote}: no branch petkeeper/hosts/"
                                   "<host> and no petkeeper/reports; ")


# --- signed reports --------------------------------------------------------------------------

@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    found = {}
    for name in ("web1", "web2"):
        key = tmp_path / f"{name}-key"
        git_free = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)]
        subprocess.run(git_free, check=True, timeout=30)
        found[name] = key
    allowed = tmp_path / "allowed_signers"
    allowed.write_text("".join(f'{name} namespaces="git" {Path(f"{key}.pub").read_text()}'
                               for name, key in found.items()))
    found["allowed"] = allowed
    return found


def test_reports_signed_by_their_hosts_key_are_trusted_and_any_other_is_untrusted(
        tmp_path, remote, keys):
    def signed_by(key: str | None, name: str) -> None:
        config = config_for(remote, signing_key=str(keys[key]) if key else None)
        check(agent(tmp_path, name, remote), config, {name: host(name)})

    signed_by("web1", "web1")
    signed_by("web1", "web2")  # web1's agent (its key) writes web2's report
    signed_by(None, "web3")

    found = {r.host: r.trust for r in reader(tmp_path, remote, keys["allowed"]).latest()}

    assert found["web1"] is not None and found["web1"].trusted
    assert found["web1"].signer == "web1" and "good signature by web1" in found["web1"].reason
    assert found["web2"] is not None and not found["web2"].trusted
    assert found["web2"].reason == ("signed by the key of web1, not web2's: a pet cannot speak "
                                    "for another")
    assert found["web3"] is not None and not found["web3"].trusted
    assert found["web3"].reason == "unsigned"


def test_a_signing_key_that_cannot_sign_is_one_error_naming_the_key(tmp_path, remote):
    config = config_for(remote, signing_key=str(tmp_path / "no-such-key"))
    mirror = agent(tmp_path, "a", remote)

    with pytest.raises(Exception) as e:
        check(mirror, config, {"web1": host("web1")})

    assert str(e.value).startswith(f"reports.signing_key: cannot sign with {tmp_path}/no-such-key")
    assert branches(remote) == {}


def test_a_queue_rebased_by_a_signing_agent_stays_signed(tmp_path, remote, keys):
    config = config_for(remote, signing_key=str(keys["web1"]))
    mirror = agent(tmp_path, "web1", remote)
    queues = HostQueues(mirror, f"file://{remote}", Layout(),
                        Author("P", "p@x", str(keys["web1"])))
    check(mirror, config, {"web1": host("web1")})
    put_file(remote, tmp_path, "petkeeper/hosts/web1", "notes.txt", "x\n")
    queues.commit("web1", "hosts/web1.yml", b"schema: 1\nhost: web1\nstatus: clean\n",
                  "web1: again\n", "2026-11-26T00:00:00Z")

    check(mirror, config, {"web1": host("web1")})

    found = {r.host: r.trust for r in reader(tmp_path, remote, keys["allowed"]).latest()}
    assert found["web1"] is not None and found["web1"].trusted


def test_signature_verdicts_are_kept_per_tip_until_the_signers_file_changes(tmp_path, remote,
                                                                          keys):
    check(agent(tmp_path, "web1", remote), config_for(remote, signing_key=str(keys["web1"])),
          {"web1": host("web1")})
    r = reader(tmp_path, remote, keys["allowed"])
    [first] = r.latest()
    assert first.trust is not None and first.trust.trusted
    kept = r.mirror.path / "petkeeper-signatures.json"
    data = json.loads(kept.read_text())
    assert list(data["verdicts"]) == [first.commit]

    data["verdicts"][first.commit] = ["B", False, "", "bad signature (planted)"]
    kept.write_text(json.dumps(data))
    [again] = r.latest()
    assert again.trust is not None and again.trust.reason == "bad signature (planted)"

    keys["allowed"].write_text(keys["allowed"].read_text() + "\n")  # another signers file
    [fresh] = r.latest()
    assert fresh.trust is not None and fresh.trust.trusted


def test_history_on_an_agent_shows_every_host_its_queued_reports_and_works_offline(tmp_path,
                                                                                  remote):
    from agent.cycle.record import report_history

    mirror, config = agent(tmp_path, "a", remote), config_for(remote)
    check(mirror, config, {"web1": host("web1")})
    check(agent(tmp_path, "b", remote), config, {"web2": host("web2")},
          WHEN + timedelta(minutes=30))
    remote.rename(tmp_path / "away.git")
    check(mirror, config, {"web1": host("web1", DRIFTED)}, WHEN + timedelta(hours=1))

    offline = report_history(mirror, config)
    assert [e["subject"] for e in offline] == ["web1: drifted (1 change)",
                                               "web1: clean (0 changes)"]  # queued one first
    (tmp_path / "away.git").rename(remote)
    online = report_history(mirror, config)
    assert [e["subject"] for e in online] == ["web1: drifted (1 change)",
                                              "web2: clean (0 changes)",
                                              "web1: clean (0 changes)"]
    assert [e["subject"] for e in report_history(mirror, config, "web2")] == [
        "web2: clean (0 changes)"]
