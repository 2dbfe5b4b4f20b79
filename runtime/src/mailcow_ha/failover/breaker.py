"""The circuit breaker: stop a failover loop by rejecting repeated automatic failovers onto this node.

Automatic failovers onto this node (history records of kind `failover`, whatever their outcome
except `refused`) are counted inside the window (`breaker.window`, 1 h by default) or since the
last `mailcow-ha breaker reset`, whichever is later. When `breaker.max_failovers` are already
counted, the next automatic promote is rejected with an alert, and the node stays demoted.

Two cases are not counted:
- A promote on a node that already has the shared volume mounted resumes an existing master,
  after an agent restart for example. It moves nothing and is recorded as `resume`.
- The newest counted record is `interrupted`: the promote that died half-way is being retried,
  and the retry replaces it.

A corrupt or unreadable history or breaker file fails open: the failover is allowed and a
STATE_CORRUPT alert is sent. The breaker protects availability against a loop, while the
shared data is fenced by the cloud API's single attachment, ext4 multi-mount protection and the
marker file, none of which depend on this history. Failing closed would keep mail down until an
operator intervenes. Failing open costs at most one extra failover: that failover writes a
fresh history, which the breaker counts again from then on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailcow_ha import state
from mailcow_ha.alert_events import Alerter, AlertEvent
from mailcow_ha.config import BreakerSettings
from mailcow_ha.deadline import Clock
from mailcow_ha.errors import Refused, StateError
from mailcow_ha.failover.history import FailoverRecord, HistoryStore, RecordKind, RecordOutcome

log = logging.getLogger(__name__)

COUNTED_KINDS = frozenset({RecordKind.FAILOVER})


class BreakerOpen(Refused):
    """The circuit breaker rejected an automatic failover onto this node."""


@dataclass(frozen=True)
class BreakerDecision:
    allowed: bool
    reason: str
    counted: tuple[FailoverRecord, ...] = ()
    since: float | None = None
    """The start of the count: the window's start, or the last reset when that is later."""
    closes_at: float | None = None
    """Time at which a rejecting breaker allows a failover again as the window moves on (None when allowed)."""


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(timestamp))


def decide(
    records: Sequence[FailoverRecord],
    *,
    now: float,
    window: float,
    max_failovers: int,
    reset_at: float | None,
    already_serving: bool,
) -> BreakerDecision:
    """Decide whether an automatic failover onto this node may start, and why."""
    since = now - window
    if reset_at is not None and reset_at > since:
        since = reset_at
    if already_serving:
        return BreakerDecision(
            True, "this node already has the shared volume mounted; the promote resumes it", since=since
        )
    counted = [
        record
        for record in records
        if record.kind in COUNTED_KINDS and record.started_at >= since and record.outcome is not RecordOutcome.REFUSED
    ]
    retry_note = ""
    if counted and counted[-1].outcome is RecordOutcome.INTERRUPTED:
        retry_note = f"; failover {counted[-1].id} was interrupted and this one retries it"
        counted.pop()
    span = f"since the breaker reset at {_when(since)}" if since != now - window else f"in the last {window:g} s"
    if len(counted) >= max_failovers:
        listed = ", ".join(f"{record.id} at {_when(record.started_at)} ({record.outcome})" for record in counted)
        # The oldest failovers leave the window first, and the breaker closes once fewer than the limit remain.
        closes_at = sorted(record.started_at for record in counted)[len(counted) - max_failovers] + window
        return BreakerDecision(
            False,
            f"circuit breaker open: {len(counted)} automatic failover(s) onto this node {span} "
            f"(limit {max_failovers}): {listed}. Another failover onto this node means the cluster keeps "
            f"failing over: it is refused until {_when(closes_at)} or `mailcow-ha breaker reset` on this node",
            tuple(counted),
            since,
            closes_at,
        )
    return BreakerDecision(
        True,
        f"circuit breaker closed: {len(counted)} automatic failover(s) onto this node {span}, "
        f"limit {max_failovers}{retry_note}",
        tuple(counted),
        since,
    )


@dataclass(frozen=True)
class BreakerStatus:
    """The breaker as `mailcow-ha breaker status` and the status API show it.

    `open`: the next automatic failover onto this node would be refused, which is normal for a
    while after a failover onto it. `tripped`: the breaker refused one since the count started,
    so the cluster tried to fail over in a loop and an operator must look.
    """

    open: bool
    reason: str
    counted: tuple[FailoverRecord, ...]
    reset_at: float | None
    tripped_at: float | None
    problems: tuple[str, ...]
    tripped: bool = False
    closes_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "open": self.open,
            "tripped": self.tripped,
            "closes_at": self.closes_at,
            "reason": self.reason,
            "counted": [record.id for record in self.counted],
            "reset_at": self.reset_at,
            "tripped_at": self.tripped_at,
            "problems": list(self.problems),
        }


def _is_breaker_document(value: Any) -> bool:
    return isinstance(value, dict) and all(
        value.get(key) is None or isinstance(value.get(key), int | float) for key in ("reset_at", "tripped_at")
    )


class CircuitBreaker:
    """The breaker's persisted state (`<state_dir>/breaker.json`) and the history it counts."""

    def __init__(
        self,
        state_dir: Path,
        settings: BreakerSettings,
        history: HistoryStore,
        alerter: Alerter,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.path = state_dir / state.BREAKER_FILE
        self._settings = settings
        self._history = history
        self._alerter = alerter
        self._clock = clock

    def check(self, *, already_serving: bool) -> BreakerDecision:
        """Decide whether an automatic failover may start; alert and persist the trip when it may not."""
        records, breaker_file, problems = self._read()
        for problem in problems:
            self._alerter.send(AlertEvent.STATE_CORRUPT, f"{problem}; the circuit breaker allows this failover")
        decision = decide(
            records,
            now=self._clock(),
            window=self._settings.window,
            max_failovers=self._settings.max_failovers,
            reset_at=breaker_file.get("reset_at"),
            already_serving=already_serving,
        )
        log.info("%s", decision.reason)
        if not decision.allowed:
            self._alerter.send(AlertEvent.BREAKER_TRIPPED, decision.reason)
            try:
                state.write_json(self.path, {**breaker_file, "tripped_at": self._clock()})
            except StateError as error:
                log.error("breaker trip could not be recorded: %s", error)
        return decision

    def status(self, *, move_corrupt: bool = True) -> BreakerStatus:
        """Report whether the next automatic failover onto this node would be rejected.

        Corrupt files are listed in `problems`, and moved aside unless `move_corrupt` is false
        (`mailcow-ha breaker status`).
        """
        records, breaker_file, problems = self._read(move_corrupt=move_corrupt)
        decision = decide(
            records,
            now=self._clock(),
            window=self._settings.window,
            max_failovers=self._settings.max_failovers,
            reset_at=breaker_file.get("reset_at"),
            already_serving=False,
        )
        tripped_at = breaker_file.get("tripped_at")
        return BreakerStatus(
            open=not decision.allowed,
            reason=decision.reason,
            counted=decision.counted,
            reset_at=breaker_file.get("reset_at"),
            tripped_at=tripped_at,
            problems=tuple(problems),
            tripped=tripped_at is not None and decision.since is not None and tripped_at >= decision.since,
            closes_at=decision.closes_at,
        )

    def reset(self) -> None:
        """Close the breaker: failovers before now no longer count."""
        now = self._clock()
        state.write_json(self.path, {"reset_at": now, "tripped_at": None})
        log.info("circuit breaker reset at %s", _when(now))

    def _read(self, *, move_corrupt: bool = True) -> tuple[list[FailoverRecord], dict[str, Any], list[str]]:
        problems = []
        try:
            history = self._history.read(move_corrupt=move_corrupt)
            records = history.records
            if history.problem is not None:
                problems.append(history.problem)
        except StateError as error:
            records = []
            problems.append(str(error))
        try:
            result = state.read_json(self.path, {}, validate=_is_breaker_document, move_corrupt=move_corrupt)
            breaker_file: dict[str, Any] = result.value
            if result.problem is not None:
                problems.append(result.problem)
        except StateError as error:
            breaker_file = {}
            problems.append(str(error))
        return records, breaker_file, problems
