"""The release wait before a detach: each way it ends, and the polling loop with a scripted holder."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import MailcowHaError, StateError, Superseded
from mailcow_ha.failover.release import (
    Holder,
    HolderReport,
    ReleaseOutcome,
    ReleaseWaiter,
    decide_release,
)

HOLDER = Holder(202, "mailcow-2", "10.0.1.12")


def report(mounted: bool | None = True, **changes: object) -> HolderReport:
    values: dict[str, object] = {
        "node": "mailcow-2",
        "mounted": mounted,
        "vrrp_state": "FAULT",
        "transition_running": "FAULT",
        "transition_started_at": 990.0,
        "mount_read_at": 1000.0,
    }
    values.update(changes)
    return HolderReport(**values)  # type: ignore[arg-type]


def test_released_when_unmounted() -> None:
    decision = decide_release(202, HOLDER, report(mounted=False), expired=False)

    assert not decision.wait
    assert decision.outcome is ReleaseOutcome.RELEASED
    assert "mailcow-2" in decision.reason


def test_waits_while_demote_runs() -> None:
    decision = decide_release(202, HOLDER, report(), expired=False)

    assert decision.wait
    assert decision.outcome is None
    assert "FAULT transition running" in decision.reason


def test_timed_out_when_expired() -> None:
    decision = decide_release(202, HOLDER, report(), expired=True)

    assert not decision.wait
    assert decision.outcome is ReleaseOutcome.TIMED_OUT


def test_released_wins_over_expiry() -> None:
    decision = decide_release(202, HOLDER, report(mounted=False), expired=True)

    assert decision.outcome is ReleaseOutcome.RELEASED


def test_unknown_server_not_asked() -> None:
    decision = decide_release(202, None, None, expired=False)

    assert decision.outcome is ReleaseOutcome.NOT_A_MEMBER
    assert "202" in decision.reason


def test_error_means_no_response() -> None:
    decision = decide_release(202, HOLDER, "status API of mailcow-2 timed out", expired=False)

    assert decision.outcome is ReleaseOutcome.NO_RESPONSE
    assert "timed out" in decision.reason


def test_other_node_answering_not_trusted() -> None:
    decision = decide_release(202, HOLDER, report(mounted=False, node="mailcow-3"), expired=False)

    assert decision.outcome is ReleaseOutcome.NO_RESPONSE
    assert "mailcow-3" in decision.reason


def test_no_mount_state_not_waited_for() -> None:
    decision = decide_release(202, HOLDER, report(mounted=None), expired=False)

    assert decision.outcome is ReleaseOutcome.NO_RESPONSE


def test_failed_demote_ends_wait() -> None:
    answer = report(transition_running=None, last_state="FAULT", last_outcome="failed")

    decision = decide_release(202, HOLDER, answer, expired=False)

    assert decision.outcome is ReleaseOutcome.DEMOTE_FAILED


def test_master_still_serving_waited_for() -> None:
    answer = report(vrrp_state="MASTER", transition_running=None, last_state="MASTER", last_outcome="failed")

    decision = decide_release(202, HOLDER, answer, expired=False)

    assert decision.wait


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def waiter(clock: ManualClock, fetch: Callable[[Holder, float], HolderReport], holder: Holder | None = HOLDER):
    def locate(server_id: int) -> Holder | None:
        return holder if holder is not None and server_id == holder.server_id else None

    return ReleaseWaiter(
        locate=locate, fetch=fetch, request_timeout=0.5, poll_interval=0.1, clock=clock, sleep=clock.sleep
    )


def test_waiter_polls_until_released() -> None:
    clock = ManualClock()
    timeouts: list[float] = []

    def fetch(holder: Holder, timeout: float) -> HolderReport:
        timeouts.append(timeout)
        return report(mounted=len(timeouts) < 4)

    result = waiter(clock, fetch).wait(202, Deadline.after("release", 5.0, clock), lambda: None)

    assert result.outcome is ReleaseOutcome.RELEASED
    assert len(timeouts) == 4
    assert result.seconds == pytest.approx(0.3)
    assert all(timeout == 0.5 for timeout in timeouts)


def test_waiter_stops_at_deadline() -> None:
    clock = ManualClock()
    calls: list[float] = []

    def fetch(holder: Holder, timeout: float) -> HolderReport:
        calls.append(timeout)
        return report()

    result = waiter(clock, fetch).wait(202, Deadline.after("release", 1.0, clock), lambda: None)

    assert result.outcome is ReleaseOutcome.TIMED_OUT
    assert result.seconds == pytest.approx(1.0)
    assert calls[-1] == pytest.approx(0.05)


def test_waiter_unreachable_ends_at_once() -> None:
    clock = ManualClock()

    def fetch(holder: Holder, timeout: float) -> HolderReport:
        clock.now += timeout
        raise MailcowHaError("status API of mailcow-2 (10.0.1.12:8741) timed out")

    result = waiter(clock, fetch).wait(202, Deadline.after("release", 5.0, clock), lambda: None)

    assert result.outcome is ReleaseOutcome.NO_RESPONSE
    assert result.seconds == pytest.approx(0.5)


def test_waiter_never_asks_unknown_server() -> None:
    def fetch(holder: Holder, timeout: float) -> HolderReport:
        raise AssertionError("no request may go to a server that is not a member")

    result = waiter(ManualClock(), fetch).wait(999, Deadline.after("release", 5.0), lambda: None)

    assert result.outcome is ReleaseOutcome.NOT_A_MEMBER


def test_waiter_unreadable_members_not_asked() -> None:
    def locate(server_id: int) -> Holder | None:
        raise StateError("members.json could not be read: permission denied")

    def fetch(holder: Holder, timeout: float) -> HolderReport:
        raise AssertionError("no request without a known holder")

    result = ReleaseWaiter(locate=locate, fetch=fetch, request_timeout=0.5).wait(
        202, Deadline.after("release", 5.0), lambda: None
    )

    assert result.outcome is ReleaseOutcome.NOT_A_MEMBER


def test_waiter_checkpoint_stops_wait() -> None:
    clock = ManualClock()
    checks: list[int] = []

    def checkpoint() -> None:
        checks.append(1)
        if len(checks) == 3:
            raise Superseded("keepalived reported BACKUP")

    with pytest.raises(Superseded):
        waiter(clock, lambda holder, timeout: report()).wait(202, Deadline.after("release", 5.0, clock), checkpoint)

    assert len(checks) == 3
    assert clock.now == pytest.approx(100.2)
