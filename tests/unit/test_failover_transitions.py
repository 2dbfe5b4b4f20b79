"""TransitionRunner: one transition at a time, the newest keepalived state wins, outcomes reported."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mailcow_ha.errors import CloudError, ExitCode, Refused
from mailcow_ha.failover.lock import LockTimeout, TransitionLock, current_holder
from mailcow_ha.failover.transitions import (
    CancelToken,
    TransitionAction,
    TransitionOutcome,
    TransitionResult,
    TransitionRunner,
    VrrpState,
    decide_submit,
)


class Recorder:
    """Transition callables that log every step they start, with configurable step counts and failures."""

    def __init__(self, promote_steps: int = 1, step_seconds: float = 0.0) -> None:
        self.events: list[str] = []
        self.promote_steps = promote_steps
        self.step_seconds = step_seconds
        self.promote_error: Exception | None = None
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def _enter(self) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def _leave(self) -> None:
        with self._lock:
            self.active -= 1

    def promote(self, token: CancelToken) -> None:
        self._enter()
        try:
            for step in range(self.promote_steps):
                token.enter_step(f"step {step}")
                self.events.append(f"promote step {step}")
                token.wait(self.step_seconds)
            if self.promote_error is not None:
                raise self.promote_error
            self.events.append("promote done")
        finally:
            self._leave()

    def demote(self, token: CancelToken) -> None:
        self._enter()
        try:
            self.events.append("demote")
        finally:
            self._leave()


@pytest.fixture
def outcomes() -> list[TransitionOutcome]:
    return []


def make_runner(recorder: Recorder, outcomes: list[TransitionOutcome], **kwargs: object) -> TransitionRunner:
    return TransitionRunner(recorder.promote, recorder.demote, on_outcome=outcomes.append, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("running", "cancelled", "state", "queue", "cancel"),
    [
        (None, False, VrrpState.MASTER, True, False),
        (None, False, VrrpState.BACKUP, True, False),
        (TransitionAction.PROMOTE, False, VrrpState.MASTER, False, False),
        (TransitionAction.PROMOTE, False, VrrpState.BACKUP, True, True),
        (TransitionAction.PROMOTE, False, VrrpState.FAULT, True, True),
        (TransitionAction.PROMOTE, False, VrrpState.STOP, True, True),
        (TransitionAction.PROMOTE, True, VrrpState.MASTER, True, False),
        (TransitionAction.DEMOTE, False, VrrpState.MASTER, True, False),
        (TransitionAction.DEMOTE, False, VrrpState.FAULT, False, False),
    ],
)
def test_submit_decision_table(
    running: TransitionAction | None, cancelled: bool, state: VrrpState, queue: bool, cancel: bool
) -> None:
    decision = decide_submit(running, cancelled, state)

    assert decision.queue is queue
    assert decision.cancel_running is cancel
    assert str(state) in decision.reason


def test_backup_interrupts_promote(outcomes: list[TransitionOutcome]) -> None:
    recorder = Recorder(promote_steps=50, step_seconds=0.02)
    runner = make_runner(recorder, outcomes)

    runner.submit(VrrpState.MASTER)
    time.sleep(0.1)
    runner.submit(VrrpState.BACKUP)

    assert runner.wait_idle(5)
    assert recorder.events[-1] == "demote"
    assert "promote done" not in recorder.events
    assert recorder.events.count("demote") == 1
    assert recorder.max_active == 1
    assert [outcome.result for outcome in outcomes] == [TransitionResult.SUPERSEDED, TransitionResult.SUCCEEDED]
    assert outcomes[0].exit_code is ExitCode.SUPERSEDED
    assert "BACKUP" in outcomes[0].message
    assert runner.current().latest is VrrpState.BACKUP
    runner.close(5)


def test_no_promote_step_after_demote_starts(outcomes: list[TransitionOutcome]) -> None:
    recorder = Recorder(promote_steps=200, step_seconds=0.001)
    runner = make_runner(recorder, outcomes)

    for _ in range(20):
        runner.submit(VrrpState.MASTER)
        runner.submit(VrrpState.BACKUP)
    assert runner.wait_idle(10)

    demote_positions = [index for index, event in enumerate(recorder.events) if event == "demote"]
    last_demote = demote_positions[-1]
    assert all(not event.startswith("promote") for event in recorder.events[last_demote:])
    assert recorder.max_active == 1
    assert outcomes[-1].action is TransitionAction.DEMOTE
    runner.close(5)


def test_duplicate_master_is_coalesced(outcomes: list[TransitionOutcome]) -> None:
    recorder = Recorder(promote_steps=5, step_seconds=0.02)
    runner = make_runner(recorder, outcomes)

    runner.submit(VrrpState.MASTER)
    time.sleep(0.03)
    runner.submit(VrrpState.MASTER)

    assert runner.wait_idle(5)
    assert recorder.events.count("promote done") == 1
    assert len(outcomes) == 1
    runner.close(5)


def test_master_after_cancel_promotes_again(outcomes: list[TransitionOutcome]) -> None:
    recorder = Recorder(promote_steps=20, step_seconds=0.02)
    runner = make_runner(recorder, outcomes)

    runner.submit(VrrpState.MASTER)
    time.sleep(0.05)
    runner.submit(VrrpState.BACKUP)
    runner.submit(VrrpState.MASTER)

    assert runner.wait_idle(5)
    assert recorder.events[-1] == "promote done"
    assert "demote" not in recorder.events
    assert [outcome.result for outcome in outcomes] == [TransitionResult.SUPERSEDED, TransitionResult.SUCCEEDED]
    runner.close(5)


def test_failed_promote_reported(outcomes: list[TransitionOutcome]) -> None:
    recorder = Recorder()
    recorder.promote_error = CloudError("assign action ended in error", code="action_failed")
    runner = make_runner(recorder, outcomes)

    runner.submit(VrrpState.MASTER)

    assert runner.wait_idle(5)
    assert outcomes[0].result is TransitionResult.FAILED
    assert outcomes[0].exit_code is ExitCode.FAILED
    assert "assign action ended in error" in outcomes[0].message
    last = runner.current().last
    assert last is not None
    assert last.result is TransitionResult.FAILED
    runner.close(5)


def test_refused_promote_reported(outcomes: list[TransitionOutcome]) -> None:
    recorder = Recorder()
    recorder.promote_error = Refused("circuit breaker open")
    runner = make_runner(recorder, outcomes)

    runner.submit(VrrpState.MASTER)

    assert runner.wait_idle(5)
    assert outcomes[0].result is TransitionResult.REFUSED
    assert outcomes[0].exit_code is ExitCode.REFUSED
    runner.close(5)


def test_unexpected_error_keeps_worker(outcomes: list[TransitionOutcome]) -> None:
    recorder = Recorder()
    recorder.promote_error = KeyError("bug")
    runner = make_runner(recorder, outcomes)

    runner.submit(VrrpState.MASTER)
    assert runner.wait_idle(5)
    runner.submit(VrrpState.BACKUP)

    assert runner.wait_idle(5)
    assert [outcome.result for outcome in outcomes] == [TransitionResult.FAILED, TransitionResult.SUCCEEDED]
    runner.close(5)


def test_status_shows_running_step(outcomes: list[TransitionOutcome]) -> None:
    recorder = Recorder(promote_steps=3, step_seconds=0.3)
    runner = make_runner(recorder, outcomes)

    runner.submit(VrrpState.MASTER)
    time.sleep(0.1)
    status = runner.current()

    assert status.running is not None
    assert status.running.action is TransitionAction.PROMOTE
    assert status.running.step == "step 0"
    assert status.to_json()["running"]["step"] == "step 0"
    runner.close(5)


def test_outcome_callback_precedes_idle() -> None:
    seen_idle: list[bool] = []
    recorder = Recorder()
    runner: TransitionRunner

    def on_outcome(outcome: TransitionOutcome) -> None:
        seen_idle.append(runner.current().idle)

    runner = TransitionRunner(recorder.promote, recorder.demote, on_outcome=on_outcome)
    runner.submit(VrrpState.BACKUP)

    assert runner.wait_idle(5)
    assert seen_idle == [False]
    runner.close(5)


def test_runner_waits_for_lock(tmp_path: Path, outcomes: list[TransitionOutcome]) -> None:
    recorder = Recorder()
    other = TransitionLock(tmp_path / "transition.lock")
    other.acquire("manual promote", 1.0)
    runner = make_runner(recorder, outcomes, lock=TransitionLock(tmp_path / "transition.lock"), lock_timeout=5.0)

    runner.submit(VrrpState.BACKUP)
    time.sleep(0.2)
    assert recorder.events == []
    other.release()

    assert runner.wait_idle(5)
    assert recorder.events == ["demote"]
    assert current_holder(tmp_path / "transition.lock") is None
    runner.close(5)


def test_lock_timeout_fails_transition(tmp_path: Path, outcomes: list[TransitionOutcome]) -> None:
    recorder = Recorder()
    other = TransitionLock(tmp_path / "transition.lock")
    other.acquire("manual demote", 1.0)
    runner = make_runner(recorder, outcomes, lock=TransitionLock(tmp_path / "transition.lock"), lock_timeout=0.2)

    runner.submit(VrrpState.MASTER)

    assert runner.wait_idle(5)
    assert recorder.events == []
    assert outcomes[0].result is TransitionResult.FAILED
    assert "manual demote" in outcomes[0].message
    other.release()
    runner.close(5)


def test_lock_names_holder(tmp_path: Path) -> None:
    path = tmp_path / "transition.lock"
    holder = TransitionLock(path)
    holder.acquire("promote", 1.0)

    found = current_holder(path)
    with pytest.raises(LockTimeout, match="promote since"):
        TransitionLock(path).acquire("demote", 0.1)

    assert found is not None
    assert found.action == "promote"
    holder.release()
    assert current_holder(path) is None


def test_close_cancels_promote(outcomes: list[TransitionOutcome]) -> None:
    recorder = Recorder(promote_steps=100, step_seconds=0.05)
    runner = make_runner(recorder, outcomes)
    runner.submit(VrrpState.MASTER)
    time.sleep(0.1)

    assert runner.close(5)
    assert outcomes[0].result is TransitionResult.SUPERSEDED
