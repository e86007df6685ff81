"""The long-running service: its cadences and signals (service.py), the child
process per cycle (isolate.py) and systemd's sd_notify protocol (sd_notify.py)."""
