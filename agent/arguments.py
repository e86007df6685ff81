"""What the command line accepts: every command, its options, its one-line summary, its full
help with examples, and usage errors that name the command (exit 1: 2 means drift)."""

from __future__ import annotations

import argparse
import platform
import sys
import textwrap
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from agent import __version__
from agent.config import DEFAULT_PATH
from agent.operate.output import COLOR_CHOICES

EXIT_USAGE = 1  # as any error; argparse's 2 would read as drift


class Parser(argparse.ArgumentParser):
    """argparse, where a usage error names the subcommand's usage and exits 1 (2 means drift
    here), and the subcommands' parsers can be found by name."""

    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> Parser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                        help=f"agent configuration (default $PETKEEPER_CONFIG, or "
                             f"{DEFAULT_PATH})")
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="log what each step does, with times (-vv: debug)")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress line on the terminal")
    common.add_argument("--color", choices=COLOR_CHOICES, default=argparse.SUPPRESS,
                        metavar="WHEN",
                        help="auto (on a terminal, unless NO_COLOR is set), always or never"
                             " (default auto)")
    parser = Parser(
        prog="petkeeper", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_wrap("Keep pet servers true to Git: check drift with Ansible, decide by "
                          "policy and approvals, apply, and report every step to Git."),
        epilog="exit codes: 0 ok or clean, 1 error (or a host failed, unreachable or unknown), "
               "2 drift, 3 warnings only (doctor)\n\npetkeeper COMMAND --help shows a "
               "command's options and examples.")
    parser.add_argument("--version", action="version", version=version_line(),
                        help="show the versions of Petkeeper, ansible-core, ansible-runner "
                             "and Python")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_cycle_commands(sub, common)
    _add_ci_commands(sub, common, playbooks_parser("the checkout"))
    _add_approval_commands(sub, common)
    _add_reading_commands(sub, common)
    _add_service_commands(sub, common)
    _add_setup_commands(sub, common)
    parser.commands = dict(sub.choices)
    return parser


def misused_option(args: argparse.Namespace) -> str | None:
    """A usage error argparse cannot see: an option given where it would be silently ignored."""
    if args.command != "approve":
        return None
    if args.via_git and args.force_conflicts:
        return ("--force-conflicts: undo plans are approved on the host itself (sudo petkeeper "
                "approve PLAN_ID --force-conflicts), not --via-git")
    remote = {"--sign": args.sign, "--repo": args.repo, "--branch": args.branch,
              "--reports-url": args.reports_url, "--cache": args.cache}
    given = [option for option, value in remote.items() if value]
    if given and not args.via_git:
        return (f"{given[0]}: only with --via-git (approving from a workstation); add "
                f"--via-git, or drop {given[0]} to approve on the host itself")
    return None


def _command(sub: Any, name: str, parents: list[argparse.ArgumentParser], summary: str,
             description: str, examples: Sequence[str]) -> argparse.ArgumentParser:
    """A subcommand with its one-line SUMMARY (in petkeeper --help), its DESCRIPTION and
    EXAMPLES (in petkeeper NAME --help)."""
    return sub.add_parser(
        name, parents=parents, help=summary, description=_wrap(description),
        epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter)


def _pull_options() -> argparse.ArgumentParser:
    pull = argparse.ArgumentParser(add_help=False)
    pull.add_argument("-l", "--limit", metavar="PATTERN",
                      help="hosts to check, an Ansible pattern (default: limit in the config, "
                           "else this host)")
    pull.add_argument("-t", "--tags", action="append", default=[], help="only these tags")
    pull.add_argument("--skip-tags", action="append", default=[], help="skip these tags")
    pull.add_argument("-e", "--extra-vars", action="append", default=[], metavar="VARS",
                      help="key=value, JSON, or @file (repeatable)")
    pull.add_argument("--vault-password-file", metavar="FILE",
                      help="file holding the vault password")
    pull.add_argument("--json", action="store_true", help="print the result as JSON")
    pull.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                      help="wait this long for a running cycle to finish (default: don't)")
    return pull


def _add_cycle_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    pull = _pull_options()
    playbooks = playbooks_parser("the repository (or the checkout, with --tree)")
    check = _command(sub, "check", [common, playbooks, pull],
             "one detect-only cycle; exit 0 clean, 2 drift, 1 error",
             "Fetch the repo, check every host in check + diff mode, and commit the reports. "
             "Exit 0: all clean; 2: drift; 1: an error, or a host failed, unreachable or "
             "unknown.",
             ["petkeeper check", "petkeeper check --limit web1 --tags sshd site.yml",
              "petkeeper check --json | jq '.hosts[].status'",
              "petkeeper check --tree . -i inventory/hosts.yml --limit web1 --private-key "
              "~/.ssh/ci_key"])
    _add_tree_options(check, required=False)
    _command(sub, "plan", [common, playbooks, pull],
             "a check showing each host's plan id, decision and diffs",
             "A check that shows, per host, the plan id to approve, which policy rule decided, "
             "the maintenance window, and the diffs. Exits like check.",
             ["petkeeper plan", "petkeeper plan --limit web2"])
    run = _command(sub, "run", [common, playbooks, pull],
                   "one full cycle: check, then apply what may be applied",
                   "What the daemon runs: a check, then applies what policy (auto) or a valid "
                   "approval allows, re-checking each host before and after. Exits like "
                   "check, and 1 when an apply failed or did not converge.",
                   ["petkeeper run", "petkeeper run --now    # ask the running daemon instead"])
    run.add_argument("--now", action="store_true",
                     help="ask the running daemon for a cycle now instead (exit 1 if none runs)")
    run.add_argument("--state-dir", type=Path, metavar="DIR",
                     help="in a CI pipeline: this persistent state directory (a temporary one "
                          "is refused), and no host another agent manages")
    run.add_argument("--take-over", action="store_true",
                     help="with --state-dir: apply hosts whose reports show another agent, too")
    apply = _command(sub, "apply", [common, pull],
                     "like run; with PLAN_ID, apply that plan alone",
                     "Like run. With PLAN_ID, apply only that plan: it must be a plan of the "
                     "last check, approved (or auto by policy), and the re-check must find the "
                     "very drift it was made for.",
                     ["petkeeper apply 30c4aa367513c4ee", "petkeeper apply"])
    apply.add_argument("plan_id", nargs="?", metavar="PLAN_ID",
                       help="the plan to apply, as plan or status shows it")


def playbooks_parser(where: str) -> argparse.ArgumentParser:
    playbooks = argparse.ArgumentParser(add_help=False)
    playbooks.add_argument("playbooks", nargs="*", metavar="PLAYBOOK",
                           help="playbooks to run instead of the configured ones, relative to "
                                f"{where} (like ansible-pull)")
    return playbooks


def _add_tree_options(parser: argparse.ArgumentParser, required: bool) -> None:
    """What a check of a checkout takes: the folder, and what agent.yml would say."""
    tree = parser.add_argument_group("checking a checkout (CI)")
    tree.add_argument("--tree", type=Path, metavar="DIR", default=None if not required
                      else Path("."),
                      help="check the playbooks and inventory of this folder as they are: no "
                           "mirror, no branch; never applies, pushes reports or notifies"
                           + (" (default: .)" if required else ""))
    tree.add_argument("-i", "--inventory", metavar="PATH",
                      help="inventory, relative to the checkout (default: inventory in the "
                           "config)")
    tree.add_argument("--policy", metavar="PATH",
                      help="policy file, relative to the checkout (default "
                           "petkeeper/policy.yml)")
    tree.add_argument("--private-key", metavar="FILE",
                      help="SSH key for the hosts (ansible.private_key_file)")
    tree.add_argument("--known-hosts", metavar="FILE",
                      help="the hosts' known_hosts file (ansible.known_hosts_file)")
    tree.add_argument("--state-dir", type=Path, metavar="DIR",
                      help="state directory of this check (default: a temporary one, removed "
                           "afterwards)")


def _add_ci_commands(sub: Any, common: argparse.ArgumentParser,
                     playbooks: argparse.ArgumentParser) -> None:
    preview = _command(
        sub, "preview", [common, playbooks, _pull_options()],
        "what a pull request would do to each host: introduced, existing, resolved",
        "Check the checkout (--tree, default .) like check --tree, then compare, per host and "
        "per task, with the newest report of each host that checked the base commit: each "
        "change is introduced (the pull request causes it), existing (the host already drifts "
        "there on the base) or resolved; a host with no report for the base says base "
        "unknown. Exit 1 on an error (or a host failed, unreachable or unknown), 2 when "
        "changes of the kinds --fail-on names exist, else 0. Writes JUnit, GitHub, GitLab "
        "and Markdown reports for CI systems.",
        ["petkeeper preview --base origin/main -i inventory/hosts.yml --junit preview.xml",
         "petkeeper preview --base \"$GITHUB_BASE_SHA\" --github --reports-url "
         "ssh://git@git.example.com/pets.git",
         "petkeeper preview --base \"$CI_MERGE_REQUEST_DIFF_BASE_SHA\" "
         "--gitlab-codequality gl-code-quality-report.json"])
    preview.add_argument("--base", required=True, metavar="REF",
                         help="the commit the pull request goes into: a commit id or a ref "
                              "of the checkout (origin/main)")
    preview.add_argument("--fail-on", choices=("introduced", "drift"), default="introduced",
                         help="exit 2 for introduced changes (default), or for any drift")
    preview.add_argument("--reports-url", metavar="URL",
                         help="where the agents push their reports (default: reports.url of "
                              "--config, else the checkout's origin)")
    preview.add_argument("--junit", type=Path, metavar="FILE",
                         help="write JUnit XML: a testsuite per host, a failure per change")
    preview.add_argument("--github", action="store_true",
                         help="in GitHub Actions: append the summary to $GITHUB_STEP_SUMMARY "
                              "and annotate each change at its task's line")
    preview.add_argument("--gitlab-codequality", type=Path, metavar="FILE",
                         help="write GitLab's Code Quality JSON")
    preview.add_argument("--markdown", type=Path, metavar="FILE",
                         help="write the summary as Markdown, for a pull-request comment")
    _add_tree_options(preview, required=True)


def _add_approval_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    approve = _command(sub, "approve", [common],
                       "approve plans of the last check (root only)",
                       "Approve plans of the last check (petkeeper plan shows their ids): one "
                       "approval record each, bound to the host, the source commit and the exact "
                       "drift, committed to the reports branch. Root only; your login name is "
                       "recorded. The next run (or the daemon) applies them.",
                       ["sudo petkeeper approve 30c4aa367513c4ee --expires 2h --comment "
                        "\"bob's note goes\"",
                        "sudo petkeeper approve 30c4aa367513c4ee 8381b01fc31e59fe",
                        "petkeeper approve 30c4aa367513c4ee --via-git --sign    # a workstation"])
    approve.add_argument("plan_ids", nargs="+", metavar="PLAN_ID",
                         help="the plans to approve, as plan or status shows them")
    approve.add_argument("--expires", default=None, metavar="DURATION",
                         help="how long the approvals count (default approvals.expires, 4h)")
    approve.add_argument("--comment", default="", help="why; recorded with each approval")
    approve.add_argument("--partial", action="store_true",
                         help="approve a partial plan, knowing that its check stopped at a task "
                              "that failed in check mode (the tasks after it were not checked)")
    approve.add_argument("--via-git", action="store_true",
                         help="from anywhere, no root: commit approvals/<host>.yml for each plan "
                              "a host's report shows waiting, with your own Git identity, to "
                              "the source branch, and push it")
    approve.add_argument("--sign", action="store_true",
                         help="with --via-git: sign the commit with your Git signing key "
                              "(needed when the pets verify signatures)")
    _remote_options(approve)
    approve.add_argument("--force-conflicts", action="store_true",
                         help="an undo plan: overwrite files changed again since the apply")
    undo = _command(sub, "undo", [common],
                    "plan putting a host's files back as they were before an apply",
                    "Make the undo plan of an apply (petkeeper history shows apply ids): each "
                    "file the apply changed, with the diff from what the host has now back to "
                    "the snapshot taken before the apply, the conflicts (changed again since) "
                    "and what no undo can put back. Approve its plan id like any plan; the next "
                    "run applies it and holds the host until petkeeper release.",
                    ["petkeeper undo 20261201T221500Z-3fa2c1/web2", "petkeeper undo --host web2",
                     "sudo petkeeper approve 5d1c0e2a9b7f4c3d && petkeeper run"])
    undo.add_argument("apply_id", nargs="?", metavar="APPLY_ID",
                      help="the apply to undo, as history shows it")
    undo.add_argument("--host", metavar="HOST", help="undo HOST's last apply")
    undo.add_argument("--json", action="store_true", help="print the undo plan as JSON")
    release = _command(sub, "release", [common],
                       "let corrections reach a host an undo holds",
                       "After petkeeper undo, the host is held: its drift is reported but not "
                       "corrected, until a new commit changes that drift or release lifts the "
                       "hold. (resume lifts petkeeper pause, not this.)",
                       ["petkeeper release web2"])
    release.add_argument("host", metavar="HOST", help="the host to release")
    ack = _command(sub, "ack", [common],
                   "let applies resume after a rewound branch (root only)",
                   "After a source head that does not descend from the last applied commit "
                   "(a force-push, a reset), applies stop until a person has checked the "
                   "history and acknowledges that commit here.",
                   ["sudo petkeeper ack 2a215dff1786 --comment \"rollback on purpose\""])
    ack.add_argument("commit", metavar="COMMIT", help="the rewound head petkeeper status names")
    ack.add_argument("--comment", default="", help="why; recorded with the acknowledgement")


def _add_reading_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    history = _command(sub, "history", [common],
                       "what the reports say happened, per host",
                       "What the reports in Git say happened, newest first, one fact per "
                       "line: checks whose result changed, approvals, applies.",
                       ["petkeeper history pet2", "petkeeper history --since 7d -n 20",
                        "petkeeper history --since 2026-11-01 --json"])
    history.add_argument("host", nargs="?", metavar="HOST", help="only this host")
    history.add_argument("--since", metavar="WHEN",
                         help="only what happened since WHEN: a duration such as 7d or 12h, or "
                              "an ISO 8601 date such as 2026-11-01")
    history.add_argument("-n", "--max-count", type=int, metavar="N", dest="count",
                         help="only the newest N entries")
    history.add_argument("--json", action="store_true", help="print the history as JSON")
    status = _command(sub, "status", [common],
                      "the last check and apply per host",
                      "The last cycle and, per host, its last check and last apply, read from "
                      "the state directory (no Git, no Ansible). Exits with the last cycle's "
                      "code, or 1 when none has run.",
                      ["petkeeper status", "petkeeper status --json"])
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    _add_fleet_command(sub, common)


def _add_fleet_command(sub: Any, common: argparse.ArgumentParser) -> None:
    fleet = _command(sub, "fleet", [common],
                     "every host's state from the reports in Git, on any machine",
                     "Read every host's newest report from Git (no agent state, no root) and "
                     "print one line per host. Exit 0: all clean and fresh; 2: drift; 1: a "
                     "host failed, unreachable, unknown, stale, missing or untrusted.",
                     ["petkeeper fleet --repo ssh://git@git.example.org/pets.git",
                      "petkeeper fleet --inventory inventories/prod/hosts.yml --stale 2h",
                      "petkeeper fleet --json | jq '.hosts[] | select(.status != \"clean\")'",
                      "petkeeper fleet --html /var/www/fleet/index.html",
                      "petkeeper fleet --wait-for $GITHUB_SHA --timeout 30m   # after merge"])
    _remote_options(fleet)
    fleet.add_argument("--inventory", type=Path, metavar="FILE",
                       help="hosts with no report are missing, reports of hosts not in it are "
                            "retired (default: the configured inventory, if any)")
    fleet.add_argument("--stale", metavar="DURATION",
                       help="a report older than this is stale (default: twice "
                            "reports.heartbeat, 48h)")
    fleet.add_argument("--json", action="store_true", help="print the view as JSON")
    fleet.add_argument("--html", type=Path, metavar="FILE",
                       help="also write the view as one static page to FILE")
    fleet.add_argument("--since", metavar="WHEN", default="7d",
                       help="the page's history: since then, a duration or a date (default 7d)")
    fleet.add_argument("--wait-for", metavar="COMMIT",
                       help="wait until every host's report checked COMMIT (a commit of the "
                            "source branch, or head) or a later one and no apply is under way; "
                            "then exit as above (1 on --timeout)")
    fleet.add_argument("--timeout", metavar="DURATION",
                       help="with --wait-for: give up after this long (default 30m)")
    fleet.add_argument("--interval", metavar="DURATION",
                       help="with --wait-for: read the reports this often (default 15s)")


def _remote_options(parser: argparse.ArgumentParser) -> None:
    """Where the repo is, for commands that run anywhere (fleet, approve --via-git)."""
    parser.add_argument("--repo", metavar="URL", help="the GitOps repo (default: repo.url of "
                                                      "the config); no config file is needed")
    parser.add_argument("--branch", help="its source branch (default: repo.branch, main)")
    parser.add_argument("--reports-url", metavar="URL",
                        help="where the reports are (default: reports.url, or the repo)")
    parser.add_argument("--cache", type=Path, metavar="DIR",
                        help="the Git cache (default: ~/.cache/petkeeper/fleet-<hash>.git)")


def _add_service_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    _command(sub, "daemon", [common],
             "run cycles on a schedule (the systemd service)",
             "Fetch every daemon.fetch_interval; run a cycle on a new commit, approval or "
             "pause, and at least every daemon.check_interval. SIGHUP reloads the config, "
             "SIGTERM stops the current step and exits.",
             ["systemctl start petkeeper", "petkeeper daemon -v    # in the foreground"])
    pause = _command(sub, "pause", [common],
                     "stop applies (and checks, with --checks) until resume",
                     "Stop applies: the daemon and petkeeper run only check. With --checks, "
                     "the daemon skips whole cycles. Survives restarts; shows in status, every "
                     "--json and the host reports. A new pause replaces the one in force.",
                     ["petkeeper pause --reason \"disk swap on web2, back at 5pm\"",
                      "petkeeper pause --checks --reason \"network maintenance\""])
    pause.add_argument("--reason", required=True, help="why; shown by status and in reports")
    pause.add_argument("--checks", action="store_true",
                       help="pause the daemon's checks too (whole cycles)")
    _command(sub, "adopt", [common],
             "move the state to a new repo.url (the Git server moved; root only)",
             "The state directory belongs to the repository it was first used with. When the "
             "Git server moved, set the new repo.url in the config, then run adopt: it fetches "
             "from the new URL and records it; the reports' history, the approvals and the "
             "no-rollback mark stay (a head that does not descend from the last applied commit "
             "still holds applies until petkeeper ack).",
             ["sudo petkeeper adopt", "sudo petkeeper --config /etc/petkeeper/agent.yml adopt"])
    _command(sub, "resume", [common], "undo petkeeper pause",
             "Let applies (and checks) run again after petkeeper pause.",
             ["petkeeper resume"])
    notify = _command(sub, "notify", [common],
                      "show the notification targets; --test sends each a test event",
                      "Without --test: each target of notify.targets (by its key, never its "
                      "URL), the events it gets and how many wait for it. With --test: send "
                      "one test event to every target and say what each answered; exit 1 if "
                      "one did not take it.",
                      ["petkeeper notify", "petkeeper notify --test"])
    notify.add_argument("--test", action="store_true",
                        help="send one test event to every target")
    demo = _command(sub, "demo", [common],
                    "two demo pets, a Git repo of the playbooks, one check",
                    "Start two SSH test hosts (pet1, pet2), serve this project's playbooks from "
                    "a new bare repo, converge both hosts, edit /etc/motd on pet2 by hand, and "
                    "run petkeeper check against them. Needs root; about two minutes.",
                    ["petkeeper demo", "petkeeper demo --keep    # then try plan, approve, run"])
    demo.add_argument("--workdir", type=Path, default=Path("/tmp/petkeeper-demo"),
                      help="where the demo keeps its repo, hosts and state (recreated)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the demo hosts up until Ctrl-C, to try plan, approve and run")


def _add_setup_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    init = _command(sub, "init", [common],
                    "set this pet up: agent.yml, deploy keys, the Git server's host key (root)",
                    "Asks for what the options leave out (on a terminal; without one, the "
                    "defaults, and --url is needed), generates an ed25519 deploy key per "
                    "repository under /etc/petkeeper and prints its public half, records the "
                    "Git server's host key once you confirm the fingerprint it shows (or takes "
                    "it from --known-hosts FILE), and writes /etc/petkeeper/agent.yml (0600, "
                    "commented). Nothing is written before every answer is in; an existing "
                    "agent.yml or known_hosts is kept unless --force.",
                    ["sudo petkeeper init --url ssh://git@git.example.org/ops/pets.git "
                     "--reports-url ssh://git@git.example.org/ops/pet-reports.git",
                     "sudo petkeeper init --url ssh://git@git.example.org/ops/pets.git "
                     "--inventory inventories/prod.yml --limit web1 --known-hosts ./git_host_key"])
    init.add_argument("--url", help="Git URL of the repository of playbooks and inventories")
    init.add_argument("--branch", help="its branch to follow (default main)")
    init.add_argument("--inventory", metavar="PATH",
                      help="inventory inside the repository (default: this host only, like "
                           "ansible-pull)")
    init.add_argument("--limit", metavar="PATTERN",
                      help="hosts to check (default: this host, like ansible-pull)")
    init.add_argument("--playbook", action="append", default=[], metavar="PLAYBOOK",
                      help="a playbook to run, inside the repository (repeatable; default: "
                           "<fqdn>.yml, <hostname>.yml or local.yml, like ansible-pull)")
    init.add_argument("--reports-url", metavar="URL",
                      help="a separate repository for the reports, with a deploy key of its "
                           "own (default: the source repository)")
    init.add_argument("--known-hosts", type=Path, metavar="FILE",
                      help="take the Git server's host key from FILE (verified by you) instead "
                           "of asking you to confirm its fingerprint")
    init.add_argument("--ansible-private-key", metavar="FILE",
                      help="ansible.private_key_file: the key Ansible logs in to targets with")
    init.add_argument("--ansible-known-hosts", metavar="FILE",
                      help="ansible.known_hosts_file: the target hosts' keys (default: ssh's)")
    init.add_argument("--prefix", type=Path, default=Path("/"), metavar="DIR",
                      help="write under DIR instead of / (DIR/etc/petkeeper, state in "
                           "DIR/var/lib/petkeeper): a staged tree, or a test")
    init.add_argument("--force", action="store_true",
                      help="replace an existing agent.yml and known_hosts (keys are kept)")
    doctor = _command(sub, "doctor", [common],
                      "check config, Git, hosts, versions and service; exit 0 ok, 3 warnings, "
                      "1 failures",
                      "One line per check, ok, warn or fail, with the fix: the config, the Git "
                      "server's host key, the branch, signatures, the reports layout and push "
                      "(a git push --dry-run: it proves authentication, not what server-side "
                      "hooks would say), each target host over SSH, ansible-core and "
                      "ansible-runner, the state directory, disk space, the unit, the daemon and "
                      "the last cycle. It changes nothing: the repository is fetched into a "
                      "temporary folder, no known_hosts is written, nothing is pushed.",
                      ["sudo petkeeper doctor", "sudo petkeeper doctor --json | jq '.checks[] | "
                       "select(.status != \"ok\")'"])
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")
    doctor.add_argument("--prefix", type=Path, default=Path("/"), metavar="DIR",
                        help="look for the installed files under DIR instead of / (a staged "
                             "tree); the config is then DIR/etc/petkeeper/agent.yml")


def version_line() -> str:
    """Petkeeper's version and those of what it runs on."""
    def of(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"
    return (f"petkeeper {__version__} (ansible-core {of('ansible-core')}, ansible-runner "
            f"{of('ansible-runner')}, Python {platform.python_version()})")


def _wrap(text: str) -> str:
    return textwrap.fill(text, 78)
