"""The one family of errors Petkeeper raises.

Two kinds matter to whoever handles them: a *stalled* error needs a person (bad config, missing
branch, unknown host key): retrying will not help. A *transient* one (network, busy remote) may
pass on its own: retry later with backoff.
"""

from __future__ import annotations


class AgentError(Exception):
    """A known failure, printed as one line that says what, where and how to fix it."""

    transient = False


class StalledError(AgentError):
    """A person must fix something before the next cycle can succeed."""


class TransientError(AgentError):
    """A failure that may pass on its own: retry later."""

    transient = True


class ConfigError(StalledError):
    """The configuration is invalid; carries every problem found, not only the first."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class LockedError(AgentError):
    """Another cycle holds the lock."""


class RepoError(StalledError):
    """The repository's content is unusable: missing branch, playbook, path outside the repo."""


class HostKeyError(StalledError):
    """An SSH host key is unknown or changed: a person must verify it; never trusted first."""


class FetchError(TransientError):
    """The remote could not be reached or did not answer in time."""
