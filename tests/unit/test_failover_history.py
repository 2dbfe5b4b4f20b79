"""Failover history records: round trips, interrupted records, the size cap, step timing, failover start."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailcow_ha import state
from mailcow_ha.errors import StateError, Superseded
from mailcow_ha.failover import history as history_module
from mailcow_ha.failover.history import (
    HistoryStore,
    RecordKind,
    RecordOutcome,
    StepLog,
    StepOutcome,
    StepTiming,
    read_failover_start,
    write_failover_start,
)


def test_start_and_finish_round_trip(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path, clock=iter([100.0, 107.5]).__next__)

    record = store.start(RecordKind.FAILOVER, "node-1", "keepalived reported MASTER")
    finished = store.finish(record, RecordOutcome.FAILED, (), failed_step="mount", error="mount failed")

    read = store.read()
    assert read.problem is None
    assert read.records == [finished]
    assert finished.duration == 7.5
    assert finished.failed_step == "mount"
    assert (tmp_path / state.HISTORY_FILE).stat().st_mode & 0o777 == 0o600


def test_close_interrupted_marks_running(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    done = store.finish(store.start(RecordKind.FAILOVER, "node-1", "first"), RecordOutcome.SUCCEEDED, ())
    running = store.start(RecordKind.FAILOVER, "node-1", "second")

    closed = store.close_interrupted()

    assert [record.id for record in closed] == [running.id]
    outcomes = {record.id: record.outcome for record in store.read().records}
    assert outcomes == {done.id: RecordOutcome.SUCCEEDED, running.id: RecordOutcome.INTERRUPTED}
    assert store.close_interrupted() == []


def test_history_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history_module, "MAX_RECORDS", 3)
    store = HistoryStore(tmp_path)

    ids = [store.start(RecordKind.DEMOTE, "node-1", f"demote {number}").id for number in range(5)]

    assert [record.id for record in store.read().records] == ids[-3:]


def test_corrupt_history_reported(tmp_path: Path) -> None:
    (tmp_path / state.HISTORY_FILE).write_text("not json", encoding="utf-8")

    read = HistoryStore(tmp_path).read()

    assert read.records == []
    assert read.problem is not None
    assert "not valid JSON" in read.problem


def test_unreadable_history_raises(tmp_path: Path) -> None:
    (tmp_path / state.HISTORY_FILE).mkdir()

    with pytest.raises(StateError, match="could not be read"):
        HistoryStore(tmp_path).read()


def test_record_with_unknown_kind_is_corrupt(tmp_path: Path) -> None:
    state.write_json(
        tmp_path / state.HISTORY_FILE,
        {
            "format": 1,
            "records": [
                {"id": "a", "kind": "teleport", "node": "n", "reason": "r", "started_at": 1, "outcome": "running"}
            ],
        },
    )

    read = HistoryStore(tmp_path).read()

    assert read.records == []
    assert read.problem is not None


def test_step_log_times_and_marks_failures() -> None:
    ticks = iter([0.0, 1.0, 1.0, 3.5, 4.0, 4.25])
    steps = StepLog(clock=ticks.__next__)

    with steps.step("cloud"):
        pass
    with pytest.raises(RuntimeError), steps.step("mount"):
        raise RuntimeError("mount failed")
    with pytest.raises(Superseded), steps.step("containers"):
        raise Superseded("BACKUP")

    assert [(timing.name, timing.seconds, timing.outcome) for timing in steps.steps] == [
        ("cloud", 1.0, StepOutcome.OK),
        ("mount", 2.5, StepOutcome.FAILED),
        ("containers", 0.25, StepOutcome.SUPERSEDED),
    ]
    assert steps.failed_step == "mount"
    assert steps.durations()["mount"] == "2.50 s (failed)"


def test_step_log_enter_called_first() -> None:
    entered: list[str] = []
    steps = StepLog()

    with steps.step("device", entered.append):
        assert entered == ["device"]


def test_step_detail_stored_and_read_back(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    steps = StepLog(clock=iter([0.0, 0.5]).__next__)
    with steps.step("multi-mount protection") as note:
        note.detail = "clear: cluster member mailcow-2 left the MMP block active"
    steps.add(StepTiming("release wait", 0.4, detail="released: mailcow-2 reports the volume unmounted"))
    record = store.start(RecordKind.FAILOVER, "node-1", "keepalived reported MASTER")

    finished = store.finish(record, RecordOutcome.SUCCEEDED, steps.steps)

    assert store.read().records == [finished]
    assert [step.detail for step in finished.steps] == [
        "clear: cluster member mailcow-2 left the MMP block active",
        "released: mailcow-2 reports the volume unmounted",
    ]
    assert "released: mailcow-2" in steps.durations()["release wait"]


def test_step_without_detail_has_no_detail_key() -> None:
    assert "detail" not in StepTiming("mount", 0.1).to_json()
    assert StepTiming.from_json({"name": "mount", "seconds": 0.1, "outcome": "ok"}).detail is None


def test_failover_start_round_trip(tmp_path: Path) -> None:
    assert read_failover_start(tmp_path) is None

    write_failover_start(tmp_path, 1234.5, "abc")

    assert read_failover_start(tmp_path) == 1234.5


def test_corrupt_failover_start_unknown(tmp_path: Path) -> None:
    (tmp_path / state.FAILOVER_START_FILE).write_text('{"started_at": "soon"}', encoding="utf-8")

    assert read_failover_start(tmp_path) is None
