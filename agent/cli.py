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
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.adapters.gitrepo import Author
from agent.adapters.runner import warn_untested_ansible
from agent.adapters.state import (
    StateDir,
    clear_pause,
    cycle_lock,
    pause_applies,
    read_pause,
    read_status,
)
from agent.config import DEFAULT_PATH, Overrides, load_config
from agent.core.approval import expiry
from agent.cycle.apply import approval_record
from agent.cycle.decide import approve_plan
from agent.cycle.record import publish, report_history
from agent.cycle.source import open_mirror
from agent.cycle.steps import CHECK_STEPS, EXIT_ERROR, RUN_STEPS, run_cycle
from agent.cycle.trust import acknowledge
from agent.errors import AgentError, ConfigError
from agent.operate import output
from agent.operate.notifications import notify_status, send_test
from agent.operate.tell import prepare_tell

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help=f"agent configuration (default {DEFAULT_PATH})")
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="log what each step does (-vv: debug)")
    parser = argparse.ArgumentParser(
        prog="petkeeper", parents=[common],
        description="Keep pet servers true to Git: check drift with Ansible, report it to Git.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pull = argparse.ArgumentParser(add_help=False)
    pull.add_argument("-l", "--limit", help="host pattern to check (default: this host)")
    pull.add_argument("-t", "--tags", action="append", default=[], help="only these tags")
    pull.add_argument("--skip-tags", action="append", default=[], help="skip these tags")
    pull.add_argument("-e", "--extra-vars", action="append", default=[],
                      help="key=value, JSON, or @file (repeatable)")
    pull.add_argument("--vault-password-file", help="file holding the vault password")
    pull.add_argument("--json", action="store_true", help="print the result as JSON")
    pull.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                      help="wait this long for a running cycle to finish (default: don't)")

    playbooks = argparse.ArgumentParser(add_help=False)
    playbooks.add_argument("playbooks", nargs="*", metavar="PLAYBOOK",
                           help="playbooks to run, relative to the repository (ansible-pull)")

    sub.add_parser("check", parents=[common, playbooks, pull],
                           help="run one detect-only cycle; exit 0 clean, 2 drift, 1 error",
                           description="Fetch, check every host in check + diff mode, commit "
                                       "the reports. Exit 0: all clean; 2: drift; 1: an error, "
                                       "or a host failed, unreachable or unknown.")
    sub.add_parser("plan", parents=[common, playbooks, pull],
                   help="check, then show each host's drift with its plan id and decision",
                   description="A check that shows, per host, the plan id to approve, which "
                               "policy rule decided, the maintenance window, and the diffs.")
    run = sub.add_parser("run", parents=[common, playbooks, pull],
                         help="one full cycle: fetch, check, decide, apply what may be, report",
                         description="What the daemon runs: applies only what policy (auto) "
                                     "or a valid approval allows, re-checking before and after.")
    run.add_argument("--now", action="store_true",
                     help="ask the running daemon for a cycle now instead (exit 1 if none runs)")
    apply = sub.add_parser("apply", parents=[common, pull],
                           help="like run; with PLAN_ID, apply that approved plan alone")
    apply.add_argument("plan_id", nargs="?", metavar="PLAN_ID",
                       help="apply only this plan (it must be approved or auto)")
    approve = sub.add_parser("approve", parents=[common],
                             help="approve one plan of the last check (root only)")
    approve.add_argument("plan_id", metavar="PLAN_ID")
    approve.add_argument("--expires", default=None, metavar="DURATION",
                         help="how long the approval counts (default approvals.expires, 4h)")
    approve.add_argument("--comment", default="", help="why; recorded with the approval")
    ack = sub.add_parser("ack", parents=[common],
                         help="accept a rewound source head (force-push, reset) for applies "
                              "again (root only)",
                         description="After a head that does not descend from the last "
                                     "applied commit, applies stop until a person has checked "
                                     "the history and acknowledges that commit here.")
    ack.add_argument("commit", metavar="COMMIT", help="the rewound head petkeeper status names")
    ack.add_argument("--comment", default="", help="why; recorded with the acknowledgement")
    history = sub.add_parser("history", parents=[common],
                             help="what the reports branch says: drift, approvals, applies")
    history.add_argument("host", nargs="?", help="only this host")
    history.add_argument("--json", action="store_true", help="print the history as JSON")

    status = sub.add_parser("status", parents=[common], help="show the last cycle per host")
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    sub.add_parser("daemon", parents=[common],
                   help="run cycles on the configured schedule until stopped (systemd service)",
                   description="Fetch every daemon.fetch_interval; run a cycle on a new commit "
                               "or approval, or every daemon.check_interval. SIGHUP reloads "
                               "the config, SIGTERM stops the current step and exits.")
    pause = sub.add_parser("pause", parents=[common],
                           help="stop applying (the daemon and petkeeper run only check)")
    pause.add_argument("--reason", required=True, help="why; shown by status and in reports")
    pause.add_argument("--checks", action="store_true",
                       help="pause the daemon's checks too (whole cycles)")
    sub.add_parser("resume", parents=[common], help="undo petkeeper pause")
    notify = sub.add_parser("notify", parents=[common],
                            help="show the notification targets and their outbox; --test "
                                 "sends each a test event",
                            description="Without --test: each target of notify.targets (by "
                                        "its key, never its URL), the events it gets and how "
                                        "many wait for it. With --test: send one test event to "
                                        "every target and say what each answered; exit 1 if "
                                        "one did not take it.")
    notify.add_argument("--test", action="store_true",
                        help="send one test event to every target")

    demo = sub.add_parser("demo", parents=[common],
                          help="start demo pets, serve this project's playbooks from a local "
                               "bare repo, and run a check against them")
    demo.add_argument("--workdir", type=Path, default=Path("/tmp/petkeeper-demo"),
                      help="where the demo keeps its repo, hosts and state")
    demo.add_argument("--keep", action="store_true",
                      help="keep the demo hosts up until Ctrl-C, to try plan, approve and run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0))
    if args.command in RUNS_ANSIBLE:
        warn_untested_ansible()
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        for problem in e.problems:
            print(f"petkeeper: error: {problem}", file=sys.stderr)
        return EXIT_ERROR
    except AgentError as e:
        print(f"petkeeper: error: {e}", file=sys.stderr)
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
    overrides = Overrides(
        playbooks=tuple(getattr(args, "playbooks", ())), limit=args.limit,
        tags=tuple(_split(args.tags)),
        skip_tags=tuple(_split(args.skip_tags)),
        extra_vars=tuple(_absolute_var_file(v) for v in args.extra_vars),
        vault_password_file=_absolute(args.vault_password_file))
    if getattr(args, "now", False):
        return cmd_run_now(args)
    config = load_config(_config_path(args), overrides)
    steps = CHECK_STEPS if args.command in ("check", "plan") else RUN_STEPS
    cycle = run_cycle(config, steps, args.command, wait=args.wait,
                      only_plan=getattr(args, "plan_id", None), finish=prepare_tell(config))
    data = cycle.as_json()
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.command == "check":
        print(output.render_check(data, color=sys.stdout.isatty()))
    else:
        print(output.render_plan(data, color=sys.stdout.isatty()))
    return cycle.exit_code


def cmd_approve(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise AgentError("approve: only root may approve a change to a pet; run it with sudo "
                         "(your login name is recorded)")
    config = load_config(_config_path(args))
    state = StateDir(config.state_dir)
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        expires = expiry(now, args.expires) if args.expires else \
            now + timedelta(seconds=config.approvals.expires)
    except ValueError as e:
        raise AgentError(f"approve: --expires: {e}; write e.g. --expires 4h") from None
    with cycle_lock(state, f"petkeeper approve {args.plan_id}"):
        mirror = open_mirror(config, state)
        approval = approve_plan(config, state, mirror, args.plan_id, approver_name(), now,
                                expires, args.comment)
        r = config.reports
        result = publish(mirror, lambda base: [approval_record(approval)],
                         url=config.reports_url, branch=r.branch,
                         author=Author(r.author_name, r.author_email), push=r.push)
    print(f"approved plan {approval.plan_id} for {approval.host} as {approval.approver}, "
          f"until {approval.expires_at}; the next `petkeeper run` applies it")
    if result.error:
        print(f"warning: {result.error}", file=sys.stderr)
    return 0


def cmd_ack(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise AgentError("ack: only root may let applies resume on a pet; run it with sudo "
                         "(your login name is recorded)")
    config = load_config(_config_path(args))
    state = StateDir(config.state_dir)
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    with cycle_lock(state, f"petkeeper ack {args.commit}"):
        ack = acknowledge(state, open_mirror(config, state), args.commit, approver_name(), now,
                          args.comment)
    before = str(ack["applied_before"] or "none")[:12]
    print(f"acknowledged {ack['commit'][:12]} as {ack['by']} (last applied commit {before}); "
          "the next run may apply corrections from it and its descendants")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args))
    state = StateDir(config.state_dir)
    mirror = open_mirror(config, state)
    with contextlib.suppress(AgentError):  # offline: show what the mirror has
        mirror.fetch_reports(config.reports_url, config.reports.branch)
    entries = report_history(mirror, config.reports.branch, args.host)
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        print(output.render_history(entries))
    return 0


def approver_name() -> str:
    """The login name of the person at the terminal, also through sudo."""
    try:
        return os.getlogin()
    except OSError:
        return os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args))
    state = StateDir(config.state_dir)
    status, pause = read_status(state), read_pause(state)
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
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    pause, running = pause_applies(StateDir(config.state_dir), approver_name(), now,
                                   args.reason, args.checks)
    print(output.render_pause(pause, running))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args))
    pause = clear_pause(StateDir(config.state_dir))
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


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo  # the demo needs root and sshd; nothing else does

    return run_demo(args.workdir, keep=args.keep)


RUNS_ANSIBLE = frozenset({"check", "plan", "run", "apply", "daemon", "demo"})
COMMANDS: dict[str, Any] = {"check": cmd_check, "plan": cmd_check, "run": cmd_check,
                            "apply": cmd_check, "approve": cmd_approve, "ack": cmd_ack,
                            "history": cmd_history, "status": cmd_status, "demo": cmd_demo,
                            "daemon": cmd_daemon, "pause": cmd_pause, "resume": cmd_resume,
                            "notify": cmd_notify}


def _config_path(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "config", None) or os.environ.get("PETKEEPER_CONFIG")
                or DEFAULT_PATH)


def _split(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _absolute(path: str | None) -> str | None:
    return str(Path(path).absolute()) if path else None


def _absolute_var_file(value: str) -> str:
    """-e @file on the command line is relative to where the user stands, not the repo."""
    return f"@{Path(value[1:]).absolute()}" if value.startswith("@") else value


def _setup_logging(verbosity: int) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("petkeeper: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("agent").setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
