"""The alert rate limit: one alert per event and subject per interval, shared through a state file.

Every process on a node (the agent, the GC timer, operator commands) decides under one flock on
the same file. So a restarted agent does not send again what was just sent, and a flood of one
event becomes one message plus a digest with the count. Times are Unix times because they must
outlive the process; the decisions are pure functions of an entry and the current time.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mailcow_ha import state
from mailcow_ha.alert_events import AlertEvent

log = logging.getLogger(__name__)

ALERTS_STATE_FILE = "alerts.json"
"""Rate-limit entries and delivery counters, shared by every process on the node."""
SUBJECT_DETAIL = "subject"
"""Detail key that separates independent occurrences of one event for the rate limit, such as
the resource that drifted. Alerts of one event with different subjects are limited separately."""

_STATE_VERSION = 1
_LOCK_TIMEOUT = 2.0
_ENTRY_RETENTION = 7 * 86400.0
_LATEST_TIME = 253402300799.0
"""9999-12-31T23:59:59Z, the last second datetime can represent."""


class RateAction(enum.StrEnum):
    """Action of the rate limit on one alert."""

    SEND = "send"
    SUPPRESS = "suppress"


@dataclass(frozen=True)
class RateEntry:
    """Rate-limit record of one (event, subject), in Unix time because it outlives the process."""

    event: str
    last_sent: float
    suppressed: int = 0
    first_suppressed: float | None = None
    last_reason: str = ""


@dataclass(frozen=True)
class RateDecision:
    """Outcome of the rate limit for one alert. Its message reports `suppressed_before` earlier repeats."""

    action: RateAction
    entry: RateEntry
    suppressed_before: int
    suppressed_since: float | None
    reason: str


def rate_key(event: AlertEvent | str, details: Mapping[str, str] | None) -> str:
    """Return the rate-limit key of an alert: its event, plus its subject when it has one."""
    subject = (details or {}).get(SUBJECT_DETAIL, "")
    return f"{event}|{subject}" if subject else str(event)


def decide_rate(entry: RateEntry | None, event: str, reason: str, now: float, interval: float) -> RateDecision:
    """Decide whether an alert is sent or suppressed as a repeat.

    A clock that went backwards (now before the last send) counts as an elapsed interval, so a
    wall-clock step can never silence an event for longer than one interval.
    """
    if entry is None:
        sent = RateEntry(event=event, last_sent=now, last_reason=reason)
        return RateDecision(RateAction.SEND, sent, 0, None, "first alert of this kind")

    elapsed = now - entry.last_sent
    if 0 <= elapsed < interval:
        suppressed = replace(
            entry,
            suppressed=entry.suppressed + 1,
            first_suppressed=entry.first_suppressed if entry.first_suppressed is not None else now,
            last_reason=reason,
        )
        return RateDecision(
            RateAction.SUPPRESS,
            suppressed,
            0,
            None,
            f"repeat within {interval:.0f} s of the last one ({elapsed:.1f} s ago)",
        )

    sent = RateEntry(event=event, last_sent=now, last_reason=reason)
    decision_reason = "clock moved backwards since the last alert" if elapsed < 0 else f"last alert {elapsed:.0f} s ago"
    return RateDecision(RateAction.SEND, sent, entry.suppressed, entry.first_suppressed, decision_reason)


def digest_due(entry: RateEntry, now: float, interval: float) -> bool:
    """Return whether the interval of an entry with suppressed repeats has ended."""
    if entry.suppressed == 0:
        return False
    elapsed = now - entry.last_sent
    return elapsed >= interval or elapsed < 0


def entry_expired(entry: RateEntry, now: float, interval: float) -> bool:
    """Return whether an entry no longer affects any decision and can be dropped from the file."""
    return entry.suppressed == 0 and now - entry.last_sent > max(interval, _ENTRY_RETENTION)


@dataclass
class AlertCounters:
    """Totals since the state file was created; `status --prometheus` exposes them."""

    sent: int = 0
    failed: int = 0
    suppressed: int = 0
    dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "failed": self.failed, "suppressed": self.suppressed, "dropped": self.dropped}


@dataclass
class AlertState:
    """The contents of the alerts state file."""

    entries: dict[str, RateEntry] = field(default_factory=dict)
    counters: AlertCounters = field(default_factory=AlertCounters)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _unix_time(value: Any) -> bool:
    """Whether `value` is a Unix time that datetime can format (JSON allows NaN and 1e308 too)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return 0 <= value <= _LATEST_TIME


def _valid_entry(item: Any) -> bool:
    if not isinstance(item, dict) or not isinstance(item.get("event"), str):
        return False
    if not _unix_time(item.get("last_sent")) or not _count(item.get("suppressed", 0)):
        return False
    first_suppressed = item.get("first_suppressed")
    if first_suppressed is not None and not _unix_time(first_suppressed):
        return False
    return isinstance(item.get("last_reason", ""), str)


def valid_state(value: Any) -> bool:
    """Check every field the sender reads, so a damaged file is moved aside instead of failing each send."""
    if not isinstance(value, dict) or value.get("version") != _STATE_VERSION:
        return False
    entries, counters = value.get("entries"), value.get("counters")
    if not isinstance(entries, dict) or not isinstance(counters, dict):
        return False
    if not all(_valid_entry(item) for item in entries.values()):
        return False
    return all(_count(number) for number in counters.values())


def decode_state(value: dict[str, Any]) -> AlertState:
    entries = {
        key: RateEntry(
            event=item["event"],
            last_sent=float(item["last_sent"]),
            suppressed=int(item.get("suppressed", 0)),
            first_suppressed=item.get("first_suppressed"),
            last_reason=str(item.get("last_reason", "")),
        )
        for key, item in value["entries"].items()
    }
    known = AlertCounters().as_dict()
    counters = AlertCounters(**{name: value["counters"].get(name, 0) for name in known})
    return AlertState(entries, counters)


def _encode_state(alert_state: AlertState) -> dict[str, Any]:
    return {
        "version": _STATE_VERSION,
        "entries": {
            key: {
                "event": entry.event,
                "last_sent": entry.last_sent,
                "suppressed": entry.suppressed,
                "first_suppressed": entry.first_suppressed,
                "last_reason": entry.last_reason,
            }
            for key, entry in alert_state.entries.items()
        },
        "counters": alert_state.counters.as_dict(),
    }


def read_alert_counters(state_dir: Path, *, move_corrupt: bool = True) -> AlertCounters:
    """Read the delivery counters without taking the lock, for metrics and status.

    A corrupt file gives zero counters (state.read_json logs it), and is moved aside unless
    `move_corrupt` is false.
    """
    result = state.read_json(state_dir / ALERTS_STATE_FILE, None, validate=valid_state, move_corrupt=move_corrupt)
    if result.value is None:
        return AlertCounters()
    return decode_state(result.value).counters


class AlertStateStore:
    """The alerts state file, read and written under an exclusive flock."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / ALERTS_STATE_FILE
        self.lock_path = state_dir / f".{ALERTS_STATE_FILE}.lock"
        self.problem: str | None = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[AlertState]:
        """Yield the current state and write it back afterwards, holding the lock meanwhile.

        When the lock cannot be taken within a short bound (another process hung holding it),
        the state is still read and written without it. A lost update costs at most one
        duplicate alert, whereas waiting could stall every alert on this node.
        """
        self.lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.lock_path, "a", encoding="utf-8") as lock_file:
            acquired = _flock_with_timeout(lock_file.fileno(), _LOCK_TIMEOUT)
            if not acquired:
                log.warning(
                    "alert state lock %s not acquired within %.1f s; continuing without it",
                    self.lock_path,
                    _LOCK_TIMEOUT,
                )
            try:
                result = state.read_json(self.path, None, validate=valid_state)
                if result.problem:
                    self.problem = result.problem
                alert_state = AlertState() if result.value is None else decode_state(result.value)
                yield alert_state
                state.write_json(self.path, _encode_state(alert_state))
            finally:
                if acquired:
                    fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _flock_with_timeout(descriptor: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
