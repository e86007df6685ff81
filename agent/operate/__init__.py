"""What people and tools read: terminal output (and, as they come, the fleet view,
notifications, metrics and CI formats)."""
