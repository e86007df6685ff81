"""The command line: parse arguments, call one function, map errors to exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import output
from agent.config import DEFAULT_PATH, Overrides, load_config
from agent.cycle import EXIT_ERROR, run_check
from agent.errors import AgentError, ConfigError
from agent.state import StateDir, read_status

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

    check = sub.add_parser("check", parents=[common],
                           help="run one detect-only cycle; exit 0 clean, 2 drift, 1 error",
                           description="Fetch, check every host in check + diff mode, commit "
                                       "the reports. Exit 0: all clean; 2: drift; 1: an error, "
                                       "or a host failed, unreachable or unknown.")
    check.add_argument("playbooks", nargs="*", metavar="PLAYBOOK",
                       help="playbooks to run, relative to the repository (like ansible-pull)")
    check.add_argument("-l", "--limit", help="host pattern to check (default: this host)")
    check.add_argument("-t", "--tags", action="append", default=[], help="only these tags")
    check.add_argument("--skip-tags", action="append", default=[], help="skip these tags")
    check.add_argument("-e", "--extra-vars", action="append", default=[],
                       help="key=value, JSON, or @file (repeatable)")
    check.add_argument("--vault-password-file", help="file holding the vault password")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                       help="wait this long for a running cycle to finish (default: don't)")

    status = sub.add_parser("status", parents=[common], help="show the last cycle per host")
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    demo = sub.add_parser("demo", parents=[common],
                          help="start demo pets, serve this project's playbooks from a local "
                               "bare repo, and run a check against them")
    demo.add_argument("--workdir", type=Path, default=Path("/tmp/petkeeper-demo"),
                      help="where the demo keeps its repo, hosts and state")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0))
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
    overrides = Overrides(
        playbooks=tuple(args.playbooks), limit=args.limit, tags=tuple(_split(args.tags)),
        skip_tags=tuple(_split(args.skip_tags)),
        extra_vars=tuple(_absolute_var_file(v) for v in args.extra_vars),
        vault_password_file=_absolute(args.vault_password_file))
    config = load_config(_config_path(args), overrides)
    cycle = run_check(config, wait=args.wait)
    if args.json:
        print(json.dumps(cycle.as_json(), indent=2))
    else:
        print(output.render_check(cycle.as_json(), color=sys.stdout.isatty()))
    return cycle.exit_code


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args))
    status = read_status(StateDir(config.state_dir))
    if status is None:
        print(f"no cycle has run yet (state directory {config.state_dir})")
        return EXIT_ERROR
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(output.render_status(status))
    return int(status.get("last_run", {}).get("exit_code", EXIT_ERROR))


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo  # the demo needs root and sshd; nothing else does

    return run_demo(args.workdir)


COMMANDS: dict[str, Any] = {"check": cmd_check, "status": cmd_status, "demo": cmd_demo}


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
