"""Operator commands: status, switchover, history, maintenance, garbage collection."""
