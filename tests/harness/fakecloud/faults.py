"""Error and delay injection for the fake Hetzner Cloud API.

A fault matches requests by operation name (`volume.attach`, `volume.*`, or `*` for every API
request), skips the first `skip` matches, then applies to the next `count` matches (`None`: to
every match until the fault is removed). The first fault that matches a request is used.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from harness.fakecloud.catalog import DEFAULT_CODE_FOR_STATUS, ERROR_STATUS

ActionOutcome = Literal["error", "never"]


@dataclass
class Fault:
    """One injected misbehaviour. Effects combine: a hang, then an error or a changed action."""

    operation: str = "*"
    count: int | None = 1
    skip: int = 0
    status: int | None = None
    """HTTP status of an injected error response."""
    code: str | None = None
    """Error code of an injected error response; its status comes from the real API's table."""
    message: str | None = None
    hang: float = 0.0
    """Seconds the server waits before it handles the request (or, with `hang_after`, before it
    sends the response of a request it already carried out)."""
    hang_after: bool = False
    action: ActionOutcome | None = None
    """`error`: the action is accepted, runs, then ends in error. `never`: it stays running."""
    action_error_code: str = "action_failed"
    action_error_message: str = "the action failed"
    rate_limit_reset_in: float | None = None
    """Respond 429 to this and every later request until this many seconds have passed."""
    then: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    """Called (in process only) once the response is built, before it is sent: a change made
    here is invisible in that response but in place when the client makes its next request."""
    fault_id: int = 0
    hits: int = 0
    seen: int = 0

    def __post_init__(self) -> None:
        if self.count is not None and self.count < 1:
            raise ValueError(f"fault count must be at least 1 or None, got {self.count}")
        if self.skip < 0 or self.hang < 0:
            raise ValueError("fault skip and hang must not be negative")
        if self.code is not None and self.code not in ERROR_STATUS and self.status is None:
            raise ValueError(f"unknown error code {self.code!r}; pass its status as well")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError(f"fault status must be an HTTP error status, got {self.status}")
        if self.action not in (None, "error", "never"):
            raise ValueError(f"fault action must be 'error' or 'never', got {self.action!r}")
        effects = [self.is_error, self.action is not None, self.rate_limit_reset_in is not None]
        if sum(effects) > 1:
            raise ValueError("a fault injects one of: an error response, an action outcome, a rate limit")
        if not any(effects) and self.hang == 0 and self.then is None:
            raise ValueError("a fault needs an effect: status/code, action, rate_limit_reset_in, hang or then")

    @property
    def is_error(self) -> bool:
        return self.status is not None or self.code is not None

    def error_status(self) -> int:
        if self.status is not None:
            return self.status
        assert self.code is not None
        return ERROR_STATUS[self.code]

    def error_code(self) -> str | None:
        """Return the JSON error code, or None for a non-JSON gateway error page."""
        if self.code is not None:
            return self.code
        return DEFAULT_CODE_FOR_STATUS.get(self.error_status())

    def matches(self, operation: str) -> bool:
        if self.operation in ("*", operation):
            return True
        return self.operation.endswith(".*") and operation.startswith(self.operation[:-1])

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("then")
        return data


FAULT_FIELDS = frozenset(field.name for field in dataclasses.fields(Fault)) - {"then", "fault_id", "hits", "seen"}
"""Keys a fault accepts over the control API."""


class FaultBook:
    """The active faults, matched in the order they were added. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._next_id = 1

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            fault.fault_id = self._next_id
            self._next_id += 1
            self._faults.append(fault)
        return fault

    def remove(self, fault_id: int) -> bool:
        with self._lock:
            before = len(self._faults)
            self._faults = [fault for fault in self._faults if fault.fault_id != fault_id]
            return len(self._faults) < before

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def take(self, operation: str) -> Fault | None:
        """Return the fault that applies to this request and count the hit, or None."""
        with self._lock:
            for fault in self._faults:
                if not fault.matches(operation):
                    continue
                fault.seen += 1
                if fault.seen <= fault.skip:
                    continue
                fault.hits += 1
                if fault.count is not None and fault.hits >= fault.count:
                    self._faults.remove(fault)
                return fault
        return None
