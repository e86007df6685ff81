"""Pure functions over plain data: drift, policy, approvals, ledger, masks, schema.

Nothing here imports an adapter, a cycle step or a third-party library with side effects;
only ``agent.config`` and ``agent.errors`` from outside (tests/unit/test_layout.py)."""
