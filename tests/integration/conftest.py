"""Fixtures shared by the integration tests (the session's hosts live in tests/conftest.py)."""

from tests.signing import gpg_keys, ssh_keys  # noqa: F401 (fixtures)
