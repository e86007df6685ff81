"""The agent's configuration: one loader, frozen dataclasses, every problem reported at once.

Each problem reads ``FILE: key.path: what is wrong; how to fix it``.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from agent.core.schema import (
    Problems,
    Section,
    closest_key,
    kind_of,
    load_yaml,
    yaml_problem,
)
from agent.core.undo import parse_size
from agent.errors import ConfigError

DEFAULT_PATH = Path("/etc/petkeeper/agent.yml")
URL_SCHEMES = ("file://", "ssh://", "https://", "http://", "git://")
SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")
MAX_RUN_TIMEOUT = 7 * 86400.0
URL_USERINFO = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@\s]+@")
VERIFY_MODES = ("off", "head", "all")
ACCELERATORS = ("auto", "mitogen", "off")  # ansible.accelerator (docs/accelerator.md)
# What notify.targets[].events may name (docs/notifications.md says when each is sent).
EVENTS = ("drift.detected", "drift.resolved", "approval.pending", "apply.succeeded",
          "apply.failed", "host.unreachable", "host.failed", "source.rejected",
          "source.rewound", "agent.stalled")
DEFAULT_EVENTS = tuple(e for e in EVENTS if e != "drift.resolved")
TARGET_FORMATS = ("apprise", "cloudevents")  # a digest for people; one JSON event per POST
URL_SYNTAX = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://\S+$")
COMMAND_LINE = "command line"  # where a value given as an option or argument came from


@dataclass(frozen=True)
class RepoConfig:
    url: str
    branch: str = "main"
    timeout: float = 120.0
    verify: str = "off"  # signatures checked before a commit is materialised: off, head, all
    allowed_signers: str | None = None  # ssh allowed_signers file (gpg.ssh.allowedSignersFile)
    gpg_home: str | None = None  # a dedicated OpenPGP keyring, not root's
    verify_since: str | None = None  # "all": history up to this commit is trusted unsigned
    ssh_key: str | None = None  # for ssh:// remotes: the deploy key (IdentityFile)
    known_hosts: str | None = None  # for ssh:// remotes: UserKnownHostsFile (default: ssh's)


@dataclass(frozen=True)
class ReportsConfig:
    branch: str = "petkeeper/reports"  # the one branch all hosts shared before host_branches
    url: str | None = None  # defaults to the source repo
    host_branches: str = "petkeeper/hosts"  # each host's reports on <host_branches>/<host>
    signing_key: str | None = None  # SSH private key signing this agent's report commits
    allowed_signers: str | None = None  # readers: host name -> key (ssh allowed_signers)
    heartbeat: float = 86400.0
    push: bool = True
    author_name: str = "Petkeeper"
    author_email: str = "petkeeper@localhost"
    ssh_key: str | None = None  # ssh:// reports remote: its own deploy key (default: repo's)
    known_hosts: str | None = None  # ssh:// reports remote: known hosts (default: repo's)


@dataclass(frozen=True)
class AnsibleConfig:
    timeout: float = 1800.0
    forks: int = 5
    private_key_file: str | None = None
    known_hosts_file: str | None = None
    artifacts_keep: int = 5
    accelerator: str = "auto"  # auto, mitogen or off: Mitogen's strategy (docs/accelerator.md)


@dataclass(frozen=True)
class ApprovalsConfig:
    verify: bool = False  # count Git approvals only from commits signed by an allowed key
    allowed_signers: str | None = None  # ssh allowed_signers file (gpg.ssh.allowedSignersFile)
    gpg_home: str | None = None  # a dedicated OpenPGP keyring, not root's
    expires: float = 4 * 3600.0  # default lifetime of `petkeeper approve`


@dataclass(frozen=True)
class DaemonConfig:
    fetch_interval: float = 60.0  # a cheap fetch decides whether a cycle is due
    check_interval: float = 900.0  # a cycle at least this often, even with nothing new
    splay: float = 30.0  # the first cycle waits a random [0, splay): pets don't stampede
    backoff_max: float = 1800.0  # cap of the retry delay after a transient failure
    # The file watch (agent.daemon.watch): None is "on for hosts managed with the local
    # connection", the daemon's own pet; SSH hosts are never watched.
    watch: bool | None = None
    watch_debounce: float = 5.0  # a burst of events ends after this much quiet
    watch_min_interval: float = 60.0  # at most one triggered cycle this often
    watch_max_delay: float = 120.0  # a steady stream of events cannot postpone a check more
    watch_grace: float = 300.0  # a triggered auto correction waits, and is re-checked first
    watch_max: int = 4096  # inotify watches at most; beyond, the scheduled check alone


@dataclass(frozen=True)
class NotifyTarget:
    url: str = field(repr=False)  # holds tokens: never in a repr, a log line or an error
    key: str = ""  # where it is configured, e.g. "notify.targets[2]": what logs name
    format: str = "apprise"
    events: tuple[str, ...] = DEFAULT_EVENTS

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0].lower()

    @property
    def label(self) -> str:
        """How logs and errors name the target: its key and scheme, never its URL."""
        return f"{self.key} ({self.scheme})"


@dataclass(frozen=True)
class NotifyConfig:
    timeout: float = 10.0  # for all the sending after one cycle
    outbox_max: int = 1000  # events kept per target while it is down; the oldest go first
    targets: tuple[NotifyTarget, ...] = ()


@dataclass(frozen=True)
class MetricsConfig:
    textfile: str | None = None  # node-exporter's textfile collector, written after each cycle
    listen: str | None = None  # host:port where the daemon serves /metrics


@dataclass(frozen=True)
class UndoConfig:
    keep: float = 30 * 86400.0  # snapshots older than this are pruned
    max_bytes: int = 256 * 1024**2  # all snapshots' bytes together; the oldest go first
    max_file: int = 16 * 1024**2  # a larger file is not snapshotted: its change is irreversible
    etckeeper: str = "auto"  # auto: commit /etc before and after each apply where installed


@dataclass(frozen=True)
class Config:
    """Everything one cycle needs to know, as read from agent.yml plus command-line overrides."""

    repo: RepoConfig
    path: str = "<defaults>"
    playbooks: tuple[str, ...] = ()
    inventory: str | None = None
    limit: str | None = None
    tags: tuple[str, ...] = ()
    skip_tags: tuple[str, ...] = ()
    extra_vars: tuple[str, ...] = ()
    vault_password_file: str | None = None
    reports: ReportsConfig = field(default_factory=ReportsConfig)
    state_dir: Path = Path("/var/lib/petkeeper")
    ansible: AnsibleConfig = field(default_factory=AnsibleConfig)
    policy: str = "petkeeper/policy.yml"  # inside the repo; absent file: everything waits
    post_apply_tests: str | None = "tests"  # the repo's testinfra tests, run after an apply
    requirements: str = "requirements.yml"  # Galaxy roles and collections, in the repo
    approvals: ApprovalsConfig = field(default_factory=ApprovalsConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    undo: UndoConfig = field(default_factory=UndoConfig)
    given: frozenset[str] = frozenset()  # the keys set on the command line, not in the file

    @property
    def reports_url(self) -> str:
        return self.reports.url or self.repo.url


@dataclass(frozen=True)
class Overrides:
    """What the command line may set over the file, like ansible-pull's options."""

    playbooks: tuple[str, ...] = ()
    limit: str | None = None
    tags: tuple[str, ...] = ()
    skip_tags: tuple[str, ...] = ()
    extra_vars: tuple[str, ...] = ()
    vault_password_file: str | None = None


def load_config(path: Path, overrides: Overrides | None = None) -> Config:
    """Read PATH and apply OVERRIDES; raise ConfigError listing every problem."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not valid YAML: not UTF-8 text ({e.reason} at byte "
                           f"{e.start}); save the file as UTF-8"]) from None
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found; create it (see README: Configuration) "
                           "or pass --config FILE"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}; check its permissions"]) from e
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: {yaml_problem(e)}; fix the syntax"]) from e
    return parse_config(data, str(path), overrides or Overrides())


def parse_config(data: Any, source: str, overrides: Overrides) -> Config:
    """Given the parsed YAML DATA of SOURCE, return a Config or raise ConfigError."""
    p = Problems(source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a mapping of settings at the top level, "
                           f"got {kind_of(data)}; see README: Configuration"])
    top = Section(p, data, "", {"repo", "playbooks", "inventory", "limit", "tags", "skip_tags",
                                "extra_vars", "vault_password_file", "reports", "state_dir",
                                "ansible", "policy", "approvals", "post_apply_tests",
                                "requirements", "daemon", "notify", "metrics", "undo"})
    repo_cfg = _parse_repo(p, top.mapping("repo", required=True))
    reports = _parse_reports(p, top.mapping("reports"), repo_cfg)
    ansible = _parse_ansible(p, top.mapping("ansible"))
    approvals = _parse_approvals(p, top.mapping("approvals"))
    daemon = _parse_daemon(p, top.mapping("daemon"))
    notify = _parse_notify(p, top.mapping("notify"))
    metrics = _parse_metrics(p, top.mapping("metrics"))
    undo = _parse_undo(p, top.mapping("undo"))
    policy = top.string("policy") or "petkeeper/policy.yml"
    _check_repo_path(p, "policy", policy)
    requirements = top.string("requirements") or "requirements.yml"
    _check_repo_path(p, "requirements", requirements)
    tests: str | None = "tests"
    if data.get("post_apply_tests", "tests") is False:
        tests = None
    elif "post_apply_tests" in data:
        tests = top.string("post_apply_tests")
        if tests:
            _check_repo_path(p, "post_apply_tests", tests)
    playbooks = top.strings("playbooks")
    for i, name in enumerate(playbooks):
        _check_repo_path(p, f"playbooks[{i}]", name)
    inventory = top.string("inventory")
    if inventory:
        _check_repo_path(p, "inventory", inventory)
    state_dir = top.string("state_dir") or "/var/lib/petkeeper"
    if not state_dir.startswith("/"):
        p.add("state_dir", f"expected an absolute path, got {state_dir!r}",
              "write it as /var/lib/petkeeper or another absolute path")
    config = Config(
        path=source, repo=repo_cfg, playbooks=tuple(playbooks), inventory=inventory,
        limit=top.string("limit"), tags=tuple(top.strings("tags")),
        skip_tags=tuple(top.strings("skip_tags")),
        extra_vars=tuple(top.strings("extra_vars", split=False)),
        vault_password_file=top.string("vault_password_file"), reports=reports,
        state_dir=Path(state_dir), ansible=ansible, policy=policy, approvals=approvals,
        post_apply_tests=tests, requirements=requirements, daemon=daemon, notify=notify,
        metrics=metrics, undo=undo,
    )
    for i, value in enumerate(config.extra_vars):
        _check_extra_var(p, f"extra_vars[{i}]", value)
    cli = Problems(COMMAND_LINE)  # what the command line got wrong is blamed on it
    for i, name in enumerate(overrides.playbooks):
        _check_repo_path(cli, f"PLAYBOOK #{i + 1}", name)
    for i, value in enumerate(overrides.extra_vars):
        _check_extra_var(cli, f"-e #{i + 1}", value)
    if p.items or cli.items:
        raise ConfigError(p.items + cli.items)
    return apply_overrides(config, overrides)


def _parse_repo(p: Problems, data: dict[str, Any]) -> RepoConfig:
    repo = Section(p, data, "repo.", {"url", "branch", "timeout", "verify", "allowed_signers",
                                      "gpg_home", "verify_since", "ssh_key", "known_hosts"})
    url = repo.string("url", required=True)
    if url and not (url.startswith(URL_SCHEMES) or SCP_LIKE.match(url) or url.startswith("/")):
        p.add("repo.url", f"expected a Git URL (file://, ssh://, https://), got {url!r}",
              "write the full URL, e.g. file:///srv/git/pets.git")
    _check_plain_http(p, "repo.url", url)
    cfg = RepoConfig(url=url or "", branch=repo.string("branch") or "main",
                     timeout=repo.duration("timeout", 120.0),
                     verify=_verify_mode(p, data.get("verify", "off")),
                     allowed_signers=repo.string("allowed_signers"),
                     gpg_home=repo.string("gpg_home"), verify_since=repo.string("verify_since"),
                     ssh_key=repo.string("ssh_key"), known_hosts=repo.string("known_hosts"))
    if cfg.verify != "off" and not (cfg.allowed_signers or cfg.gpg_home):
        p.add("repo.verify", f"is {cfg.verify!r}, but no key may sign the source",
              "set repo.allowed_signers (SSH) or repo.gpg_home (OpenPGP), or verify: off")
    if cfg.verify_since and not re.fullmatch(r"[0-9a-f]{7,64}", cfg.verify_since):
        p.add("repo.verify_since", f"expected a commit id, got {cfg.verify_since!r}",
              "give the id of the last commit made before signing began (it and its "
              "ancestors are trusted as they are)")
    return cfg


def _parse_reports(p: Problems, data: dict[str, Any], repo: RepoConfig) -> ReportsConfig:
    rep = Section(p, data, "reports.",
                  {"branch", "url", "heartbeat", "push", "author_name", "author_email",
                   "ssh_key", "known_hosts", "host_branches", "signing_key",
                   "allowed_signers"})
    reports = ReportsConfig(
        branch=rep.string("branch") or "petkeeper/reports",
        url=_check_plain_http(p, "reports.url", rep.string("url")),
        host_branches=(rep.string("host_branches") or "petkeeper/hosts").strip("/"),
        signing_key=rep.string("signing_key"), allowed_signers=rep.string("allowed_signers"),
        heartbeat=rep.duration("heartbeat", 86400.0),
        push=rep.boolean("push", True),
        author_name=rep.string("author_name") or "Petkeeper",
        author_email=rep.string("author_email") or "petkeeper@localhost",
        ssh_key=rep.string("ssh_key"), known_hosts=rep.string("known_hosts"),
    )
    if reports.branch == repo.branch and (reports.url or repo.url) == repo.url:
        p.add("reports.branch", f"must differ from repo.branch ({repo.branch!r}): Petkeeper "
              "never writes to the source branch", "use e.g. petkeeper/reports")
    _check_host_branches(p, reports, repo)
    return reports


def _check_host_branches(p: Problems, reports: ReportsConfig, repo: RepoConfig) -> None:
    """Git cannot hold a branch a/b and a branch a/b/c at once: the per-host branches must
    not sit on or under another branch Petkeeper uses, nor it under them."""
    mine = reports.host_branches
    if not re.fullmatch(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*", mine) or ".." in mine:
        p.add("reports.host_branches", f"{mine!r} is not a branch name prefix",
              "use letters, digits, '.', '_', '-' and '/', e.g. petkeeper/hosts")
        return
    for key, other in (("reports.branch", reports.branch), ("repo.branch", repo.branch)):
        if other == mine or other.startswith(f"{mine}/") or mine.startswith(f"{other}/"):
            p.add("reports.host_branches", f"{mine!r} clashes with {key} ({other!r}): Git "
                  "cannot hold a branch and branches under it", "use e.g. petkeeper/hosts")


def _parse_ansible(p: Problems, data: dict[str, Any]) -> AnsibleConfig:
    ans = Section(p, data, "ansible.",
                  {"timeout", "forks", "private_key_file", "known_hosts_file", "artifacts_keep",
                   "accelerator"})
    ansible = AnsibleConfig(
        timeout=ans.duration("timeout", 1800.0),
        forks=ans.integer("forks", 5, minimum=1),
        private_key_file=ans.string("private_key_file"),
        known_hosts_file=ans.string("known_hosts_file"),
        artifacts_keep=ans.integer("artifacts_keep", 5, minimum=1),
        accelerator=_accelerator(p, data.get("accelerator", "auto")),
    )
    if ansible.timeout > MAX_RUN_TIMEOUT:  # Python's subprocess waits fail beyond 24.8 days
        p.add("ansible.timeout", f"at most 7d, got {data['timeout']!r}",
              "set how long one playbook run may take, e.g. \"30m\"")
    return ansible


def _accelerator(p: Problems, value: Any) -> str:
    # YAML reads a bare off as False: take it as the word it was meant to be.
    text = "off" if value is False else str(value)
    if text not in ACCELERATORS:
        p.add("ansible.accelerator", f"expected one of {', '.join(ACCELERATORS)}, got "
              f"{value!r}", "use auto (Mitogen when it can), mitogen, or off (plain Ansible)")
        return "off"
    return text


def _parse_approvals(p: Problems, data: dict[str, Any]) -> ApprovalsConfig:
    appr = Section(p, data, "approvals.", {"verify", "allowed_signers", "gpg_home", "expires"})
    approvals = ApprovalsConfig(
        verify=appr.boolean("verify", False), allowed_signers=appr.string("allowed_signers"),
        gpg_home=appr.string("gpg_home"), expires=appr.duration("expires", 4 * 3600.0))
    if approvals.verify and not (approvals.allowed_signers or approvals.gpg_home):
        p.add("approvals.verify", "is on, but no key may sign approvals",
              "set approvals.allowed_signers (SSH) or approvals.gpg_home (OpenPGP)")
    return approvals


WATCH_KEYS = ("watch", "watch_debounce", "watch_min_interval", "watch_max_delay", "watch_grace",
              "watch_max")


def _parse_daemon(p: Problems, data: dict[str, Any]) -> DaemonConfig:
    d = Section(p, data, "daemon.", {"fetch_interval", "check_interval", "splay",
                                     "backoff_max", *WATCH_KEYS})
    daemon = DaemonConfig(fetch_interval=d.duration("fetch_interval", 60.0),
                          check_interval=d.duration("check_interval", 900.0),
                          splay=d.duration("splay", 30.0),
                          backoff_max=d.duration("backoff_max", 1800.0),
                          watch=None if data.get("watch") is None else d.boolean("watch", False),
                          watch_debounce=d.duration("watch_debounce", 5.0),
                          watch_min_interval=d.duration("watch_min_interval", 60.0),
                          watch_max_delay=d.duration("watch_max_delay", 120.0),
                          watch_grace=d.duration("watch_grace", 300.0),
                          watch_max=d.integer("watch_max", 4096, minimum=1))
    for key in ("fetch_interval", "check_interval", "backoff_max", "watch_max_delay"):
        if key in data and getattr(daemon, key) <= 0:
            p.add(f"daemon.{key}", f"must be more than 0, got {data[key]!r}",
                  'set a positive duration, e.g. "1m"')
    if daemon.check_interval < daemon.fetch_interval:
        p.add("daemon.check_interval", f"is shorter than daemon.fetch_interval "
              f"({daemon.fetch_interval:g}s): it is only looked at once per fetch",
              "set check_interval to at least fetch_interval")
    return daemon


def _parse_notify(p: Problems, data: dict[str, Any]) -> NotifyConfig:
    n = Section(p, data, "notify.", {"timeout", "outbox_max", "targets"})
    raw = data.get("targets") or []
    if not isinstance(raw, list):
        p.add("notify.targets", f"expected a list of targets, got {kind_of(raw)}",
              "write each target as a list item with a url")
        raw = []
    return NotifyConfig(timeout=n.duration("timeout", 10.0),
                        outbox_max=n.integer("outbox_max", 1000, minimum=1),
                        targets=tuple(_parse_target(p, item, f"notify.targets[{i}]")
                                      for i, item in enumerate(raw)))


def _parse_target(p: Problems, data: Any, key: str) -> NotifyTarget:
    if not isinstance(data, dict):
        p.add(key, f"expected a mapping with a url, got {kind_of(data)}",
              f"write {key} as url: ... (and events, format)")
        return NotifyTarget(url="", key=key)
    t = Section(p, data, f"{key}.", {"url", "events", "format"})
    url = t.string("url", required=True) or ""
    # The URL is never echoed: it holds the service's token.
    if url and not URL_SYNTAX.match(url):
        p.add(f"{key}.url", "is not a URL (expected scheme://...)",
              "write an Apprise URL such as mailto://... or slack://..., or an https:// "
              "webhook with format: cloudevents")
    fmt = t.string("format") or "apprise"
    if fmt not in TARGET_FORMATS:
        p.add(f"{key}.format", f"expected one of {', '.join(TARGET_FORMATS)}, got {fmt!r}",
              "use apprise (a digest for people) or cloudevents (a JSON event per POST)")
    elif fmt == "cloudevents" and url and not url.lower().startswith(("http://", "https://")):
        p.add(f"{key}.url", "a cloudevents target needs an http:// or https:// URL",
              "give the webhook's https:// URL, or drop format for an Apprise URL")
    events = tuple(t.strings("events")) if "events" in data else DEFAULT_EVENTS
    for i, name in enumerate(events):
        if name not in EVENTS:
            hint = closest_key(name, set(EVENTS))
            p.add(f"{key}.events[{i}]", f"unknown event {name!r}",
                  f"did you mean {hint}?" if hint else f"use some of {', '.join(EVENTS)}")
    return NotifyTarget(url=url, key=key, format=fmt, events=events)


def _parse_metrics(p: Problems, data: dict[str, Any]) -> MetricsConfig:
    m = Section(p, data, "metrics.", {"textfile", "listen"})
    textfile = m.string("textfile")
    if textfile and not (textfile.startswith("/") and textfile.endswith(".prom")):
        p.add("metrics.textfile", f"expected an absolute path ending in .prom, got "
              f"{textfile!r}", "node-exporter's textfile collector reads only *.prom files, "
              "e.g. /var/lib/prometheus/node-exporter/petkeeper.prom")
    listen = m.string("listen")
    if listen is not None:
        try:
            host, port = parse_listen(listen)
            listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        except ValueError as e:
            p.add("metrics.listen", f"{e}, got {listen!r}",
                  'write host:port, e.g. "127.0.0.1:9551" (a port alone binds 127.0.0.1)')
            listen = None
    return MetricsConfig(textfile=textfile, listen=listen)


def _parse_undo(p: Problems, data: dict[str, Any]) -> UndoConfig:
    u = Section(p, data, "undo.", {"keep", "max_bytes", "max_file", "etckeeper"})
    sizes = {}
    for key, default in (("max_bytes", UndoConfig.max_bytes), ("max_file", UndoConfig.max_file)):
        size = parse_size(data.get(key, default))
        if size is None:
            p.add(f"undo.{key}", f"expected a size like 256MiB, got {data[key]!r}",
                  "use a number of bytes with B, KiB, MiB, GiB (or kB, MB, GB)")
        sizes[key] = default if size is None else size
    etckeeper = data.get("etckeeper", "auto")
    if etckeeper is False:  # YAML reads a bare `off` as false
        etckeeper = "off"
    if etckeeper not in ("auto", "off"):
        p.add("undo.etckeeper", f"expected auto or off, got {etckeeper!r}",
              "auto commits /etc before and after each apply where etckeeper is installed")
        etckeeper = "auto"
    return UndoConfig(keep=u.duration("keep", UndoConfig.keep), max_bytes=sizes["max_bytes"],
                      max_file=sizes["max_file"], etckeeper=str(etckeeper))


def parse_listen(value: str) -> tuple[str, int]:
    """Given "host:port", "[::1]:port", ":port" or "port", return (host, port); the host
    defaults to loopback, so exposing /metrics is a deliberate choice."""
    text = str(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected a port from 1 to 65535")
    if host and not re.fullmatch(r"[A-Za-z0-9.:-]+", host):
        raise ValueError("expected an IP address or a host name before the port")
    return host or "127.0.0.1", int(port)


def origin(config: Config, key: str, option: str) -> str:
    """Where KEY's value came from, for an error: the command line's OPTION, or the file."""
    return f"{COMMAND_LINE}: {option}" if key in config.given else f"{config.path}: {key}"


def apply_overrides(config: Config, o: Overrides) -> Config:
    """Return CONFIG with what the command line set in place of the file's values."""
    return replace(
        config,
        playbooks=o.playbooks or config.playbooks,
        given=config.given | {key for key in ("playbooks", "limit", "tags", "skip_tags",
                                               "extra_vars", "vault_password_file")
                              if getattr(o, key) not in ((), None)},
        limit=o.limit if o.limit is not None else config.limit,
        tags=o.tags or config.tags,
        skip_tags=o.skip_tags or config.skip_tags,
        extra_vars=config.extra_vars + o.extra_vars,
        vault_password_file=o.vault_password_file or config.vault_password_file,
    )


def parse_extra_var(value: str) -> dict[str, Any]:
    """Given "k=v k2=v2" or a JSON object, return the variables (ValueError if neither)."""
    text = value.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
        if not isinstance(parsed, dict):
            raise ValueError("expected a JSON object")
        return parsed
    result: dict[str, Any] = {}
    for word in shlex.split(text):
        key, sep, val = word.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError("expected key=value")
        result[key] = val
    return result


def _check_extra_var(p: Problems, key: str, value: str) -> None:
    if value.startswith("@"):
        if len(value) == 1:
            p.add(key, "'@' names no file", "write @path/to/vars.yml")
        return
    try:
        parse_extra_var(value)
    except ValueError:
        # The value itself is never echoed: extra vars often carry secrets.
        p.add(key, "is neither key=value pairs nor a JSON object",
              "use key=value pairs, a JSON object, or @file")


def _verify_mode(p: Problems, value: Any) -> str:
    if value is False:  # YAML reads a bare `off` as false
        return "off"
    if value not in VERIFY_MODES:
        p.add("repo.verify", f"expected one of {', '.join(VERIFY_MODES)}, got {value!r}",
              "use head (the fetched commit must be signed) or all (every new commit)")
        return "off"
    return str(value)


def _check_plain_http(p: Problems, key: str, url: str | None) -> str | None:
    """Credentials in an http:// URL would cross the network in clear text."""
    if url and url.lower().startswith("http://") and URL_USERINFO.match(url):
        p.add(key, "has credentials in a plain http:// URL: they would be sent unencrypted",
              "use https:// (with a credential helper) or ssh://, never http:// with a password")
    return url


def _check_repo_path(p: Problems, key: str, value: str) -> None:
    parts = PurePosixPath(value).parts
    if value.startswith("/") or ".." in parts:
        p.add(key, f"{value!r} leaves the repository",
              "give a path relative to the repository root, without '..'")
