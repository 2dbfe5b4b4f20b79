"""Deadlines for bounded waits, on the monotonic clock so that wall-clock jumps cannot stretch them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mailcow_ha.errors import DeadlineExceeded

Clock = Callable[[], float]
"""A monotonic clock in seconds, `time.monotonic` outside tests."""
Sleep = Callable[[float], None]


@dataclass(frozen=True)
class Deadline:
    """A point on a monotonic clock by which a named step must finish."""

    step: str
    expires_at: float
    clock: Clock = field(default=time.monotonic, compare=False)

    @classmethod
    def after(cls, step: str, seconds: float, clock: Clock = time.monotonic) -> Deadline:
        """Return a deadline `seconds` from now."""
        return cls(step, clock() + seconds, clock)

    def remaining(self) -> float:
        """Return the seconds left, never below zero."""
        return max(0.0, self.expires_at - self.clock())

    @property
    def expired(self) -> bool:
        return self.clock() >= self.expires_at

    def check(self, what: str = "") -> None:
        """Raise DeadlineExceeded naming the step (and `what` it waited for) once the deadline passed."""
        if self.expired:
            detail = f" waiting for {what}" if what else ""
            raise DeadlineExceeded(f"{self.step} timed out{detail}")

    def sooner(self, step: str, seconds: float) -> Deadline:
        """Return a deadline `seconds` from now, or this one if it expires first."""
        candidate = self.clock() + seconds
        return Deadline(step, min(candidate, self.expires_at), self.clock)
