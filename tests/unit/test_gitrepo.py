"""adapters/gitrepo: the mirror's hardened config, and its reading of Git's errors (a full disk,
the remote's or the mirror's own)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from agent.adapters.gitrepo import HARDENING, Author, Mirror, _answer, _disk_full
from agent.adapters.state import StateDir, mount_point
from agent.config import Config, RepoConfig
from agent.cycle.source import fetch_source, open_mirror
from agent.errors import FetchError, RepoError, TransientError


def test_the_mirror_config_is_written_once_and_restored_when_someone_loosens_it(tmp_path: Path):
    config = tmp_path / "mirror.git" / "config"
    Mirror(config.parent, "file:///nowhere.git", 10)
    first = config.read_bytes()
    assert all(f"{key.rsplit('.', 1)[1]} = {value}" in first.decode()
               for key, value in HARDENING.items())

    written = config.stat().st_mtime_ns
    Mirror(config.parent, "file:///nowhere.git", 10)  # every cycle opens the mirror
    assert config.stat().st_mtime_ns == written and config.read_bytes() == first

    config.write_text(first.decode().replace("hooksPath = /dev/null", "hooksPath = hooks"))
    Mirror(config.parent, "file:///nowhere.git", 10)
    assert config.read_bytes() == first


def test_a_failed_report_push_or_fetch_names_the_reports_url_not_the_source(tmp_path: Path):
    mirror = Mirror(tmp_path / "mirror.git", "file:///srv/git/pets.git", 10)
    commit = mirror.commit_files(None, {"hosts/a.yml": b"status: clean\n"}, "report",
                                 Author("petkeeper", "petkeeper@localhost"), "2026-11-26T00:00:00Z")
    queue = "refs/petkeeper/queue/petkeeper/hosts/a"
    mirror.update_ref(queue, commit, None)
    reports = f"file://reporter:s3cret@{tmp_path}/missing-reports.git"

    for call in (lambda: mirror.push(reports, {queue: "refs/heads/petkeeper/hosts/a"}),
                 lambda: mirror.fetch_refs(reports, ["+refs/heads/x/*:refs/remotes/x/*"]),
                 lambda: mirror.ls_remote(reports, ["refs/heads/petkeeper/hosts/a"])):
        with pytest.raises(FetchError) as e:
            call()
        assert f"{tmp_path}/missing-reports.git" in str(e.value)
        assert "pets.git" not in str(e.value) and "s3cret" not in str(e.value)
    assert mirror.rev(queue) == commit  # nothing lost: the report stays queued


def test_a_remote_that_never_answers_says_so_and_names_the_timeout_key(tmp_path: Path):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        url = f"git://127.0.0.1:{silent.getsockname()[1]}/pets.git"
        mirror = Mirror(tmp_path / "mirror.git", url, 1)

        with pytest.raises(FetchError) as e:
            mirror.fetch("main")

    assert re.fullmatch(rf"git fetch {re.escape(url)} failed: no answer within 1s, stopped "
                        r"git \(\d+\); check the remote, or raise repo.timeout in the config",
                        str(e.value)), str(e.value)
    assert mirror.rev("refs/remotes/origin/main") is None and not list(
        (tmp_path / "mirror.git" / "objects" / "pack").iterdir())


def test_a_cancel_stops_a_fetch_waiting_on_its_remote_with_the_helper_git_started(
        tmp_path: Path):
    accepted: list[socket.socket] = []
    with socket.create_server(("127.0.92.2", 0)) as silent:  # accepts, never answers
        threading.Thread(target=lambda: accepted.append(silent.accept()[0]),
                         daemon=True).start()
        url = f"http://127.0.92.2:{silent.getsockname()[1]}/pets.git"
        mirror = Mirror(tmp_path / "mirror.git", url, 300, cancel=lambda: bool(accepted))

        with pytest.raises(FetchError) as e:
            mirror.fetch("main")
        for conn in accepted:
            conn.close()

    # The stopped processes in tree order, by PID within a level: after a PID wrap-around the
    # helper may come before a git of its level.
    m = re.fullmatch(rf"git fetch {re.escape(url)} failed: the agent is stopping, stopped "
                     r"git \(\d+\)((, (git|git-remote-http) \(\d+\))+)", str(e.value))
    assert m and "git-remote-http" in re.findall(r"(git[\w-]*) \(", m.group(1)), str(e.value)
    assert mirror.resolve("main") is None and not list(
        (tmp_path / "mirror.git" / "objects" / "pack").iterdir())


def test_every_git_gitpython_starts_has_a_session_of_its_own(tmp_path: Path):
    before = _readers()  # those of mirrors other tests in this process left open
    mirror = Mirror(tmp_path / "mirror.git", "file:///nowhere.git", 10)
    blob = mirror._hash_blob(b"pets\n")
    assert mirror.repo.odb.stream(bytes.fromhex(blob)).read() == b"pets\n"  # via cat-file

    readers = [pid for pid in _readers() if pid not in before]
    assert readers and all(os.getsid(pid) == pid for pid in readers)

    mirror.close()

    assert not [pid for pid in readers if _parent(pid) == os.getpid()]  # closed and reaped


def _readers() -> list[int]:
    """This process's `git cat-file` children."""
    return [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and
            _parent(int(pid)) == os.getpid() and
            b"cat-file" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


# What git 2.39 prints when it cannot write objects: a push to a full remote, a local write.
REMOTE_FULL = """\
remote: fatal: unable to write loose object file: No space left on device
error: remote unpack failed: unpack-objects abnormal exit
 ! [remote rejected] petkeeper/reports -> petkeeper/reports (unpacker error)
error: failed to push some refs to '/srv/git/pets.git'"""
LOCAL_FULL = """\
error: unable to create temporary file: No space left on device
fatal: failed to write object"""


def test_full_remote_is_a_push_failure_that_says_where_to_free_space():
    error = _disk_full(Path("/var/lib/petkeeper/mirror.git"), "push", REMOTE_FULL)

    assert isinstance(error, FetchError)  # the reports stay queued, as for any failed push
    assert str(error) == ("git push failed: the remote is out of disk space (fatal: unable to "
                          "write loose object file: No space left on device); free space on "
                          "the Git server")


def test_full_local_disk_names_the_mirror_and_its_filesystem(tmp_path: Path):
    mirror = tmp_path / "mirror.git"

    error = _disk_full(mirror, "hash-object", LOCAL_FULL)

    assert isinstance(error, TransientError) and not isinstance(error, FetchError)
    where = mount_point(mirror)
    assert str(error) == (f"{mirror}: cannot write (git hash-object): no space left on device; "
                          f"free space on {where} (df -h {where}), then run again")


def test_tidy_packs_the_loose_objects_once_they_pile_up_and_loses_no_commit(tmp_path: Path):
    mirror = Mirror(tmp_path / "mirror.git", "file:///nowhere.git", 10)
    author, tip = Author("petkeeper", "petkeeper@localhost"), None
    for n in range(3):  # a blob, two trees and a commit each
        tip = mirror.commit_files(tip, {f"hosts/h{n}.yml": f"status: clean {n}\n".encode()},
                                  f"report {n}", author, f"2026-11-26T00:0{n}:00Z")
    assert tip is not None
    mirror.update_ref("refs/petkeeper/queue/h", tip, None)
    objects = tmp_path / "mirror.git" / "objects"

    def loose() -> int:
        return sum(1 for d in objects.iterdir() if len(d.name) == 2 for _ in d.iterdir())

    assert loose() == 12
    assert mirror.tidy(loose_limit=13) is False and loose() == 12

    assert mirror.tidy(loose_limit=12) is True
    assert loose() == 0 and len(list((objects / "pack").glob("*.pack"))) == 1
    assert mirror.rev("refs/petkeeper/queue/h") == tip
    assert [mirror.read_blob(tip, f"hosts/h{n}.yml") for n in range(3)] == [
        f"status: clean {n}\n".encode() for n in range(3)]  # exact bytes, final newline too
    assert mirror.commit_changes(tip) == {"hosts/h2.yml": b"status: clean 2\n"}  # for rebases


# --- what a failed fetch says: the setting to check, and Git's answer in one clean line -------

def bare_repo(path: Path, branches: tuple[str, ...] = ("main",)) -> str:
    """A real bare repository with one commit on each of BRANCHES; return its file:// URL."""
    work = path.with_suffix(".work")
    for args in (("init", "-q", "--bare", "--initial-branch=main", str(path)),
                 ("init", "-q", "--initial-branch=main", str(work)),
                 ("-C", str(work), "-c", "user.name=a", "-c", "user.email=a@b.invalid",
                  "commit", "-q", "--allow-empty", "-m", "first")):
        subprocess.run(["git", *args], check=True, timeout=60)
    for branch in branches:
        subprocess.run(["git", "-C", str(work), "push", "-q", str(path), f"HEAD:{branch}"],
                       check=True, timeout=60)
    return f"file://{path}"


def test_a_wrong_url_says_what_git_answered_and_names_repo_url_in_the_config(tmp_path: Path):
    url = f"file://{tmp_path}/nope.git"
    mirror = Mirror(tmp_path / "mirror.git", url, 10, keys={url: "repo.url in agent.yml"})

    with pytest.raises(FetchError) as e:
        mirror.fetch("main")

    assert str(e.value) == (f"git fetch {url} failed: '{tmp_path}/nope.git' does not appear to "
                            "be a git repository; check repo.url in agent.yml")


def test_a_missing_branch_names_repo_branch_and_the_branches_the_remote_has(tmp_path: Path):
    url = bare_repo(tmp_path / "pets.git", ("main", "dev"))
    config = Config(repo=RepoConfig(url=url, branch="prod"), path="/etc/petkeeper/agent.yml",
                    state_dir=tmp_path / "state")
    state = StateDir(tmp_path / "state")
    state.ensure()
    mirror = open_mirror(config, state)

    with pytest.raises(RepoError) as e:
        fetch_source(config, mirror)

    assert str(e.value) == (f"/etc/petkeeper/agent.yml: repo.branch: branch 'prod' not found in "
                            f"{url} (it has: dev, main); set repo.branch to one of them")
    assert mirror.resolve("prod") is None and mirror.resolve("main") is None  # nothing fetched


# What git and ssh print when an ssh:// remote refuses the connection (LogLevel=DEBUG1 is on).
SSH_REFUSED = """\
debug1: Reading configuration data /etc/ssh/ssh_config
debug1: Connecting to git.example.org [192.0.2.7] port 22.
ssh: connect to host git.example.org port 22: Connection refused
fatal: Could not read from remote repository.

Please make sure you have the correct access rights
and the repository exists."""

# What a forge says, between ssh's DEBUG1 lines, when a read-only deploy key tries to push.
FORGE_REFUSED = """debug1: Server host key: ssh-ed25519 SHA256:abc
Authenticated to 127.0.0.1 ([127.0.0.1]:2222) using "publickey".
ERROR: The key you are authenticating with has been marked as read only.
Transferred: sent 2764, received 2800 bytes, in 0.0 seconds
Bytes per second: sent 1.1e+06, received 1.1e+06
debug1: Exit status 1
fatal: Could not read from remote repository.

Please make sure you have the correct access rights
and the repository exists."""


@pytest.mark.parametrize(("stderr", "answer"), [
    (FORGE_REFUSED, "ERROR: The key you are authenticating with has been marked as read only"),
    (SSH_REFUSED, "connect to host git.example.org port 22: Connection refused"),
    ("fatal: unable to access 'https://git.example.org/pets.git/': Could not resolve host: "
     "git.example.org", "unable to access 'https://git.example.org/pets.git/': Could not "
                        "resolve host: git.example.org"),
    ("fatal: repository 'https://git.example.org/x.git/' not found\n",
     "repository 'https://git.example.org/x.git/' not found"),
    ("fatal: Could not read from remote repository.\n", "Could not read from remote repository"),
])
def test_the_answer_is_the_cause_without_prefixes_or_the_generic_lines_around_it(stderr, answer):
    assert _answer(stderr) == answer


def test_only_the_reports_remote_gets_the_reports_deploy_key(tmp_path: Path):
    source, reports = "ssh://git@git.example.org/pets.git", "ssh://git@git.example.org/r.git"
    mirror = Mirror(tmp_path / "mirror.git", source, 10, ("-o", "IdentityFile=/etc/src_key"),
                    reports_ssh_options=("-o", "IdentityFile=/etc/reports_key"))

    assert "IdentityFile=/etc/reports_key" in mirror.ssh_env(reports)["GIT_SSH_COMMAND"]
    assert mirror.ssh_env(source) == {} and mirror.ssh_env(None) == {}  # the source's own
    assert "IdentityFile=/etc/src_key" in mirror.repo.git.environment()["GIT_SSH_COMMAND"]


def spy_commands(mirror: Mirror, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The git commands MIRROR runs from now on, in order (each one process)."""
    commands: list[str] = []
    run = mirror._run

    def counted(args, *rest, **kwargs):  # type: ignore[no-untyped-def]
        commands.append(args[0])
        return run(args, *rest, **kwargs)

    monkeypatch.setattr(mirror, "_run", counted)
    return commands


def test_revs_reads_many_refs_in_one_git_and_says_of_each_what_rev_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    mirror = Mirror(tmp_path / "mirror.git", "file:///nowhere.git", 10)
    author = Author("petkeeper", "petkeeper@localhost")
    one = mirror.commit_files(None, {"a": b"1\n"}, "one", author, "2026-12-02T00:00:00Z")
    two = mirror.commit_files(one, {"a": b"2\n"}, "two", author, "2026-12-02T00:01:00Z")
    mirror.update_ref("refs/petkeeper/queue/a", one, None)
    mirror.update_ref("refs/remotes/origin/a", two, None)
    subprocess.run(["git", "--git-dir", str(tmp_path / "mirror.git"), "tag", "-a", "-m", "t",
                    "t", two], check=True, capture_output=True, timeout=30)
    plain = ["refs/petkeeper/queue/a", "refs/remotes/origin/a", "refs/petkeeper/queue/none"]
    commands = spy_commands(mirror, monkeypatch)

    assert mirror.revs(plain) == {plain[0]: one, plain[1]: two, plain[2]: None}
    assert commands == ["for-each-ref"]
    odd = ["refs/tags/t", one, "refs/petkeeper/queue"]  # a tag (peeled), an id, a ref's prefix
    assert mirror.revs(odd) == {ref: mirror.rev(ref) for ref in odd} == {
        "refs/tags/t": two, one: one, "refs/petkeeper/queue": None}
    assert mirror.revs([]) == {}


def test_the_loose_objects_counted_are_those_git_count_objects_counts(tmp_path: Path):
    mirror = Mirror(tmp_path / "mirror.git", "file:///nowhere.git", 10)
    mirror.commit_files(None, {"a": b"1\n", "b": b"2\n"}, "one",
                        Author("petkeeper", "petkeeper@localhost"), "2026-12-02T00:00:00Z")
    objects = tmp_path / "mirror.git" / "objects"
    (objects / "ab").mkdir(exist_ok=True)
    (objects / "ab" / "tmp_obj_Xy12").write_bytes(b"")  # a write cut short: garbage, not an object
    (objects / "zz").mkdir()
    (objects / "zz" / ("0" * 38)).write_bytes(b"")  # not an object folder
    out = subprocess.run(["git", "--git-dir", str(objects.parent), "count-objects", "-v"],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    counted = int(dict(line.split(": ") for line in out.splitlines())["count"])

    assert counted == 4 and mirror._loose_objects() == counted  # two blobs, a tree, a commit
