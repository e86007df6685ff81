"""One third-party library or system resource each: Git (GitPython), Ansible
(ansible-runner, ansible-inventory, ansible-galaxy), the vault, the state directory, APScheduler.

Adapters import core, config and errors, never a cycle step (tests/unit/test_layout.py)."""
