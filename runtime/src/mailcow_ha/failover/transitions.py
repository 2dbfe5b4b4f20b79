"""Serialisation of keepalived transitions: one at a time, and the newest state wins.

keepalived starts notify scripts without waiting for them, so MASTER followed quickly by BACKUP
would otherwise run a promote and a demote at the same time. The TransitionRunner owns one worker
thread. `submit` records the newest state and returns at once. The worker runs one promote or
demote at a time under the transition lock. A BACKUP, FAULT or STOP that arrives while a promote
runs cancels the promote's CancelToken, so the promote raises Superseded at its next step
boundary, and then the demote runs. A demote is never cancelled: it is bounded and leaves the node
in a known state, and a promote queued behind it runs as soon as it ends.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailcow_ha.deadline import Clock, Deadline
from mailcow_ha.errors import ExitCode, MailcowHaError, Refused, Superseded
from mailcow_ha.failover.lock import TransitionLock

log = logging.getLogger(__name__)


class VrrpState(enum.StrEnum):
    """A VRRP instance state as keepalived reports it through `notify_fifo`."""

    MASTER = "MASTER"
    BACKUP = "BACKUP"
    FAULT = "FAULT"
    STOP = "STOP"


class TransitionAction(enum.StrEnum):
    """The node's reaction to a VRRP state: promote for MASTER, demote for every other state."""

    PROMOTE = "promote"
    DEMOTE = "demote"


class TransitionResult(enum.StrEnum):
    """The end state of a transition. The values appear in the status API and in history records."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    """A newer keepalived state arrived and the transition stopped at a step boundary."""
    REFUSED = "refused"
    """A safety rule (circuit breaker, marker file, project data) rejected the transition."""


def action_for(state: VrrpState) -> TransitionAction:
    return TransitionAction.PROMOTE if state is VrrpState.MASTER else TransitionAction.DEMOTE


def classify_error(error: BaseException | None) -> tuple[TransitionResult, ExitCode]:
    """Map how a transition callable ended to its result and the exit code a command would return."""
    if error is None:
        return TransitionResult.SUCCEEDED, ExitCode.OK
    if isinstance(error, Superseded):
        return TransitionResult.SUPERSEDED, ExitCode.SUPERSEDED
    if isinstance(error, Refused):
        return TransitionResult.REFUSED, ExitCode.REFUSED
    if isinstance(error, MailcowHaError):
        return TransitionResult.FAILED, error.exit_code
    return TransitionResult.FAILED, ExitCode.FAILED


@dataclass(frozen=True)
class SubmitDecision:
    """The effect of a new state on the runner: queue it, cancel the running transition, or neither."""

    queue: bool
    cancel_running: bool
    reason: str


def decide_submit(running: TransitionAction | None, running_cancelled: bool, state: VrrpState) -> SubmitDecision:
    """Decide how a newly reported state affects the running transition and the queue."""
    requested = action_for(state)
    if running is None:
        return SubmitDecision(True, False, f"{state} received while idle; {requested} queued")
    if running is requested and not running_cancelled:
        return SubmitDecision(
            False, False, f"{state} received while a {requested} runs; the running {requested} covers it"
        )
    if running is TransitionAction.PROMOTE and not running_cancelled:
        return SubmitDecision(
            True, True, f"{state} received while a promote runs; the promote stops at its next step, then demote"
        )
    return SubmitDecision(True, False, f"{state} received while a {running} runs; {requested} queued behind it")


class CancelToken:
    """Cancellation of one running transition, checked at every step boundary.

    `check` raises Superseded once `cancel` was called. `wait` is an interruptible sleep for
    polling loops. `enter_step` records the current step for the status API. `trigger` names
    what started the transition (such as "keepalived reported BACKUP"), for history records.
    """

    def __init__(self, trigger: str = "") -> None:
        self.trigger = trigger
        self._event = threading.Event()
        self._reason = ""
        self._step = "starting"

    def cancel(self, reason: str) -> None:
        if not self._event.is_set():
            self._reason = reason
            self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def step(self) -> str:
        return self._step

    def enter_step(self, step: str) -> None:
        """Check for cancellation, then record `step` as the current one."""
        self.check(f"before {step}")
        self._step = step

    def note_step(self, step: str) -> None:
        """Record `step` as the current one without checking for cancellation (for demote)."""
        self._step = step

    def check(self, where: str = "") -> None:
        """Raise Superseded if the transition was cancelled."""
        if self._event.is_set():
            position = f" {where}" if where else f" at step {self._step}"
            raise Superseded(f"transition stopped{position}: {self._reason}")

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; return True early if the token is cancelled meanwhile."""
        return self._event.wait(max(0.0, seconds))


TransitionCallable = Callable[[CancelToken], None]
OutcomeCallback = Callable[["TransitionOutcome"], None]


@dataclass(frozen=True)
class TransitionOutcome:
    """The result of one transition, with wall-clock times in seconds since the epoch."""

    state: VrrpState
    action: TransitionAction
    result: TransitionResult
    exit_code: ExitCode
    message: str
    started_at: float
    finished_at: float

    @property
    def succeeded(self) -> bool:
        return self.result is TransitionResult.SUCCEEDED

    def to_json(self) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "action": str(self.action),
            "result": str(self.result),
            "exit_code": int(self.exit_code),
            "message": self.message,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration": round(self.finished_at - self.started_at, 3),
        }


@dataclass(frozen=True)
class RunningTransition:
    state: VrrpState
    action: TransitionAction
    step: str
    started_at: float
    cancelled: bool


@dataclass(frozen=True)
class TransitionStatus:
    """A snapshot of the runner for the status API: what runs, what waits, and how the last one ended."""

    latest: VrrpState | None
    """The newest state submitted, which the node converges to."""
    running: RunningTransition | None
    pending: VrrpState | None
    last: TransitionOutcome | None

    @property
    def idle(self) -> bool:
        return self.running is None and self.pending is None

    def to_json(self) -> dict[str, Any]:
        running = None
        if self.running is not None:
            running = {
                "state": str(self.running.state),
                "action": str(self.running.action),
                "step": self.running.step,
                "started_at": self.running.started_at,
                "cancelled": self.running.cancelled,
            }
        return {
            "latest": None if self.latest is None else str(self.latest),
            "running": running,
            "pending": None if self.pending is None else str(self.pending),
            "last": None if self.last is None else self.last.to_json(),
        }


class TransitionRunner:
    """Run promote and demote one at a time on a worker thread, the newest keepalived state winning.

    `run_promote` and `run_demote` take a CancelToken and raise a MailcowHaError on failure (see
    failover.wiring for the real ones). With `lock`, every transition holds the transition lock,
    waiting at most `lock_timeout` seconds for it. `on_outcome` is called on the worker thread
    after each transition; the agent uses it to write keepalived's health file.
    """

    def __init__(
        self,
        run_promote: TransitionCallable,
        run_demote: TransitionCallable,
        *,
        lock: TransitionLock | None = None,
        lock_timeout: float = 60.0,
        on_outcome: OutcomeCallback | None = None,
        clock: Clock = time.time,
    ) -> None:
        self._callables = {TransitionAction.PROMOTE: run_promote, TransitionAction.DEMOTE: run_demote}
        self._lock = lock
        self._lock_timeout = lock_timeout
        self._on_outcome = on_outcome
        self._clock = clock
        self._condition = threading.Condition()
        self._latest: VrrpState | None = None
        self._pending: VrrpState | None = None
        self._running: tuple[VrrpState, TransitionAction, CancelToken, float] | None = None
        self._last: TransitionOutcome | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="mailcow-ha-transitions", daemon=True)
        self._thread.start()

    def submit(self, state: VrrpState) -> None:
        """Record `state` as the newest one and return at once; the worker converges to it."""
        with self._condition:
            if self._closing:
                log.warning("keepalived state %s ignored: the transition runner is closing", state)
                return
            self._latest = state
            running_action = None if self._running is None else self._running[1]
            running_cancelled = self._running is not None and self._running[2].cancelled
            decision = decide_submit(running_action, running_cancelled, state)
            log.info("%s", decision.reason)
            if decision.cancel_running and self._running is not None:
                self._running[2].cancel(f"keepalived reported {state}")
            if decision.queue:
                self._pending = state
            elif self._pending is not None and action_for(self._pending) is not action_for(state):
                # An older queued state of the other kind is now stale: the running one covers the newest.
                log.info("queued %s dropped: %s is newer", self._pending, state)
                self._pending = None
            self._condition.notify_all()

    def current(self) -> TransitionStatus:
        with self._condition:
            running = None
            if self._running is not None:
                state, action, token, started_at = self._running
                running = RunningTransition(state, action, token.step, started_at, token.cancelled)
            return TransitionStatus(self._latest, running, self._pending, self._last)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing runs or waits; return False if `timeout` seconds passed first."""
        deadline = Deadline.after("waiting for transitions to finish", timeout)
        with self._condition:
            while self._running is not None or self._pending is not None:
                if deadline.expired:
                    return False
                self._condition.wait(deadline.remaining())
            return True

    def close(self, timeout: float) -> bool:
        """Cancel a running promote, drop what is queued and stop the worker; return whether it stopped in time."""
        with self._condition:
            self._closing = True
            self._pending = None
            if self._running is not None and self._running[1] is TransitionAction.PROMOTE:
                self._running[2].cancel("the agent is shutting down")
            self._condition.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _work(self) -> None:
        while True:
            with self._condition:
                while self._pending is None and not self._closing:
                    self._condition.wait()
                if self._closing:
                    return
                state = self._pending
                assert state is not None
                self._pending = None
                token = CancelToken(f"keepalived reported {state}")
                action = action_for(state)
                started_at = self._clock()
                self._running = (state, action, token, started_at)
                self._condition.notify_all()

            outcome = self._run_one(state, action, token, started_at)

            # The callback runs before the runner reports idle, so that wait_idle() returning
            # means the agent has already written the outcome to keepalived's health file.
            if self._on_outcome is not None:
                try:
                    self._on_outcome(outcome)
                except Exception:
                    log.exception("outcome callback failed for %s after %s", outcome.action, outcome.state)
            with self._condition:
                self._running = None
                self._last = outcome
                self._condition.notify_all()

    def _run_one(
        self, state: VrrpState, action: TransitionAction, token: CancelToken, started_at: float
    ) -> TransitionOutcome:
        log.info("%s for keepalived state %s starting", action, state)
        error: BaseException | None = None
        try:
            if self._lock is not None:
                self._lock.acquire(str(action), self._lock_timeout, cancelled=token.check, sleep=token.wait)
            try:
                self._callables[action](token)
            finally:
                if self._lock is not None:
                    self._lock.release()
        except MailcowHaError as caught:
            error = caught
        except Exception as caught:
            log.exception("%s for keepalived state %s failed with an unexpected error", action, state)
            error = caught

        result, exit_code = classify_error(error)
        message = f"{action} {result}" if error is None else str(error) or type(error).__name__
        finished_at = self._clock()
        level = logging.INFO if result in (TransitionResult.SUCCEEDED, TransitionResult.SUPERSEDED) else logging.ERROR
        log.log(
            level,
            "%s for keepalived state %s %s after %.2f s: %s",
            action,
            state,
            result,
            finished_at - started_at,
            message,
        )
        return TransitionOutcome(state, action, result, exit_code, message, started_at, finished_at)
