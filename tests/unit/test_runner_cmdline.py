"""adapters/runner's pure part: ansible-playbook's options, environment and extra-vars files."""

from __future__ import annotations

import ast
import json
import shlex
import stat
import sys
from pathlib import Path

import pytest
import yaml

from agent.adapters.runner import (
    PlaybookRun,
    RunResult,
    _extra_var_files,
    build_cmdline,
    build_env,
    runner_targets,
    split_run,
)

CANARY = "hunter2-canary"


def playbook_run(**fields: object) -> PlaybookRun:
    base: dict[str, object] = dict(
        tree=Path("/var/lib/petkeeper/trees/8f14e45f"), playbook="site.yml",
        inventory=Path("/var/lib/petkeeper/trees/8f14e45f/inventory.yml"), limit="web1",
        check=True, ident="20261125T203622Z-a1b2c3-check-0")
    return PlaybookRun(**{**base, **fields})  # type: ignore[arg-type]


def cmdline_of(run: PlaybookRun, folder: Path) -> list[str]:
    return build_cmdline(run, _extra_var_files(run.extra_vars, folder))


# --- check or apply --------------------------------------------------------------------------

def test_check_runs_with_check_and_diff(tmp_path: Path):
    assert cmdline_of(playbook_run(check=True), tmp_path) == ["--check", "--diff"]


def test_apply_runs_with_diff_and_never_check(tmp_path: Path):
    args = cmdline_of(playbook_run(check=False), tmp_path)

    assert args == ["--diff"]
    assert "--check" not in args and "-C" not in args


def test_playbook_inventory_and_limit_are_not_in_the_options(tmp_path: Path):
    # ansible-runner passes those itself; twice would be an error or a surprise.
    args = cmdline_of(playbook_run(), tmp_path)

    assert not {"site.yml", "web1", "-i", "--inventory", "-l", "--limit"} & set(args)


# --- tags ------------------------------------------------------------------------------------

def test_tags_and_skip_tags_are_joined_with_commas(tmp_path: Path):
    args = cmdline_of(playbook_run(tags=("base", "ssh"), skip_tags=("slow",)), tmp_path)

    assert args == ["--check", "--diff", "--tags", "base,ssh", "--skip-tags", "slow"]


def test_no_tags_means_no_tag_options(tmp_path: Path):
    args = cmdline_of(playbook_run(), tmp_path)

    assert "--tags" not in args and "--skip-tags" not in args


def test_vault_password_file_is_passed_by_path(tmp_path: Path):
    args = cmdline_of(playbook_run(vault_password_file="/etc/petkeeper/vault"), tmp_path)

    assert args[-2:] == ["--vault-password-file", "/etc/petkeeper/vault"]


# --- extra vars ------------------------------------------------------------------------------

INLINE = (f"db_password={CANARY}", f'{{"api_token": "{CANARY}", "port": 8443}}')


def test_inline_extra_vars_never_reach_the_command_line(tmp_path: Path):
    run = playbook_run(extra_vars=INLINE)

    args = cmdline_of(run, tmp_path)

    assert CANARY not in shlex.join(args)
    assert [a for a in args if a.startswith("@")] == [
        f"@{tmp_path / 'extra-0.json'}", f"@{tmp_path / 'extra-1.json'}"]
    assert args.count("--extra-vars") == 2


def test_inline_extra_vars_go_to_private_json_files_with_their_values(tmp_path: Path):
    _extra_var_files(INLINE, tmp_path)

    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["extra-0.json", "extra-1.json"]
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert json.loads(files[0].read_text()) == {"db_password": CANARY}
    assert json.loads(files[1].read_text()) == {"api_token": CANARY, "port": 8443}


def test_extra_var_files_keep_the_order_and_pass_at_files_through(tmp_path: Path):
    values = ("@vars/prod.yml", "env=prod", "@/etc/petkeeper/extra.yml")

    args = build_cmdline(playbook_run(extra_vars=values),
                         _extra_var_files(values, tmp_path))

    assert args[2:] == ["--extra-vars", "@vars/prod.yml",
                        "--extra-vars", f"@{tmp_path / 'extra-1.json'}",
                        "--extra-vars", "@/etc/petkeeper/extra.yml"]


def test_extra_var_file_is_never_overwritten(tmp_path: Path):
    (tmp_path / "extra-0.json").write_text("{}")

    with pytest.raises(FileExistsError):
        _extra_var_files(("a=1",), tmp_path)

    assert (tmp_path / "extra-0.json").read_text() == "{}"


# --- environment -----------------------------------------------------------------------------

def ssh_options(env: dict[str, str]) -> list[str]:
    words = shlex.split(env["ANSIBLE_SSH_COMMON_ARGS"])
    assert words[::2] == ["-o"] * (len(words) // 2)
    return words[1::2]


def test_env_checks_host_keys_strictly_and_never_prompts():
    env = build_env(playbook_run())

    assert ssh_options(env) == ["StrictHostKeyChecking=yes", "BatchMode=yes"]
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "True"


def test_env_uses_the_known_hosts_file_given():
    env = build_env(playbook_run(known_hosts_file="/etc/petkeeper/known_hosts"))

    assert "UserKnownHostsFile=/etc/petkeeper/known_hosts" in ssh_options(env)
    assert "StrictHostKeyChecking=yes" in ssh_options(env)


def test_env_makes_unparsed_inventory_and_unmatched_patterns_fatal():
    env = build_env(playbook_run())

    assert env["ANSIBLE_INVENTORY_UNPARSED_FAILED"] == "True"
    assert env["ANSIBLE_HOST_PATTERN_MISMATCH"] == "error"


def test_env_sets_the_private_key_only_when_given():
    assert "ANSIBLE_PRIVATE_KEY_FILE" not in build_env(playbook_run())
    env = build_env(playbook_run(private_key_file="/root/.ssh/id_ed25519"))

    assert env["ANSIBLE_PRIVATE_KEY_FILE"] == "/root/.ssh/id_ed25519"


def test_env_finds_this_environments_ansible_first():
    env = build_env(playbook_run())

    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_env_never_carries_extra_var_values():
    env = build_env(playbook_run(extra_vars=(f"token={CANARY}",)))

    assert CANARY not in json.dumps(env)


def test_every_ansible_setting_the_env_names_is_one_ansible_core_reads():
    """A misspelt variable is silently ignored by Ansible: check the names against its own
    definitions (read from its files: importing the ssh plugin costs a second)."""
    import ansible

    root = Path(ansible.__file__).parent
    base = yaml.load((root / "config" / "base.yml").read_text(),
                     Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    [doc] = [ast.literal_eval(node.value)
             for node in ast.parse((root / "plugins" / "connection" / "ssh.py").read_text()).body
             if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") ==
             "DOCUMENTATION"]
    options = [*base.values(), *yaml.safe_load(doc)["options"].values()]
    known = {e["name"] for opt in options for e in (opt.get("env") or [])}
    env = build_env(playbook_run(known_hosts_file="/k", private_key_file="/id"))

    assert {"ANSIBLE_SSH_COMMON_ARGS", "ANSIBLE_HOST_PATTERN_MISMATCH"} <= known
    assert {name for name in env if name.startswith("ANSIBLE_")} - known == set()


# --- a playbook of Petkeeper's own after the repo's, in one ansible-playbook ----------------

def ansible_playbook_command(run: PlaybookRun, folder: Path) -> list[str]:
    """The command ansible-runner itself builds for RUN (nothing is started)."""
    from ansible_runner.config.runner import RunnerConfig

    config = RunnerConfig(private_data_dir=str(folder), project_dir=str(folder),
                          **runner_targets(run, build_cmdline(run, [])))
    config.prepare()
    return list(config.command)


def parsed_by_ansible_playbook(command: list[str]) -> dict[str, object]:
    from ansible.cli.playbook import PlaybookCLI

    cli = PlaybookCLI(command)
    cli.init_parser()
    return vars(cli.parser.parse_args(command[1:]))


def test_without_a_playbook_after_it_runner_passes_playbook_inventory_limit_and_forks(
        tmp_path: Path):
    command = ansible_playbook_command(playbook_run(forks=7), tmp_path)

    assert command[0] == "ansible-playbook" and command[-1] == "site.yml"
    options = parsed_by_ansible_playbook(command)
    assert (options["args"], options["inventory"], options["subset"], options["forks"],
            options["check"]) == (["site.yml"], [str(playbook_run().inventory)], "web1", 7, True)


def test_a_playbook_after_the_repo_ones_follows_it_on_one_command_line_with_its_options(
        tmp_path: Path):
    # ansible-runner appends -i, --limit and --forks after the cmdline and its playbook last;
    # argparse takes the playbooks only as one run of positionals: both must end the line.
    run = playbook_run(forks=3, tags=("base",), then=("/state/undo/incoming/x/snapshot.yml",))

    command = ansible_playbook_command(run, tmp_path)

    assert command[-2:] == ["site.yml", "/state/undo/incoming/x/snapshot.yml"]
    options = parsed_by_ansible_playbook(command)
    assert options["args"] == ["site.yml", "/state/undo/incoming/x/snapshot.yml"]
    assert (options["inventory"], options["subset"], options["forks"], options["check"],
            options["tags"]) == ([str(run.inventory)], "web1", 3, True, ["base"])
    assert command.count("-i") == command.count("--limit") == command.count("--forks") == 1


def _event(kind: str, counter: int, **data: object) -> dict[str, object]:
    return {"event": kind, "counter": counter, "runner_ident": "r-before-web1-check-0",
            "event_data": data}


def ridden_run(rc: int = 0, status: str = "successful") -> RunResult:
    """A check of site.yml with Petkeeper's snapshot play after it, as ansible-runner's events
    give it: a playbook_on_start and a recap (cumulative stats) per playbook."""
    events = [
        _event("playbook_on_start", 1, playbook="site.yml", playbook_uuid="pb1", uuid="pb1"),
        _event("playbook_on_play_start", 2, playbook="site.yml", playbook_uuid="pb1"),
        _event("playbook_on_task_start", 3, task="Write motd", task_uuid="t1"),
        _event("runner_on_ok", 4, host="web1", task="Write motd", task_uuid="t1",
               res={"changed": True}),
        _event("playbook_on_stats", 5, playbook="site.yml", playbook_uuid="pb1",
               changed={"web1": 1}, processed={"web1": 1}),
        _event("playbook_on_start", 6, playbook="snapshot.yml", playbook_uuid="pb2",
               uuid="pb2"),
        _event("playbook_on_play_start", 7, playbook="snapshot.yml", playbook_uuid="pb2"),
        _event("playbook_on_task_start", 8, task="petkeeper snapshot: stat", task_uuid="t2"),
        _event("runner_on_ok", 9, host="web1", task="petkeeper snapshot: stat",
               task_uuid="t2", res={"results": []}),
        _event("playbook_on_stats", 10, playbook="snapshot.yml", playbook_uuid="pb2",
               changed={"web1": 1}, processed={"web1": 1}),
    ]
    facts = [{"host": "web1", "task_uuid": "t1", "event": "changed"},
             {"host": "web1", "task_uuid": "t1", "event": "paths", "paths": ["/etc/motd"]},
             {"host": "web1", "task_uuid": "t2", "event": "paths", "paths": ["/etc/motd"]}]
    return RunResult(rc=rc, status=status, events=events, facts=facts)


def test_split_gives_the_check_its_own_events_recap_and_facts_and_the_rest_to_the_play():
    own, later = split_run(ridden_run(rc=4, status="failed"))

    assert [e["counter"] for e in own.events] == [1, 2, 3, 4, 5]
    assert later is not None and [e["counter"] for e in later.events] == [6, 7, 8, 9, 10]
    assert [f["task_uuid"] for f in own.facts] == ["t1", "t1"]
    assert [f["task_uuid"] for f in later.facts] == ["t2"]
    # ansible-playbook went on to the next playbook: the check's part had no failed host.
    assert (own.rc, own.status, later.rc, later.status) == (0, "successful", 4, "failed")
    assert own.started and later.started


def test_split_of_a_run_that_never_reached_the_second_playbook_keeps_it_whole():
    whole = ridden_run(rc=2, status="failed")
    whole.events = whole.events[:5]

    own, later = split_run(whole)

    assert later is None and own is whole


def test_the_drift_of_a_ridden_check_is_that_of_its_own_events():
    from agent.core.drift import build_host_reports

    own, _ = split_run(ridden_run())
    alone = build_host_reports(own.events, ["web1"], "", own.facts)

    assert alone["web1"].status == "drifted"
    assert [c.task for c in alone["web1"].changes] == ["Write motd"]
