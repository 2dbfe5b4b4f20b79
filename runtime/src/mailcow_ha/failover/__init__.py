"""Promote, demote, their serialisation, and the circuit breaker."""
