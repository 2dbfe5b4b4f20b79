"""The agent's decisions: re-learning after a restart, the role, a failed promote, a vanished keepalived."""

from __future__ import annotations

import pytest

from mailcow_ha.agent.decisions import (
    KeepalivedWatch,
    derive_role,
    failed_promote,
    note_keepalived,
    plan_master_resume,
    plan_resume,
    plan_resync,
)
from mailcow_ha.errors import ExitCode
from mailcow_ha.failover.transitions import (
    RunningTransition,
    TransitionAction,
    TransitionOutcome,
    TransitionResult,
    TransitionStatus,
    VrrpState,
)
from mailcow_ha.health.verdict import Role

MASTER, BACKUP, FAULT, STOP = VrrpState.MASTER, VrrpState.BACKUP, VrrpState.FAULT, VrrpState.STOP


def test_resume_acts_on_newest_buffered() -> None:
    plan = plan_resume([MASTER, BACKUP, FAULT], MASTER, keepalived_running=True)

    assert plan.state is FAULT
    assert plan.submit
    assert not plan.verify_master
    assert plan.reason == "3 keepalived transition(s) waited in the FIFO; acting on the newest, FAULT"


def test_resume_without_keepalived_stops() -> None:
    plan = plan_resume([], None, keepalived_running=False)

    assert plan.state is STOP
    assert plan.submit


def test_resume_unknown_waits() -> None:
    plan = plan_resume([], None, keepalived_running=True)

    assert plan.state is None
    assert not plan.submit
    assert not plan.verify_master


def test_resume_master_verifies_first() -> None:
    plan = plan_resume([], MASTER, keepalived_running=True)

    assert plan.state is MASTER
    assert not plan.submit
    assert plan.verify_master


@pytest.mark.parametrize("state", [BACKUP, FAULT])
def test_resume_standby_demotes(state: VrrpState) -> None:
    plan = plan_resume([], state, keepalived_running=True)

    assert plan.state is state
    assert plan.submit


def test_master_resume_promotes_incomplete() -> None:
    assert plan_master_resume([]) == (False, "the master's service is complete; nothing to do")
    promote, reason = plan_master_resume(["mount: /srv is not a mount point"])
    assert promote
    assert "mount: /srv is not a mount point" in reason


def outcome(action: TransitionAction, result: TransitionResult, finished_at: float = 100.0) -> TransitionOutcome:
    state = MASTER if action is TransitionAction.PROMOTE else BACKUP
    return TransitionOutcome(state, action, result, ExitCode.OK, "volume move timed out", 90.0, finished_at)


def status(last: TransitionOutcome | None = None, *, running: bool = False, pending: bool = False) -> TransitionStatus:
    busy = RunningTransition(MASTER, TransitionAction.PROMOTE, "mount", 1.0, False) if running else None
    return TransitionStatus(MASTER, busy, MASTER if pending else None, last)


PROMOTED = outcome(TransitionAction.PROMOTE, TransitionResult.SUCCEEDED)
FAILED = outcome(TransitionAction.PROMOTE, TransitionResult.FAILED)
DEMOTED = outcome(TransitionAction.DEMOTE, TransitionResult.SUCCEEDED)


@pytest.mark.parametrize(
    ("state", "transitions", "resumed", "role"),
    [
        (None, status(PROMOTED), False, Role.UNKNOWN),
        (MASTER, status(PROMOTED, running=True), False, Role.TRANSITION),
        (BACKUP, status(DEMOTED, pending=True), False, Role.TRANSITION),
        (MASTER, status(PROMOTED), False, Role.MASTER),
        (MASTER, status(FAILED), False, Role.TRANSITION),
        (MASTER, status(DEMOTED), False, Role.TRANSITION),
        (MASTER, status(), True, Role.MASTER),
        (MASTER, status(), False, Role.TRANSITION),
        (BACKUP, status(PROMOTED), False, Role.STANDBY),
        (FAULT, status(), False, Role.STANDBY),
        (STOP, status(DEMOTED), False, Role.STANDBY),
    ],
)
def test_derive_role(state: VrrpState | None, transitions: TransitionStatus, resumed: bool, role: Role) -> None:
    assert derive_role(state, transitions, resumed_master=resumed) is role


def test_derive_role_while_verifying_master() -> None:
    assert derive_role(MASTER, status(), resumed_master=False, verifying_master=True) is Role.MASTER
    assert derive_role(MASTER, status(FAILED), resumed_master=False, verifying_master=True) is Role.MASTER
    assert derive_role(MASTER, status(running=True), resumed_master=False, verifying_master=True) is Role.TRANSITION
    assert derive_role(BACKUP, status(), resumed_master=False, verifying_master=True) is Role.STANDBY


@pytest.mark.parametrize(
    ("known", "dumped", "quiet", "expected"),
    [
        (BACKUP, MASTER, True, (True, False, "keepalived is MASTER, but the agent last saw BACKUP")),
        (MASTER, FAULT, True, (True, False, "keepalived is FAULT, but the agent last saw MASTER")),
        (None, BACKUP, True, (True, False, "keepalived is BACKUP, but the agent last saw no state")),
        (MASTER, MASTER, True, (False, False, "keepalived is MASTER, as the agent last saw")),
        (BACKUP, MASTER, False, (False, True, "a keepalived message arrived while the dump was taken")),
        (BACKUP, None, True, (False, False, "keepalived's data dump names no state for the instance")),
    ],
)
def test_plan_resync(
    known: VrrpState | None, dumped: VrrpState | None, quiet: bool, expected: tuple[bool, bool, str]
) -> None:
    act, retry, reason = expected

    plan = plan_resync(known, dumped, fifo_quiet=quiet)

    assert plan.act is act
    assert plan.retry is retry
    assert plan.reason.startswith(reason)


def test_failed_promote_held_for_a_while() -> None:
    assert failed_promote(status(FAILED), now=150.0, hold=60.0) == "volume move timed out"
    assert failed_promote(status(FAILED), now=161.0, hold=60.0) is None
    refused = outcome(TransitionAction.PROMOTE, TransitionResult.REFUSED)
    assert failed_promote(status(refused), now=150.0, hold=60.0) == "volume move timed out"
    superseded = outcome(TransitionAction.PROMOTE, TransitionResult.SUPERSEDED)
    assert failed_promote(status(superseded), now=150.0, hold=60.0) is None
    failed_demote = outcome(TransitionAction.DEMOTE, TransitionResult.FAILED)
    assert failed_promote(status(failed_demote), now=150.0, hold=60.0) is None


def test_keepalived_gone_after_two_misses_once() -> None:
    watch = KeepalivedWatch()
    actions = []
    for running in (True, False, False, False, True, False, False):
        watch, act = note_keepalived(watch, running)
        actions.append(act)

    assert actions == [False, False, True, False, False, False, True]


def test_gate_promote_needs_passing_galera() -> None:
    from mailcow_ha.agent.decisions import gate_promote
    from mailcow_ha.health.verdict import GALERA, ProbeRecord, ProbeResult

    passing = ProbeRecord(ProbeResult(GALERA, True, "Synced"), 0, 3, failing=False)
    failed_once = ProbeRecord(ProbeResult(GALERA, False, "outside the primary component"), 1, 0, failing=False)
    recovering = ProbeRecord(ProbeResult(GALERA, True, "Synced"), 0, 1, failing=True)

    assert gate_promote(passing)[0]
    assert gate_promote(None)[0]
    assert gate_promote(failed_once) == (
        False,
        "the local Galera member is not usable (outside the primary component)",
    )
    assert not gate_promote(recovering)[0]
