"""Circuit breaker: counting automatic failovers, resets, retries, and damaged state files."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.failovernode import RecordingAlerter
from mailcow_ha import state
from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.config import BreakerSettings
from mailcow_ha.failover.breaker import CircuitBreaker, decide
from mailcow_ha.failover.history import FailoverRecord, HistoryStore, RecordKind, RecordOutcome

NOW = 1_800_000_000.0
HOUR = 3600.0


def record(
    minutes_ago: float, kind: RecordKind = RecordKind.FAILOVER, outcome: RecordOutcome = RecordOutcome.SUCCEEDED
) -> FailoverRecord:
    started = NOW - minutes_ago * 60
    return FailoverRecord(f"r{minutes_ago:g}", kind, "node-1", "test", started, outcome, started + 5)


def decision(records: list[FailoverRecord], *, reset_at: float | None = None, serving: bool = False, limit: int = 1):
    return decide(records, now=NOW, window=HOUR, max_failovers=limit, reset_at=reset_at, already_serving=serving)


def test_no_history_allows() -> None:
    result = decision([])

    assert result.allowed
    assert "0 automatic failover(s)" in result.reason


def test_recent_failover_trips() -> None:
    result = decision([record(10)])

    assert not result.allowed
    assert "circuit breaker open" in result.reason
    assert "mailcow-ha breaker reset" in result.reason
    assert [item.id for item in result.counted] == ["r10"]


def test_old_failover_outside_window() -> None:
    assert decision([record(61)]).allowed


@pytest.mark.parametrize("outcome", [RecordOutcome.FAILED, RecordOutcome.SUPERSEDED, RecordOutcome.SUCCEEDED])
def test_every_attempt_counts(outcome: RecordOutcome) -> None:
    assert not decision([record(5, outcome=outcome)]).allowed


def test_refused_attempts_not_counted() -> None:
    assert decision([record(5, outcome=RecordOutcome.REFUSED)]).allowed


@pytest.mark.parametrize("kind", [RecordKind.MANUAL_PROMOTE, RecordKind.SWITCHOVER, RecordKind.DEMOTE])
def test_other_kinds_not_counted(kind: RecordKind) -> None:
    assert decision([record(5, kind=kind)]).allowed


def test_reset_forgets_earlier_failovers() -> None:
    result = decision([record(20)], reset_at=NOW - 10 * 60)

    assert result.allowed
    assert "since the breaker reset" in result.reason


def test_failover_after_reset_counts() -> None:
    assert not decision([record(5)], reset_at=NOW - 10 * 60).allowed


def test_interrupted_failover_may_be_retried() -> None:
    result = decision([record(1, outcome=RecordOutcome.INTERRUPTED)])

    assert result.allowed
    assert "interrupted" in result.reason


def test_only_newest_interrupted_excused() -> None:
    records = [record(20, outcome=RecordOutcome.INTERRUPTED), record(10)]

    result = decision(records, limit=2)

    assert not result.allowed
    assert [item.id for item in result.counted] == ["r20", "r10"]


def test_limit_of_two() -> None:
    assert decision([record(30)], limit=2).allowed
    assert not decision([record(30), record(10)], limit=2).allowed


def test_already_serving_not_counted() -> None:
    result = decision([record(5)], serving=True)

    assert result.allowed
    assert "already has the shared volume mounted" in result.reason


@pytest.fixture
def alerter() -> RecordingAlerter:
    return RecordingAlerter()


def make_breaker(tmp_path: Path, alerter: RecordingAlerter) -> CircuitBreaker:
    history = HistoryStore(tmp_path, clock=lambda: NOW)
    return CircuitBreaker(tmp_path, BreakerSettings(), history, alerter, clock=lambda: NOW)


def test_trip_alerts_and_persists(tmp_path: Path, alerter: RecordingAlerter) -> None:
    HistoryStore(tmp_path).save(record(5))
    breaker = make_breaker(tmp_path, alerter)

    result = breaker.check(already_serving=False)

    assert not result.allowed
    assert alerter.events() == [AlertEvent.BREAKER_TRIPPED]
    assert breaker.status().open
    assert breaker.status().tripped_at == NOW


def test_reset_closes(tmp_path: Path, alerter: RecordingAlerter) -> None:
    HistoryStore(tmp_path).save(record(5))
    breaker = make_breaker(tmp_path, alerter)

    breaker.reset()

    assert breaker.check(already_serving=False).allowed
    assert not breaker.status().open
    assert breaker.status().reset_at == NOW


def test_corrupt_history_fails_open(tmp_path: Path, alerter: RecordingAlerter) -> None:
    (tmp_path / state.HISTORY_FILE).write_text("[1, 2", encoding="utf-8")
    breaker = make_breaker(tmp_path, alerter)

    result = breaker.check(already_serving=False)

    assert result.allowed
    assert alerter.events() == [AlertEvent.STATE_CORRUPT]
    assert "allows this failover" in alerter.reasons(AlertEvent.STATE_CORRUPT)[0]
    assert list(tmp_path.glob("history.json.corrupt-*"))


def test_wrong_shape_history_fails_open(tmp_path: Path, alerter: RecordingAlerter) -> None:
    state.write_json(tmp_path / state.HISTORY_FILE, {"records": [{"id": "x"}]})
    breaker = make_breaker(tmp_path, alerter)

    assert breaker.check(already_serving=False).allowed
    assert alerter.events() == [AlertEvent.STATE_CORRUPT]


def test_unreadable_history_fails_open(tmp_path: Path, alerter: RecordingAlerter) -> None:
    (tmp_path / state.HISTORY_FILE).mkdir()
    breaker = make_breaker(tmp_path, alerter)

    result = breaker.check(already_serving=False)

    assert result.allowed
    assert alerter.events() == [AlertEvent.STATE_CORRUPT]
    assert "could not be read" in alerter.reasons(AlertEvent.STATE_CORRUPT)[0]


def test_corrupt_breaker_file_fails_open(tmp_path: Path, alerter: RecordingAlerter) -> None:
    (tmp_path / state.BREAKER_FILE).write_text('{"reset_at": "yesterday"}', encoding="utf-8")
    breaker = make_breaker(tmp_path, alerter)

    assert breaker.check(already_serving=False).allowed
    assert alerter.events() == [AlertEvent.STATE_CORRUPT]
    assert breaker.status().problems == ()
