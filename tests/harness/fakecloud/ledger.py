"""What the fake records: the event log, request accounting and the project's rate limit."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Event = dict[str, Any]
"""`{"seq": n, "time": unix, "kind": "volume.attached", ...ids}`."""
EventCallback = Callable[[Event], None]


class EventLog:
    """State changes in order, for in-process callbacks and for readers of the control API."""

    def __init__(self, max_events: int = 100_000) -> None:
        self._condition = threading.Condition()
        self._events: collections.deque[Event] = collections.deque(maxlen=max_events)
        self._next_seq = 1
        self._callbacks: list[EventCallback] = []

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call `callback` with every later event; return a function that unsubscribes it."""
        with self._condition:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._condition:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def record(self, kind: str, **ids: Any) -> Event:
        """Append an event and run the callbacks in the calling thread, outside the log's lock."""
        with self._condition:
            event: Event = {"seq": self._next_seq, "time": time.time(), "kind": kind, **ids}
            self._next_seq += 1
            self._events.append(event)
            callbacks = list(self._callbacks)
            self._condition.notify_all()
        for callback in callbacks:
            callback(event)
        return event

    def since(self, seq: int, wait: float = 0.0) -> tuple[list[Event], int]:
        """Return the events after `seq` and the seq to pass next time, waiting up to `wait` s for one."""
        deadline = time.monotonic() + wait
        with self._condition:
            while True:
                events = [event for event in self._events if event["seq"] > seq]
                remaining = deadline - time.monotonic()
                if events or remaining <= 0:
                    return events, self._next_seq - 1
                self._condition.wait(remaining)


@dataclass(frozen=True)
class RequestRecord:
    seq: int
    method: str
    route: str
    """The path template, such as `/volumes/{id}/actions/attach`."""
    status: int


class RequestLedger:
    """Every API request (not the control API) with its route and status, for steady-state checks."""

    def __init__(self, max_records: int = 200_000) -> None:
        self._lock = threading.Lock()
        self._records: collections.deque[RequestRecord] = collections.deque(maxlen=max_records)
        self._next_seq = 1

    def record(self, method: str, route: str, status: int) -> None:
        with self._lock:
            self._records.append(RequestRecord(self._next_seq, method, route, status))
            self._next_seq += 1

    def mark(self) -> int:
        """Return a mark; `counts(mark)` then counts only the requests made after this call."""
        with self._lock:
            return self._next_seq - 1

    def records(self, since: int = 0) -> list[RequestRecord]:
        with self._lock:
            return [record for record in self._records if record.seq > since]

    def counts(self, since: int = 0) -> dict[str, int]:
        """Return the number of requests per `METHOD route` made after the mark `since`."""
        totals: collections.Counter[str] = collections.Counter()
        for record in self.records(since):
            totals[f"{record.method} {record.route}"] += 1
        return dict(totals)


@dataclass(frozen=True)
class RateLimitState:
    allowed: bool
    limit: int
    remaining: int
    reset: int
    """UNIX time at which the budget is full again (or, while blocked, at which requests pass)."""


class RateLimit:
    """The per-project request budget: `limit` requests an hour, refilled evenly (one a second at 3600)."""

    def __init__(self, limit: int = 3600, *, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.configure(limit)

    def configure(self, limit: int, remaining: int | None = None) -> None:
        if limit < 1:
            raise ValueError(f"rate limit must be at least 1 request an hour, got {limit}")
        with self._lock:
            self._limit = limit
            self._tokens = float(limit if remaining is None else max(0, min(limit, remaining)))
            self._updated = self._clock()
            self._blocked_until = 0.0

    def block(self, seconds: float) -> None:
        """Reject every request with 429 for `seconds`, with RateLimit-Reset at the block's end.

        The budget itself is left as it was; `configure(limit, remaining=0)` empties it instead,
        after which requests pass at the refill rate only.
        """
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + seconds)

    def consume(self) -> RateLimitState:
        """Take one request from the budget and return the headers' values and whether it passes."""
        with self._lock:
            now = self._clock()
            rate = self._limit / 3600.0
            self._tokens = min(float(self._limit), self._tokens + (now - self._updated) * rate)
            self._updated = now
            if now < self._blocked_until:
                return RateLimitState(False, self._limit, 0, _ceil(self._blocked_until))
            allowed = self._tokens >= 1.0
            if allowed:
                self._tokens -= 1.0
            full_at = now + (self._limit - self._tokens) / rate
            return RateLimitState(allowed, self._limit, int(self._tokens), _ceil(full_at))


def _ceil(value: float) -> int:
    return int(value) if value == int(value) else int(value) + 1
