"""`mailcow-ha switchover`: plan and run a planned move of the service to a healthy node.

`plan_switchover` decides from the members' snapshots whether a switchover may start and onto
which node (a pure function with reasons). `Coordinator.run` drives the members' status APIs
through the steps described in `ops.switchover_node`. It prepares the target, holds the
bystanders in FAULT, lets the master demote and step down, and waits for the target to become
MASTER and finish its promote. It releases every hold at the end, also when a step fails.
The target's promote is recorded in its history as a switchover and is not counted by the
circuit breaker.

The interruption is the master's demote, one election (well under one advertisement interval,
because the master leaves with a priority-0 advertisement) and the target's promote. An
automatic failover spends failure detection instead of the demote, and detaches the volume from
a node that may still write to it.

NOTE: a switchover interrupts longer than an automatic failover when the master's clean demote
(stopping mailcow's containers, unmounting) takes longer than failure detection. That is the
price of never detaching the volume under a running mail server; docs/benchmarks.md has figures.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mailcow_ha.agent.snapshot import NodeSnapshot
from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import DeadlineExceeded, MailcowHaError, Refused
from mailcow_ha.ops.status import Member, MemberStatus
from mailcow_ha.ops.switchover_node import (
    ACTION_HOLD,
    ACTION_PREPARE,
    ACTION_RELEASE,
    ACTION_STEP_DOWN,
    check_target_ready,
)

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.1


class SwitchoverFailed(MailcowHaError):
    """A switchover step failed after the master was asked to step down; the message names the step."""


@dataclass(frozen=True)
class SwitchoverPlan:
    """The master that steps down, the target that takes over, and the bystanders held out of the election."""

    master: Member
    target: Member
    bystanders: tuple[Member, ...]
    reason: str


@dataclass(frozen=True)
class SwitchoverTimings:
    """Bounds of the coordinator's waits, in seconds."""

    hold: float = 120.0
    """How long holds and the target's expectation last if the coordinator never releases them."""
    fault: float = 5.0
    """For each bystander's keepalived to report FAULT after its hold."""
    demote: float = 120.0
    """For the master's graceful demote (containers stop, unmount)."""
    election: float = 10.0
    """For the target to become MASTER after the master stepped down."""
    promote: float = 420.0
    """For the target's promote to finish after it became MASTER."""


def plan_switchover(
    statuses: Sequence[MemberStatus], target_name: str | None, *, allow_unreachable: bool = False
) -> SwitchoverPlan:
    """Choose the master and the target, or raise Refused with the reason.

    The target must be a healthy BACKUP that is a Synced member of Galera's primary component,
    not in maintenance mode and not in a transition. Without `target_name` the eligible member
    with the lowest index (the highest keepalived priority) is chosen. Every member must be
    reachable unless `allow_unreachable`, because an unreachable member whose keepalived still
    runs cannot be held out of the election and might win it.
    """
    unreachable = [status.name for status in statuses if status.snapshot is None]
    if unreachable and not allow_unreachable:
        raise Refused(
            f"switchover rejected: {', '.join(unreachable)} unreachable; an unreachable node could win the "
            "election instead of the target. Fix it, or pass --allow-unreachable if its keepalived is stopped"
        )
    reachable = [(status.member, status.snapshot) for status in statuses if status.snapshot is not None]
    masters = [member for member, snapshot in reachable if snapshot.vrrp_state == "MASTER"]
    if len(masters) != 1:
        names = ", ".join(member.name for member in masters) or "none"
        raise Refused(f"switchover rejected: it needs exactly one MASTER, found {names}; see `mailcow-ha status`")
    master = masters[0]
    master_snapshot = next(snapshot for member, snapshot in reachable if member == master)
    _check_master(master_snapshot)

    candidates = [(member, snapshot) for member, snapshot in reachable if member != master]
    if target_name is not None:
        target, reason = _chosen_target(candidates, target_name, master)
    else:
        target, reason = _best_target(candidates)
    bystanders = tuple(status.member for status in statuses if status.member not in (master, target))
    return SwitchoverPlan(master, target, bystanders, reason)


def _check_master(snapshot: NodeSnapshot) -> None:
    if snapshot.maintenance.active:
        raise Refused(
            f"switchover rejected: {snapshot.node} (MASTER) is in maintenance mode; switch it off first so that "
            "its update is not interrupted"
        )
    if snapshot.transition is not None and snapshot.transition.running:
        raise Refused(f"switchover rejected: {snapshot.node} (MASTER) is running a transition; wait for it to end")


def _chosen_target(candidates: Sequence[tuple[Member, NodeSnapshot]], name: str, master: Member) -> tuple[Member, str]:
    if name == master.name:
        raise Refused(f"switchover rejected: {name} is already the MASTER")
    for member, snapshot in candidates:
        if member.name == name:
            problem = check_target_ready(snapshot)
            if problem is not None:
                raise Refused(f"switchover rejected: {problem}")
            return member, f"requested target {name}"
    known = ", ".join(member.name for member, _ in candidates) or "none"
    raise Refused(f"switchover rejected: {name} is not a reachable member (reachable standbys: {known})")


def _best_target(candidates: Sequence[tuple[Member, NodeSnapshot]]) -> tuple[Member, str]:
    problems = []
    for member, snapshot in sorted(candidates, key=lambda item: item[0].index):
        problem = check_target_ready(snapshot)
        if problem is None:
            return member, f"{member.name} is the eligible standby with the highest priority"
        problems.append(problem)
    raise Refused(f"switchover rejected: no standby can take over ({'; '.join(problems) or 'no standby'})")


@dataclass
class SwitchoverResult:
    """Outcome of a switchover, with the duration of each step in seconds."""

    switchover_id: str
    plan: SwitchoverPlan
    steps: dict[str, float] = field(default_factory=dict)
    interruption: float | None = None
    """From the master's demote start to the target's promote end: the time mail was not served."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.switchover_id,
            "master": self.plan.master.name,
            "target": self.plan.target.name,
            "bystanders": [member.name for member in self.plan.bystanders],
            "reason": self.plan.reason,
            "steps": {name: round(seconds, 3) for name, seconds in self.steps.items()},
            "interruption": None if self.interruption is None else round(self.interruption, 3),
        }


class Coordinator:
    """Runs one switchover through the members' status APIs."""

    def __init__(
        self,
        client: StatusClient,
        *,
        requested_by: str,
        timings: SwitchoverTimings = SwitchoverTimings(),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._requested_by = requested_by
        self._timings = timings
        self._clock = clock
        self._sleep = sleep

    def run(self, plan: SwitchoverPlan) -> SwitchoverResult:
        """Run the switchover; raise Refused before anything changed, SwitchoverFailed after."""
        result = SwitchoverResult(secrets.token_hex(4), plan)
        switchover_id = result.switchover_id
        log.info(
            "switchover %s from %s to %s requested on %s (%s)",
            switchover_id,
            plan.master.name,
            plan.target.name,
            self._requested_by,
            plan.reason,
        )
        involved = (plan.master, plan.target, *plan.bystanders)
        try:
            self._timed(result, "prepare target", lambda: self._prepare(switchover_id, plan))
            self._timed(result, "hold standbys", lambda: self._hold_bystanders(switchover_id, plan))
            interruption_started = self._clock()
            self._timed(result, "master demote", lambda: self._step_down(switchover_id, plan))
            self._timed(result, "election", lambda: self._wait_elected(plan))
            self._release(switchover_id, involved)
            self._timed(result, "target promote", lambda: self._wait_promoted(plan))
            result.interruption = self._clock() - interruption_started
        except BaseException:
            self._release(switchover_id, involved)
            raise
        log.info(
            "switchover %s done: %s is MASTER; mail was not served for %.1f s",
            switchover_id,
            plan.target.name,
            result.interruption,
        )
        return result

    def _timed(self, result: SwitchoverResult, step: str, call: Callable[[], None]) -> None:
        started = self._clock()
        try:
            call()
        finally:
            result.steps[step] = self._clock() - started

    def _prepare(self, switchover_id: str, plan: SwitchoverPlan) -> None:
        params = {"id": switchover_id, "from": plan.master.name, "seconds": self._timings.hold}
        self._client.call(plan.target.address, ACTION_PREPARE, params, timeout=5.0, node=plan.target.name)

    def _hold_bystanders(self, switchover_id: str, plan: SwitchoverPlan) -> None:
        if not plan.bystanders:
            return
        reason = f"switchover from {plan.master.name} to {plan.target.name}: kept out of the election"
        params = {"id": switchover_id, "healthy": False, "reason": reason, "seconds": self._timings.hold}

        def hold(member: Member) -> None:
            self._client.call(member.address, ACTION_HOLD, params, timeout=5.0, node=member.name)

        with ThreadPoolExecutor(max_workers=len(plan.bystanders), thread_name_prefix="switchover") as pool:
            list(pool.map(hold, plan.bystanders))
        deadline = Deadline.after("standbys entering FAULT", self._timings.fault, self._clock)
        for member in plan.bystanders:
            self._wait_state(member, {"FAULT"}, deadline, what=f"{member.name} to enter FAULT")

    def _step_down(self, switchover_id: str, plan: SwitchoverPlan) -> None:
        params = {"id": switchover_id, "to": plan.target.name, "seconds": self._timings.hold}
        try:
            self._client.call(
                plan.master.address, ACTION_STEP_DOWN, params, timeout=self._timings.demote, node=plan.master.name
            )
        except MailcowHaError as error:
            raise SwitchoverFailed(
                f"switchover to {plan.target.name} failed at the master's step-down: {error}"
            ) from None

    def _wait_elected(self, plan: SwitchoverPlan) -> None:
        deadline = Deadline.after("the target's election", self._timings.election, self._clock)
        try:
            self._wait_state(plan.target, {"MASTER"}, deadline, what=f"{plan.target.name} to become MASTER")
        except DeadlineExceeded as error:
            raise SwitchoverFailed(
                f"switchover failed: {error}; the holds are released and keepalived elects a master as after "
                "any failure; check `mailcow-ha status`"
            ) from None

    def _wait_promoted(self, plan: SwitchoverPlan) -> None:
        deadline = Deadline.after("the target's promote", self._timings.promote, self._clock)
        while True:
            snapshot = self._read(plan.target)
            if snapshot is not None:
                outcome = _promote_outcome(snapshot)
                if outcome == "done":
                    return
                if outcome is not None:
                    raise SwitchoverFailed(f"switchover failed: the promote of {plan.target.name} {outcome}")
            if deadline.expired:
                raise SwitchoverFailed(
                    f"switchover failed: {plan.target.name} did not finish its promote within "
                    f"{self._timings.promote:g} s; check `mailcow-ha status` and `mailcow-ha history`"
                )
            self._sleep(POLL_INTERVAL)

    def _wait_state(self, member: Member, states: set[str], deadline: Deadline, *, what: str) -> None:
        while True:
            snapshot = self._read(member)
            if snapshot is not None and snapshot.vrrp_state in states:
                return
            if deadline.expired:
                seen = snapshot.vrrp_state if snapshot is not None else "unreachable"
                raise DeadlineExceeded(f"timed out waiting for {what} (last seen: {seen})")
            self._sleep(POLL_INTERVAL)

    def _read(self, member: Member) -> NodeSnapshot | None:
        try:
            return self._client.status(member.address, node=member.name)
        except MailcowHaError as error:
            log.debug("switchover: status of %s unavailable: %s", member.name, error)
            return None

    def _release(self, switchover_id: str, members: Sequence[Member]) -> None:
        def release(member: Member) -> None:
            try:
                self._client.call(member.address, ACTION_RELEASE, {"id": switchover_id}, timeout=5.0, node=member.name)
            except MailcowHaError as error:
                log.warning(
                    "switchover %s: release on %s failed (%s); its hold expires within %.0f s",
                    switchover_id,
                    member.name,
                    error,
                    self._timings.hold,
                )

        with ThreadPoolExecutor(max_workers=len(members), thread_name_prefix="switchover") as pool:
            list(pool.map(release, members))


_SUCCEEDED = ("succeeded", "ok")
"""Values of TransitionSnapshot.last_outcome that mean success."""


def _promote_outcome(snapshot: NodeSnapshot) -> str | None:
    """Return "done" when the target's promote succeeded, a failure description, or None while it runs."""
    if snapshot.vrrp_state != "MASTER":
        return f"did not keep MASTER (now {snapshot.vrrp_state}): {snapshot.reason}"
    transition = snapshot.transition
    if transition is None or transition.running or transition.last_state != "MASTER":
        return None
    if transition.last_outcome in _SUCCEEDED:
        return "done"
    if transition.last_outcome is None:
        return None
    return f"ended {transition.last_outcome}: {transition.last_error or 'no error recorded'}"
