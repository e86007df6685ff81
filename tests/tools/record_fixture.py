"""Record the drift parser's golden cases from real runs (tests/unit/fixtures/drift/).

Each case folder holds ``scenario.yml`` (what to run), ``expected.json`` (the reviewed report)
and one folder per ansible-core version (``2.19/``, ``2.21/``...) with what a real
``--check --diff`` run through Petkeeper's own runner (agent.adapters.runner, with its
petkeeper_facts callback) gave: ``events.json`` and ``facts.json``. The hosts are real SSH test
hosts on 127.0.97.x, started fresh for each case. Usage (as root, under the heavy lock)::

    .venv/bin/python tests/tools/record_fixture.py                  # every case, .venv's Ansible
    .venv/bin/python tests/tools/record_fixture.py loop_results     # some cases
    .venv/bin/python tests/tools/record_fixture.py --ansible-core 2.22 --python 3.13
    .venv/bin/python tests/tools/record_fixture.py --every-version new_case --bless

``--ansible-core X.Y`` records with that version, in a virtualenv of its own under build/
(created once, with Petkeeper installed from this tree and ansible-core X.Y forced in, even
beyond pyproject.toml's range): adding a version is this one command, then the unit tests.
``--every-version`` records with each version recorded.json lists. Every recording is parsed at
once and compared with the case's expected.json; ``--bless`` writes expected.json from it
instead (for a new case: read it first).

``--accelerator mitogen`` replays the cases' checks with Mitogen's strategy (the setup stays
plain) and only compares: nothing is written. Every case must give its expected.json, the
report the plain strategy recorded: the accelerator's parity on the golden cases (issue #20).

scenario.yml keys: ``about``; ``hosts`` (test hosts to start: web1, web2, db1); ``ghost``
(an unreachable host in the inventory); ``absent`` (inventory hosts no play targets);
``files`` (the project: playbooks, roles); ``setup`` (a playbook of it applied first, not
recorded); ``check`` (the playbooks checked, in order; default site.yml); ``timeout`` (seconds
per playbook); ``facts: false`` (keep no callback facts: a run without them); ``known_hosts``
(host: ``rekey`` to restart it with a new host key, ``omit`` to leave its key out);
``edit`` (a named change to the recorded events, said in ``about``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.adapters.accelerator import Accelerator, choose_accelerator  # noqa: E402
from agent.adapters.runner import PlaybookRun, RunResult, run_playbook  # noqa: E402
from agent.core.drift import build_host_reports  # noqa: E402
from agent.testhosts import TestHostPool  # noqa: E402

FIXTURES = ROOT / "tests" / "unit" / "fixtures" / "drift"
RECORDED = FIXTURES / "recorded.json"  # ansible-core version -> what recorded it
VENVS = ROOT / "build" / "record-venvs"
# What the fixtures show in place of this run's own paths (tests/unit/test_drift.py's TREE).
TREE = "/var/lib/petkeeper/trees/8f14e45fceea167a5a36dedd4bea2543b2c1e7c8"
KNOWN_HOSTS = "/etc/petkeeper/known_hosts"
WORKDIR = "/var/lib/petkeeper/record"
NEW_KEY = "SHA256:tQ8HWHLRY5HL8GF6atzMNBVN3f+iOAhxqfRB9sEUyuQ"  # a rekeyed host's, every time
ADDRESSES = {"web1": "127.0.97.11", "web2": "127.0.97.12", "db1": "127.0.97.13"}
GHOST = "127.0.97.99"  # nothing listens there
PORT = 2222


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", help="case folders to record (default: every one "
                        "with a scenario.yml)")
    parser.add_argument("--ansible-core", help="record with this ansible-core (X.Y), in a "
                        "virtualenv of its own under build/")
    parser.add_argument("--python", default=sys.executable, help="the interpreter for that "
                        "virtualenv: a path, or X.Y found on PATH or under $(pyenv root)")
    parser.add_argument("--every-version", action="store_true", help="record with each "
                        "ansible-core in recorded.json (each in its virtualenv under build/)")
    parser.add_argument("--bless", action="store_true", help="write expected.json from this "
                        "recording (with --every-version: from the first version's)")
    parser.add_argument("--accelerator", choices=("mitogen",), help="replay the checks with "
                        "Mitogen's strategy and compare with expected.json; write nothing")
    args = parser.parse_args(argv)
    if args.accelerator:
        cases = args.cases or sorted(p.parent.name for p in FIXTURES.glob("*/scenario.yml"))
        differ = [case for case in cases if not replay_accelerated(case)]
        print(f"{len(cases) - len(differ)} of {len(cases)} cases as expected with Mitogen"
              + (f"; differ: {', '.join(differ)}" if differ else ""))
        return 1 if differ else 0
    if args.every_version:
        known = json.loads(RECORDED.read_text())
        codes = [record_with(minor, find_python(".".join(v["python"].split(".")[:2])),
                             args.cases, args.bless and i == 0)
                 for i, (minor, v) in enumerate(known.items())]
        return max(codes)
    if args.ansible_core:
        return record_with(args.ansible_core, find_python(args.python), args.cases, args.bless)
    cases = args.cases or sorted(p.parent.name for p in FIXTURES.glob("*/scenario.yml"))
    failed = [case for case in cases if not record_safely(case, args.bless)]
    note_versions()
    if failed:
        print(f"not recorded as expected: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def record_safely(case: str, bless: bool) -> bool:
    """record_case, where a case that cannot be recorded says why and the others go on."""
    try:
        return record_case(case, bless)
    except (Exception, SystemExit) as e:
        print(f"{case}: not recorded: {e}", file=sys.stderr)
        return False


def record_with(core: str, python: Path, cases: list[str], bless: bool) -> int:
    """Run this script with ansible-core CORE, in its virtualenv; return its exit code."""
    venv_python = ensure_venv(core, python)
    rest = [*cases, *(["--bless"] if bless else [])]
    return subprocess.run([str(venv_python), __file__, *rest], check=False).returncode


def record_case(case: str, bless: bool) -> bool:
    """Record CASE with this interpreter's ansible-core; return whether it gives the report in
    expected.json (or write that, with BLESS)."""
    scenario = yaml.safe_load((FIXTURES / case / "scenario.yml").read_text())
    minor = ".".join(version("ansible-core").split(".")[:2])
    with tempfile.TemporaryDirectory(prefix="pk-record-") as tmp:
        events, facts = run_scenario(scenario, Path(tmp).resolve())
    events = EDITS[scenario["edit"]](events) if scenario.get("edit") else events
    facts = facts if scenario.get("facts", True) else []
    folder = FIXTURES / case / minor
    folder.mkdir(exist_ok=True)
    write_json(folder / "events.json", events)
    (folder / "facts.json").unlink(missing_ok=True)
    if facts:
        write_json(folder / "facts.json", facts)
    reports = report_dicts(events, scenario, facts)
    path = FIXTURES / case / "expected.json"
    if bless:
        write_json(path, {"about": scenario["about"], "hosts": reports})
    same = bless or matches(json.loads(path.read_text())["hosts"], reports, minor)
    summary = ", ".join(f"{name} {r['status']} ({len(r['changes'])} changes)"
                        for name, r in reports.items())
    print(f"{case} ({minor}): {summary}{'' if same else '  DIFFERS from expected.json'}")
    return same


def report_dicts(events: list[Any], scenario: dict[str, Any], facts: list[Any]
                 ) -> dict[str, dict[str, Any]]:
    """The reports of EVENTS as expected.json holds them."""
    return {name: {"status": r.status, "message": r.message, "changes": r.as_dict()["changes"],
                   "fingerprint": r.fingerprint, **({"partial": True} if r.partial else {})}
            for name, r in build_host_reports(events, expected_hosts(scenario), TREE,
                                              facts).items()}


def replay_accelerated(case: str) -> bool:
    """Check CASE with Mitogen's strategy; return whether it gives expected.json's report."""
    scenario = yaml.safe_load((FIXTURES / case / "scenario.yml").read_text())
    minor = ".".join(version("ansible-core").split(".")[:2])
    accelerator = choose_accelerator("mitogen")
    if not accelerator.choice.accelerated:
        raise SystemExit(f"--accelerator mitogen: {accelerator.choice.reason}")
    try:
        with tempfile.TemporaryDirectory(prefix="pk-replay-") as tmp:
            events, facts = run_scenario(scenario, Path(tmp).resolve(), accelerator)
    except (Exception, SystemExit) as e:
        print(f"{case}: not replayed: {e}", file=sys.stderr)
        return False
    events = EDITS[scenario["edit"]](events) if scenario.get("edit") else events
    facts = facts if scenario.get("facts", True) else []
    reports = report_dicts(events, scenario, facts)
    expected = json.loads((FIXTURES / case / "expected.json").read_text())["hosts"]
    expected = {name: within_limits(r, reports.get(name)) for name, r in expected.items()}
    same = matches(expected, reports, minor) and accelerator.choice.accelerated
    summary = ", ".join(f"{name} {r['status']} ({len(r['changes'])} changes)"
                        for name, r in reports.items())
    print(f"{case} ({minor}, {accelerator.choice.strategy}): {summary}"
          f"{'' if same else '  DIFFERS from expected.json'}")
    if not same:
        for name in sorted(set(expected) | set(reports)):
            print_difference(name, expected.get(name) or {}, reports.get(name) or {})
    return same


def print_difference(name: str, expected: dict[str, Any], got: dict[str, Any]) -> None:
    """What differs in host NAME's report: each top-level key, and each change by its index."""
    for key in sorted(set(expected) | set(got)):
        want, have = expected.get(key), got.get(key)
        if want == have:
            continue
        if key == "changes" and isinstance(want, list) and isinstance(have, list):
            for i in range(max(len(want), len(have))):
                w = want[i] if i < len(want) else None
                h = have[i] if i < len(have) else None
                if w != h:
                    keys = sorted({*(w or {}), *(h or {})})
                    diff = {k: ((w or {}).get(k), (h or {}).get(k)) for k in keys
                            if (w or {}).get(k) != (h or {}).get(k)}
                    print(f"  {name}: changes[{i}] expected/got: {json.dumps(diff)[:1500]}")
            continue
        print(f"  {name}: {key}: expected {json.dumps(want)[:700]}; got {json.dumps(have)[:700]}")


def within_limits(expected: dict[str, Any], got: dict[str, Any] | None) -> dict[str, Any]:
    """EXPECTED, with the message Mitogen's strategy gives for a refused host key (it does not
    say which key: docs/accelerator.md#parity, a documented limit) when that is all it got."""
    if got is None or not str(expected.get("message", "")).startswith("host key "):
        return expected
    if "Mitogen's strategy" not in str(got.get("message")):
        return expected
    print(f"  documented limit: {got['message']!r} for {expected['message'][:40]!r}...")
    return {k: v for k, v in expected.items() if k != "message_by_version"} | {
        "message": got["message"]}


def matches(expected: dict[str, Any], reports: dict[str, Any], minor: str) -> bool:
    """Whether REPORTS are the EXPECTED ones for version MINOR (whose message may be given in
    a host's message_by_version, and a check-blind failure's error in its error_by_version:
    Ansible's own words change between versions)."""
    def wanted(report: dict[str, Any]) -> dict[str, Any]:
        by_version = report.get("message_by_version", {})
        changes = [{**{k: v for k, v in c.items() if k != "error_by_version"},
                    **({"error": c["error_by_version"].get(minor, c["error"])}
                       if "error_by_version" in c else {})} for c in report["changes"]]
        return {**{k: v for k, v in report.items() if k != "message_by_version"},
                "message": by_version.get(minor, report["message"]), "changes": changes}
    return {name: wanted(r) for name, r in expected.items()} == reports


def run_scenario(scenario: dict[str, Any], work: Path, accelerator: Accelerator | None = None
                 ) -> tuple[list[Any], list[Any]]:
    """Start the scenario's hosts, apply its setup, run its checks (with ACCELERATOR's
    strategy, if given); return the events and facts with this run's own paths, addresses
    and keys replaced by the fixtures' ones."""
    tree = work / "tree"
    for name, content in (scenario.get("files") or {}).items():
        target = (tree / name).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    inventory = write_inventory(scenario, tree)
    replace: dict[str, str] = {str(tree): TREE}
    with TestHostPool(work / "hosts") as pool:
        for name in scenario.get("hosts") or ():
            pool.start(name, ADDRESSES[name], PORT)

        def run(playbook: str, check: bool, ident: str, known_hosts: Path) -> RunResult:
            planned = PlaybookRun(
                tree=tree, playbook=playbook, inventory=inventory, limit="all", check=check,
                ident=ident, timeout=float(scenario.get("timeout", 120)),
                private_key_file=str(pool.client_key), known_hosts_file=str(known_hosts))
            if accelerator is not None and check:
                return accelerator.run(planned, work / "runner", keep_artifacts=1)
            return run_playbook(planned, work / "runner", keep_artifacts=1)

        if scenario.get("setup"):
            result = run(scenario["setup"], False, "setup", pool.known_hosts)
            if result.status != "successful":
                raise SystemExit(f"setup {scenario['setup']} failed: {result.error}")
        known_hosts = work / "known_hosts"
        replace.update(arrange_known_hosts(pool, scenario.get("known_hosts") or {},
                                           known_hosts))
        events, facts = [], []
        for i, playbook in enumerate(scenario.get("check") or ["site.yml"]):
            result = run(playbook, True, f"record-{i}", known_hosts)
            events.extend(result.events)
            facts.extend(result.facts)
    replace.update({str(known_hosts): KNOWN_HOSTS, str(work): WORKDIR})
    text = json.dumps([events, facts])
    for old, new in replace.items():
        text = text.replace(old, new)
    events, facts = json.loads(text)
    return events, facts


def write_inventory(scenario: dict[str, Any], tree: Path) -> Path:
    pets: dict[str, Any] = {name: {"ansible_host": ADDRESSES[name], "ansible_port": PORT}
                            for name in scenario.get("hosts") or ()}
    if scenario.get("ghost"):
        pets["ghost"] = {"ansible_host": GHOST, "ansible_port": PORT}
    spare = {name: {"ansible_host": GHOST, "ansible_port": PORT}
             for name in scenario.get("absent") or ()}
    data = {"all": {"vars": {"ansible_user": "root",
                             "ansible_python_interpreter": "/usr/bin/python3"},
                    "children": {"pets": {"hosts": pets}, "spare": {"hosts": spare}}}}
    path = tree / "inventory.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def arrange_known_hosts(pool: TestHostPool, wanted: dict[str, str], path: Path
                        ) -> dict[str, str]:
    """Write PATH, the known_hosts the check uses: every host's key, except that a host marked
    ``omit`` is left out and one marked ``rekey`` restarts with a new key (PATH keeps the old).
    Return what to replace in the recording: the new key's fingerprint by a fixed one."""
    lines = {name: host.known_hosts_line for name, host in pool.hosts.items()}
    replace = {}
    for name, how in wanted.items():
        if how == "omit":
            del lines[name]
        elif how == "rekey":
            replace[pool.rekey(name).fingerprint] = NEW_KEY
        else:
            raise SystemExit(f"known_hosts: {name}: {how!r}: expected rekey or omit")
    path.write_text("".join(f"{line}\n" for line in lines.values()))
    return replace


def expected_hosts(scenario: dict[str, Any]) -> list[str]:
    return [*(scenario.get("hosts") or ()), *(["ghost"] if scenario.get("ghost") else []),
            *(scenario.get("absent") or ())]


def mark_conditional(events: list[Any]) -> list[Any]:
    """The first task start says is_conditional: true, as ansible-core before 2.19 sent it for
    a task with `when:` (2.19 to 2.21 send false for every task)."""
    for event in events:
        if event["event"] == "playbook_on_task_start":
            event["event_data"]["is_conditional"] = True
            break
    return events


EDITS: dict[str, Callable[[list[Any]], list[Any]]] = {"mark_conditional": mark_conditional}


def note_versions() -> None:
    """Record in recorded.json which ansible-core, ansible-runner and Python made this
    version's recordings."""
    known = json.loads(RECORDED.read_text()) if RECORDED.exists() else {}
    core = version("ansible-core")
    known[".".join(core.split(".")[:2])] = {
        "ansible-core": core, "ansible-runner": version("ansible-runner"),
        "python": platform.python_version()}
    write_json(RECORDED, dict(sorted(known.items(), key=lambda kv: minor_key(kv[0]))))


def minor_key(minor: str) -> tuple[int, ...]:
    return tuple(int(part) for part in minor.split("."))


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def find_python(wanted: str) -> Path:
    """WANTED as a path, or an X.Y version found under $(pyenv root)/versions or on PATH (one
    that runs: pyenv's shims are on PATH for versions it does not have too)."""
    if os.sep in wanted:
        return Path(wanted)
    candidates = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        pyenv = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30,
                               check=True).stdout.strip()
        candidates += sorted(Path(pyenv, "versions").glob(f"{wanted}.*/bin/python{wanted}"))
    on_path = shutil.which(f"python{wanted}")
    candidates += [Path(on_path)] if on_path else []
    for candidate in candidates:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([str(candidate), "--version"], capture_output=True, check=True,
                           timeout=30)
            return candidate
    raise SystemExit(f"--python {wanted}: no python{wanted} under $(pyenv root) or on PATH; "
                     "give the interpreter's path")


def ensure_venv(core: str, python: Path) -> Path:
    """build/record-venvs/ansible-core-CORE with Petkeeper from this tree and ansible-core
    CORE.* (created once); return its interpreter."""
    venv = VENVS / f"ansible-core-{core}"
    bin_python = venv / "bin" / "python"
    if not bin_python.exists():
        subprocess.run([str(python), "-m", "venv", str(venv)], check=True, timeout=300)
        pip = [str(bin_python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "-e", str(ROOT)], check=True, timeout=1800)
        # Forced in after Petkeeper: a version beyond pyproject.toml's range can be recorded.
        subprocess.run([*pip, f"ansible-core=={core}.*"], check=True, timeout=1800)
    return bin_python


if __name__ == "__main__":
    sys.exit(main())
