"""Petkeeper: keep long-lived pet servers true to Git with Ansible, without surprises."""

__version__ = "0.1.0"
