"""The reconcile cycle: pull (source, trust), detect, decide, apply, record, and the
Cycle that runs them as an ordered list of steps (steps.py)."""
