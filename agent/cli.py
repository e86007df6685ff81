"""The command line: parse arguments, call one function, map errors to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pwd
import sys
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.adapters.runner import Watcher, warn_untested_ansible
from agent.adapters.state import StateDir
from agent.arguments import build_parser, misused_option
from agent.config import DEFAULT_PATH, Overrides, load_config
from agent.cycle.pipeline import pipeline_run
from agent.cycle.steps import CHECK_STEPS, EXIT_DRIFT, EXIT_ERROR, RUN_STEPS, Cycle, run_cycle
from agent.errors import AgentError, ConfigError
from agent.operate import ci, commands, output
from agent.operate.approve_git import approve_plans_via_git
from agent.operate.fleet import render_fleet
from agent.operate.fleet_git import fleet_request, remote_config
from agent.operate.fleet_wait import fleet_view, wait_request
from agent.operate.logs import setup_logging
from agent.operate.notifications import notify_status, send_test
from agent.operate.output import color_wanted
from agent.operate.progress import ProgressLine
from agent.operate.summary import render_preview, without_commands
from agent.operate.tell import prepare_tell

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.error(f"choose a command: {', '.join(parser.commands)}")
    if extra:
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    if problem := misused_option(args):
        parser.commands[args.command].error(problem)
    verbosity = getattr(args, "verbose", 0)
    args.log = setup_logging(verbosity, timestamps=args.command == "daemon" or verbosity > 0)
    if args.command in RUNS_ANSIBLE:
        warn_untested_ansible()
    try:
        return int(COMMANDS[args.command](args))
    except ConfigError as e:
        for problem in e.problems:
            print(f"petkeeper: error: {problem}", file=sys.stderr)
        return EXIT_ERROR
    except AgentError as e:
        print(f"petkeeper: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except PermissionError as e:  # not root: the state directory is root's alone (0700)
        print(f"petkeeper: error: {e.filename or e}: permission denied; Petkeeper's state "
              "directory and config are root's: run it with sudo", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # e.g. `petkeeper check --json | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("petkeeper: interrupted", file=sys.stderr)
        return 130
    except Exception:
        print("petkeeper: unexpected error, this is probably a bug:", file=sys.stderr)
        traceback.print_exc()
        return EXIT_ERROR


def cmd_check(args: argparse.Namespace) -> int:
    """check, plan, run and apply: one cycle each, differing in steps and what they print."""
    overrides = _overrides(args)
    if getattr(args, "now", False):
        return cmd_run_now(args)
    if getattr(args, "tree", None) is not None:
        return cmd_check_tree(args, overrides)
    if args.command == "check":
        ci.require_tree(args.inventory, args.policy, args.private_key, args.known_hosts,
                        args.state_dir)
    steps = CHECK_STEPS if args.command in ("check", "plan") else RUN_STEPS
    seen: list[Cycle] = []  # the cycle, also when it ends in an error (for --json)
    try:
        config = load_config(_config_path(args), overrides)
        tell = prepare_tell(config)

        def finish(c: Cycle, error: BaseException | None) -> None:
            seen.append(c)
            tell(c, error)

        with progress_line(args) as watch:
            if args.command == "run" and args.state_dir is not None:  # run in a pipeline
                config = replace(config, state_dir=args.state_dir.absolute())
                cycle = pipeline_run(config, os.environ, take_over=args.take_over,
                                     wait=args.wait, finish=finish, watch=watch)
            else:
                cycle = run_cycle(config, steps, args.command, wait=args.wait,
                                  only_plan=getattr(args, "plan_id", None), finish=finish,
                                  watch=watch)
    except AgentError as e:
        if args.json:  # scripts read the error from stdout too
            print(json.dumps(output.cycle_json(seen[0].as_json() if seen else None, e), indent=2))
        raise
    data = cycle.as_json()
    if args.json:
        print(json.dumps(output.cycle_json(data), indent=2))
    elif args.command == "check":
        print(output.render_check(data, color=use_color(args)))
    else:
        print(output.render_plan(data, color=use_color(args)))
    return cycle.exit_code


def cmd_check_tree(args: argparse.Namespace, overrides: Overrides) -> int:
    with progress_line(args) as watch:
        data, code = ci.check_checkout(_tree_options(args, overrides), watch)
    print(json.dumps(data, indent=2) if args.json
          else output.render_check(data, color=use_color(args)))
    return code


def cmd_preview(args: argparse.Namespace) -> int:
    formats = ci.Formats(junit=args.junit, github=args.github,
                         codequality=args.gitlab_codequality, markdown=args.markdown)
    with progress_line(args) as watch:
        done = ci.preview(_tree_options(args, _overrides(args)), args.base, formats, os.environ,
                          reports_url=args.reports_url, fail_on=args.fail_on, watch=watch)
    if args.json:
        print(json.dumps(done.data, indent=2))
    else:
        text = render_preview(done.data, color=use_color(args))
        print(without_commands(text) if args.github else text)
    for line in done.annotations:
        print(line)
    return done.exit_code


def _tree_options(args: argparse.Namespace, overrides: Overrides) -> ci.TreeOptions:
    return ci.TreeOptions(tree=args.tree, config=ci.config_for_tree(
                              getattr(args, "config", None), os.environ),
                          overrides=overrides, inventory=args.inventory, policy=args.policy,
                          state_dir=args.state_dir, wait=args.wait,
                          private_key=_absolute(args.private_key),
                          known_hosts=_absolute(args.known_hosts))


def cmd_approve(args: argparse.Namespace) -> int:
    if args.via_git:
        return cmd_approve_via_git(args)
    config = load_config(_config_path(args))
    done = commands.approve(config, args.plan_ids, approver_name(), args.expires, args.comment,
                            partial=args.partial,
                            force_conflicts=args.force_conflicts)
    for a in done.approvals:
        print(f"approved plan {a.plan_id} for {a.host} as {a.approver}, until {a.expires_at}")
    print("the next `petkeeper run` (or the daemon's next cycle) applies "
          f"{'them' if len(done.approvals) > 1 else 'it'}")
    if done.push_error:
        print(f"warning: {done.push_error}", file=sys.stderr)
    return 0


def cmd_approve_via_git(args: argparse.Namespace) -> int:
    config = remote_config(_config_path(args), args.repo, args.branch, args.reports_url)
    for a in approve_plans_via_git(config, args.cache, args.plan_ids, args.expires,
                                   args.comment, args.sign, partial=args.partial):
        print(f"approved plan {a.plan_id} for {a.host} as {a.approver}, until {a.expires_at}: "
              f"commit {a.commit[:12]} pushed to {a.branch}; the host's next run applies it")
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    config = remote_config(_config_path(args), args.repo, args.branch, args.reports_url)
    wait = wait_request(args.wait_for, args.timeout, args.interval)
    view = fleet_view(fleet_request(config, args.cache, stale=args.stale,
                                    inventory=args.inventory, page=args.html, since=args.since),
                      wait, lambda line: print(line, file=sys.stderr, flush=True))
    for problem in view["problems"]:
        print(f"petkeeper: error: {problem}", file=sys.stderr)
    print(json.dumps(view, indent=2) if args.json else render_fleet(view, use_color(args)))
    if args.html:
        print(f"wrote {args.html}", file=sys.stderr)
    return int(view["exit_code"])


def cmd_undo(args: argparse.Namespace) -> int:
    if bool(args.apply_id) == bool(args.host):
        build_parser().commands["undo"].error("give either APPLY_ID or --host HOST")
    plan = commands.plan_undo(load_config(_config_path(args)), args.apply_id, args.host)
    print(json.dumps(plan, indent=2) if args.json else
          output.render_undo_plan(plan, color=use_color(args)))
    return EXIT_DRIFT if plan["action"] == "wait" else 0


def cmd_release(args: argparse.Namespace) -> int:
    hold = commands.release(load_config(_config_path(args)), args.host)
    print(f"released {args.host} (held by undo of {hold['apply_id']} by {hold['by']} since "
          f"{hold['at']}); the next run may correct it again")
    return 0


def cmd_ack(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args))
    ack = commands.acknowledge_head(config, args.commit, approver_name(), args.comment)
    before = str(ack["applied_before"] or "none")[:12]
    print(f"acknowledged {ack['commit'][:12]} as {ack['by']} (last applied commit {before}); "
          "the next run may apply corrections from it and its descendants")
    return 0


def cmd_adopt(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args))
    moved = commands.adopt(config, approver_name())
    print(f"{config.state_dir} now belongs to {moved['url']}"
          + (f" (was {moved['before']})" if moved["before"] else "")
          + f"; {config.repo.branch} is at {moved['head'][:12]}")
    if moved["hold"]:
        print(f"warning: {moved['hold']}", file=sys.stderr)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args))
    entries = commands.read_history(config, args.host, args.since, args.count)
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        print(output.render_history(entries, f"nothing since {args.since}" if args.since
                                    else "no reports yet"))
    return 0


def approver_name() -> str:
    """The login name of the person at the terminal, also through sudo."""
    try:
        return os.getlogin()
    except OSError:
        return os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args))
    status, pause = commands.read_state_status(config)
    if args.json:
        print(json.dumps({**(status or {}), "paused": pause}, indent=2))
    if pause and not args.json:
        print(f"paused by {pause['by']} since {pause['at']}"
              f"{' (checks too)' if pause['checks'] else ''}: {pause['reason']}")
    if status is None:
        if not args.json:
            print(f"no cycle has run yet (state directory {config.state_dir})")
        return EXIT_ERROR
    if not args.json:
        print(output.render_status(status))
    return int(status.get("last_run", {}).get("exit_code", EXIT_ERROR))


def cmd_daemon(args: argparse.Namespace) -> int:
    from agent.daemon.service import run_daemon  # APScheduler is loaded by the daemon only

    agent_log = logging.getLogger("agent")
    agent_log.setLevel(min(agent_log.level, logging.INFO))  # the journal wants each cycle
    return run_daemon(_config_path(args))


def cmd_run_now(args: argparse.Namespace) -> int:
    from agent.daemon.service import request_cycle

    config = load_config(_config_path(args))
    pid = request_cycle(StateDir(config.state_dir))
    print(f"asked the daemon (pid {pid}) for a cycle now; see its log or petkeeper status")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args))
    done = commands.pause(config, approver_name(), args.reason, args.checks)
    print(output.render_pause(done.pause, done.running, done.previous))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args))
    pause = commands.resume(config)
    if pause is None:
        print("not paused")
    else:
        print(f"resumed (paused by {pause['by']} since {pause['at']}: {pause['reason']})")
    return 0


def cmd_notify(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args))
    if not args.test:
        print("\n".join(notify_status(config)))
        return 0
    ok, lines = send_test(config)
    print("\n".join(lines))
    return 0 if ok else EXIT_ERROR


def cmd_init(args: argparse.Namespace) -> int:
    from agent.onboard.init import InitRequest, init_agent, render_init  # paramiko

    config = getattr(args, "config", None) or os.environ.get("PETKEEPER_CONFIG")
    result = init_agent(InitRequest(
        url=args.url, branch=args.branch, inventory=args.inventory, limit=args.limit,
        playbooks=tuple(args.playbook), reports_url=args.reports_url, known_hosts=args.known_hosts,
        ansible_private_key=_absolute(args.ansible_private_key),
        ansible_known_hosts=_absolute(args.ansible_known_hosts),
        config=Path(config).absolute() if config else None, prefix=args.prefix.absolute(),
        force=args.force), _Terminal())
    print(render_init(result))
    return 0


class _Terminal:
    """init's questions, on stderr; answers from stdin (a terminal, or a pipe)."""

    def __init__(self) -> None:
        self.interactive = sys.stdin.isatty()

    def ask(self, question: str, default: str) -> str:
        print(f"{question}{f' [{default}]' if default else ''}: ", end="", file=sys.stderr,
              flush=True)
        line = self._answer()
        if not line:
            raise AgentError(f"init: no answer to {question!r} (end of input); pass it as an "
                             "option")
        return line.strip() or default

    def confirm(self, question: str) -> bool:
        print(f"{question} [yes/no]: ", end="", file=sys.stderr, flush=True)
        return self._answer().strip().lower() in ("y", "yes")

    def _answer(self) -> str:
        """A line of stdin; from a pipe, shown after the question, as a terminal echoes it."""
        line = sys.stdin.readline()
        if not self.interactive:
            print(line.strip(), file=sys.stderr)
        return line


def cmd_doctor(args: argparse.Namespace) -> int:
    from agent.onboard.doctor import doctor_json, exit_code, render_doctor, run_doctor  # paramiko

    findings = run_doctor(_config_path(args, args.prefix.absolute()), args.prefix.absolute())
    print(json.dumps(doctor_json(findings), indent=2) if args.json else render_doctor(findings))
    return exit_code(findings)


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo  # the demo needs root and sshd; nothing else does

    return run_demo(args.workdir, keep=args.keep, color=use_color(args),
                    progress=lambda: progress_line(args))


@contextlib.contextmanager
def progress_line(args: argparse.Namespace) -> Iterator[Watcher | None]:
    """Within: one updating line on stderr showing what Ansible does, when stderr is a
    terminal, and neither --json nor -q asked for quiet; log lines step around it."""
    if getattr(args, "quiet", False) or getattr(args, "json", False) or \
            not sys.stderr.isatty():
        yield None
        return
    with ProgressLine(sys.stderr) as line:
        args.log.interlude = line.interlude
        try:
            yield line
        finally:
            args.log.interlude = None


def use_color(args: argparse.Namespace) -> bool:
    return color_wanted(getattr(args, "color", "auto"), sys.stdout.isatty(), os.environ)


RUNS_ANSIBLE = frozenset({"check", "plan", "run", "apply", "daemon", "demo", "preview", "undo"})
COMMANDS: dict[str, Any] = {"check": cmd_check, "plan": cmd_check, "run": cmd_check,
                            "apply": cmd_check, "approve": cmd_approve, "ack": cmd_ack,
                            "history": cmd_history, "status": cmd_status, "demo": cmd_demo,
                            "daemon": cmd_daemon, "pause": cmd_pause, "resume": cmd_resume,
                            "notify": cmd_notify, "adopt": cmd_adopt, "doctor": cmd_doctor,
                            "init": cmd_init, "preview": cmd_preview, "fleet": cmd_fleet,
                            "undo": cmd_undo, "release": cmd_release}


def _overrides(args: argparse.Namespace) -> Overrides:
    return Overrides(
        playbooks=tuple(getattr(args, "playbooks", ())), limit=args.limit,
        tags=tuple(_split(args.tags)),
        skip_tags=tuple(_split(args.skip_tags)),
        extra_vars=tuple(_absolute_var_file(v) for v in args.extra_vars),
        vault_password_file=_absolute(args.vault_password_file))


def _config_path(args: argparse.Namespace, prefix: Path = Path("/")) -> Path:
    return Path(getattr(args, "config", None) or os.environ.get("PETKEEPER_CONFIG")
                or prefix / DEFAULT_PATH.relative_to("/"))


def _split(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _absolute(path: str | None) -> str | None:
    return str(Path(path).absolute()) if path else None


def _absolute_var_file(value: str) -> str:
    """-e @file on the command line is relative to where the user stands, not the repo."""
    return f"@{Path(value[1:]).absolute()}" if value.startswith("@") else value


if __name__ == "__main__":
    sys.exit(main())
