"""Failover history: one record per promote, demote or switchover of this node, with per-step durations.

The records live in `<state_dir>/history.json` (state.HISTORY_FILE), newest last, capped at
MAX_RECORDS. A promote writes its record as `running` before it changes anything and rewrites
it when it ends. A record still `running` when the next transition starts therefore belongs to
a process that died half-way, and `close_interrupted` marks it `interrupted`. The circuit
breaker counts these records, and `mailcow-ha history` shows them.

This module also keeps the failover start time (state.FAILOVER_START_FILE) from which the
health check counts its grace period.
"""

from __future__ import annotations

import enum
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mailcow_ha import state
from mailcow_ha.deadline import Clock
from mailcow_ha.errors import Superseded

log = logging.getLogger(__name__)

HISTORY_FORMAT = 1
MAX_RECORDS = 500


class RecordKind(enum.StrEnum):
    FAILOVER = "failover"
    """A promote that keepalived started (the agent saw MASTER); the circuit breaker counts these."""
    MANUAL_PROMOTE = "manual-promote"
    """`mailcow-ha promote` run by an operator."""
    SWITCHOVER = "switchover"
    """A planned move to another node (`mailcow-ha switchover`)."""
    RESUME = "resume"
    """An automatic promote on a node that already had the shared volume mounted (after an agent
    restart, or retrying a promote that died after mounting); not counted by the breaker."""
    DEMOTE = "demote"


class RecordOutcome(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    REFUSED = "refused"
    INTERRUPTED = "interrupted"
    """The process ended (crash, kill, reboot) before it finished the record."""


class StepOutcome(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class StepTiming:
    """One timed step of a transition."""

    name: str
    seconds: float
    outcome: StepOutcome = StepOutcome.OK
    detail: str | None = None
    """The way the step ended, for a step that can end in several ways (the release wait, the MMP check)."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "seconds": round(self.seconds, 4), "outcome": str(self.outcome)}
        if self.detail is not None:
            data["detail"] = self.detail
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepTiming:
        detail = data.get("detail")
        return cls(
            str(data["name"]),
            float(data["seconds"]),
            StepOutcome(data["outcome"]),
            None if detail is None else str(detail),
        )


@dataclass
class StepNote:
    """A running step's report of the way it ended; StepLog stores it with the step's timing."""

    detail: str | None = None


@dataclass(frozen=True)
class FailoverRecord:
    """One transition of this node; times are wall-clock seconds since the epoch."""

    id: str
    kind: RecordKind
    node: str
    reason: str
    started_at: float
    outcome: RecordOutcome = RecordOutcome.RUNNING
    finished_at: float | None = None
    failed_step: str | None = None
    error: str | None = None
    steps: tuple[StepTiming, ...] = ()
    pid: int = field(default_factory=os.getpid)

    @property
    def duration(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": str(self.kind),
            "node": self.node,
            "reason": self.reason,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "outcome": str(self.outcome),
            "failed_step": self.failed_step,
            "error": self.error,
            "steps": [step.to_json() for step in self.steps],
            "pid": self.pid,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FailoverRecord:
        """Build a record from its JSON form; raises KeyError, TypeError or ValueError on a bad shape."""
        finished_at = data.get("finished_at")
        return cls(
            id=str(data["id"]),
            kind=RecordKind(data["kind"]),
            node=str(data["node"]),
            reason=str(data["reason"]),
            started_at=float(data["started_at"]),
            outcome=RecordOutcome(data["outcome"]),
            finished_at=None if finished_at is None else float(finished_at),
            failed_step=None if data.get("failed_step") is None else str(data["failed_step"]),
            error=None if data.get("error") is None else str(data["error"]),
            steps=tuple(StepTiming.from_json(step) for step in data.get("steps", [])),
            pid=int(data.get("pid", 0)),
        )


@dataclass(frozen=True)
class HistoryRead:
    """The records read from the history file; `problem` explains why they may be incomplete."""

    records: list[FailoverRecord]
    problem: str | None = None


def _is_history_document(value: Any) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("records"), list):
        return False
    try:
        for record in value["records"]:
            FailoverRecord.from_json(record)
    except (KeyError, TypeError, ValueError):
        return False
    return True


class HistoryStore:
    """The history file in the state directory. Writes are atomic (state.write_json).

    Only transitions write it, and they run one at a time under the transition lock. The
    in-process lock protects the read-modify-write against the few callers in other threads.
    """

    def __init__(self, state_dir: Path, *, clock: Clock = time.time) -> None:
        self.path = state_dir / state.HISTORY_FILE
        self._clock = clock
        self._lock = threading.Lock()

    def read(self, *, move_corrupt: bool = True) -> HistoryRead:
        """Read the records, oldest first.

        A corrupt file is reported in `problem` with no records, and moved aside unless
        `move_corrupt` is false (read-only commands). An unreadable file (permissions, I/O)
        raises StateError.
        """
        result = state.read_json(
            self.path,
            {"format": HISTORY_FORMAT, "records": []},
            validate=_is_history_document,
            move_corrupt=move_corrupt,
        )
        records = [FailoverRecord.from_json(record) for record in result.value["records"]]
        return HistoryRead(records, result.problem)

    def new_record(self, kind: RecordKind, node: str, reason: str) -> FailoverRecord:
        """Return a new `running` record starting now, without writing it."""
        return FailoverRecord(secrets.token_hex(6), kind, node, reason, self._clock())

    def start(self, kind: RecordKind, node: str, reason: str) -> FailoverRecord:
        """Write a new `running` record and return it."""
        record = self.new_record(kind, node, reason)
        self.save(record)
        return record

    def save(self, record: FailoverRecord) -> None:
        """Append `record`, or replace the record with the same id."""
        with self._lock:
            records = self.read().records
            for index, existing in enumerate(records):
                if existing.id == record.id:
                    records[index] = record
                    break
            else:
                records.append(record)
            document = {"format": HISTORY_FORMAT, "records": [item.to_json() for item in records[-MAX_RECORDS:]]}
            state.write_json(self.path, document)

    def finish(
        self,
        record: FailoverRecord,
        outcome: RecordOutcome,
        steps: tuple[StepTiming, ...],
        *,
        failed_step: str | None = None,
        error: str | None = None,
    ) -> FailoverRecord:
        """Write the end of a record and return the finished record."""
        finished = self.ended(record, outcome, steps, failed_step=failed_step, error=error)
        self.save(finished)
        return finished

    def ended(
        self,
        record: FailoverRecord,
        outcome: RecordOutcome,
        steps: tuple[StepTiming, ...],
        *,
        failed_step: str | None = None,
        error: str | None = None,
    ) -> FailoverRecord:
        """Return `record` ended now with `outcome`, without writing it."""
        return replace(
            record, outcome=outcome, finished_at=self._clock(), steps=steps, failed_step=failed_step, error=error
        )

    def close_interrupted(self) -> list[FailoverRecord]:
        """Mark every `running` record as `interrupted` and return them.

        Call it only while holding the transition lock: then no other transition can be
        running, so a `running` record was left by a process that died.
        """
        with self._lock:
            read = self.read()
            stale = [record for record in read.records if record.outcome is RecordOutcome.RUNNING]
            if not stale:
                return []
            closed = {record.id: replace(record, outcome=RecordOutcome.INTERRUPTED) for record in stale}
            records = [closed.get(record.id, record) for record in read.records]
            state.write_json(self.path, {"format": HISTORY_FORMAT, "records": [r.to_json() for r in records]})
        for record in closed.values():
            log.warning(
                "%s %s started at %s by pid %d never finished; marked interrupted",
                record.kind,
                record.id,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started_at)),
                record.pid,
            )
        return list(closed.values())


class StepLog:
    """Times the steps of one transition; steps may be added from several threads."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._steps: list[StepTiming] = []
        self.failed_step: str | None = None

    @property
    def steps(self) -> tuple[StepTiming, ...]:
        with self._lock:
            return tuple(self._steps)

    def add(self, timing: StepTiming) -> None:
        with self._lock:
            self._steps.append(timing)
            if timing.outcome is StepOutcome.FAILED and self.failed_step is None:
                self.failed_step = timing.name

    @contextmanager
    def step(self, name: str, enter: Callable[[str], None] | None = None) -> Iterator[StepNote]:
        """Time the block as step `name`; `enter(name)` runs first (a CancelToken's enter_step).

        The block may set the yielded note's `detail`, which is stored with the timing.
        """
        if enter is not None:
            enter(name)
        note = StepNote()
        started = self._clock()
        try:
            yield note
        except Superseded:
            self.add(StepTiming(name, self._clock() - started, StepOutcome.SUPERSEDED, note.detail))
            raise
        except BaseException:
            self.add(StepTiming(name, self._clock() - started, StepOutcome.FAILED, note.detail))
            raise
        self.add(StepTiming(name, self._clock() - started, detail=note.detail))

    def durations(self) -> dict[str, str]:
        """Return step name -> seconds (and detail) formatted for an alert's details."""
        formatted = {}
        for timing in self.steps:
            detail = "" if timing.detail is None else f"; {timing.detail}"
            formatted[timing.name] = f"{timing.seconds:.2f} s ({timing.outcome}{detail})"
        return formatted


def write_failover_start(state_dir: Path, started_at: float, record_id: str) -> None:
    """Record when the current failover started; the health check's grace period counts from it."""
    state.write_json(state_dir / state.FAILOVER_START_FILE, {"started_at": started_at, "record": record_id})


def read_failover_start(state_dir: Path, *, move_corrupt: bool = True) -> float | None:
    """Return when the last failover started (seconds since the epoch), or None if unknown.

    A corrupt file is treated as unknown, and moved aside unless `move_corrupt` is false. An
    unreadable one raises StateError.
    """

    def valid(value: Any) -> bool:
        return isinstance(value, dict) and isinstance(value.get("started_at"), int | float)

    result = state.read_json(state_dir / state.FAILOVER_START_FILE, None, validate=valid, move_corrupt=move_corrupt)
    return None if result.value is None else float(result.value["started_at"])
