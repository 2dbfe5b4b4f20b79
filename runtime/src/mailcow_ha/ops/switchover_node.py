"""The node side of a switchover: health holds, the master's graceful step-down, the target's promote kind.

keepalived runs every node as `state BACKUP` with `nopreempt` and elects by priority, so it
has no setting that picks the node to elect. A switchover makes the target the only candidate instead:

1. The target is told to expect a switchover, so that its next promote is recorded as one and
   is not counted (or stopped) by the circuit breaker.
2. Every other standby reports unhealthy for a bounded time (a *hold*), which puts its VRRP
   instance into FAULT, so it cannot be elected.
3. The master holds its health at 0 while it demotes (stop containers, unmount), so keepalived
   keeps it MASTER and nobody touches the shared volume while it is still mounted. Then it
   reports unhealthy: keepalived goes FAULT and sends a priority-0 advertisement, and the only
   candidate left, the target, becomes MASTER within about one advertisement interval.
4. The coordinator releases every hold once the target is MASTER.

Holds expire by themselves, so a coordinator that dies half-way leaves the cluster to normal
elections after at most `max_hold` seconds. The agent applies `health_override()` on top of
its own verdict and runs promotes through `wrap_promote`; both are no-ops without a switchover.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailcow_ha.agent.snapshot import NodeSnapshot
from mailcow_ha.agent.statusapi import ActionInputError, StatusApi
from mailcow_ha.errors import MailcowHaError, Refused

if TYPE_CHECKING:
    from mailcow_ha.config import NodeConfig
    from mailcow_ha.failover.transitions import CancelToken, TransitionCallable
    from mailcow_ha.failover.wiring import Failover

log = logging.getLogger(__name__)

ACTION_PREPARE = "switchover-prepare"
ACTION_HOLD = "switchover-hold"
ACTION_STEP_DOWN = "switchover-step-down"
ACTION_RELEASE = "switchover-release"

MAX_HOLD = 300.0
"""Upper bound in seconds on any hold or expectation a caller may request."""


@dataclass(frozen=True)
class Hold:
    """A health verdict that overrides the agent's own until `until` (Unix time)."""

    switchover_id: str
    healthy: bool
    reason: str
    until: float


@dataclass(frozen=True)
class Expectation:
    """This node is the target of switchover `switchover_id` from `source` until `until`."""

    switchover_id: str
    source: str
    until: float


def check_target_ready(snapshot: NodeSnapshot) -> str | None:
    """Return why this node cannot take over in a switchover now, or None when it can."""
    if snapshot.vrrp_state != "BACKUP":
        return f"{snapshot.node} is {snapshot.vrrp_state}, not BACKUP"
    if not snapshot.healthy:
        return f"{snapshot.node} is unhealthy: {snapshot.reason}"
    galera = snapshot.galera
    if galera.cluster_status != "Primary" or galera.local_state != "Synced":
        state = f"{galera.cluster_status or 'unknown'}/{galera.local_state or 'unknown'}"
        return f"{snapshot.node} is not a Synced member of the primary component (Galera {state})"
    if snapshot.maintenance.active:
        return f"{snapshot.node} is in maintenance mode; run `mailcow-ha maintenance off` there first"
    if snapshot.transition is not None and snapshot.transition.running:
        return f"{snapshot.node} is running a transition to {snapshot.transition.running}"
    return None


def _text(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value or len(value) > 200:
        raise ActionInputError(f"parameter {name!r} must be a non-empty string of at most 200 characters")
    return value


def _seconds(params: Mapping[str, Any], name: str = "seconds") -> float:
    value = params.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_HOLD:
        raise ActionInputError(f"parameter {name!r} must be a number of seconds in (0, {MAX_HOLD:g}]")
    return float(value)


class SwitchoverParticipant:
    """Switchover state of one node and the status API actions that change it.

    `demote(reason)` must demote this node under the transition lock and raise a MailcowHaError
    when it cannot (see `locked_demote`).
    """

    def __init__(
        self,
        node: str,
        *,
        snapshot: Callable[[], NodeSnapshot],
        demote: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self._snapshot = snapshot
        self._demote = demote
        self._clock = clock
        self._lock = threading.Lock()
        self._hold: Hold | None = None
        self._expectation: Expectation | None = None
        self._step_down = threading.Lock()

    def register(self, api: StatusApi, *, demote_timeout: float) -> None:
        """Register the four switchover actions on the node's status API."""
        api.register_action(ACTION_PREPARE, self.prepare, summary="expect a switchover onto this node", timeout=5.0)
        api.register_action(
            ACTION_HOLD, self.hold, summary="report unhealthy for a while so this node is not elected", timeout=5.0
        )
        api.register_action(
            ACTION_STEP_DOWN,
            self.step_down,
            summary="demote gracefully, then leave MASTER",
            timeout=demote_timeout + 5.0,
        )
        api.register_action(ACTION_RELEASE, self.release, summary="end the switchover's holds", timeout=5.0)

    # --- what the agent reads -------------------------------------------------------------------

    def health_override(self) -> tuple[bool, str] | None:
        """Return the held verdict (healthy, reason) while a hold lasts, None otherwise."""
        with self._lock:
            hold = self._hold
            if hold is not None and self._clock() >= hold.until:
                log.warning("switchover %s: hold on %s expired without a release", hold.switchover_id, self.node)
                self._hold = hold = None
        return None if hold is None else (hold.healthy, hold.reason)

    def take_expectation(self) -> Expectation | None:
        """Return and clear a current switchover expectation (the promote it announced has started)."""
        with self._lock:
            expectation, self._expectation = self._expectation, None
        if expectation is not None and self._clock() >= expectation.until:
            log.warning(
                "switchover %s onto %s expired before this node became MASTER", expectation.switchover_id, self.node
            )
            return None
        return expectation

    def wrap_promote(self, automatic: TransitionCallable, planned: TransitionCallable) -> TransitionCallable:
        """Return the runner's promote: `planned` when a switchover onto this node is expected, else `automatic`."""

        def promote(token: CancelToken) -> None:
            expectation = self.take_expectation()
            if expectation is None:
                automatic(token)
                return
            token.trigger = f"switchover from {expectation.source} ({expectation.switchover_id})"
            log.info("switchover %s: promoting %s as a planned switchover", expectation.switchover_id, self.node)
            planned(token)

        return promote

    # --- the actions ----------------------------------------------------------------------------

    def prepare(self, params: Mapping[str, Any]) -> dict[str, Any]:
        switchover_id, source, seconds = _text(params, "id"), _text(params, "from"), _seconds(params)
        problem = check_target_ready(self._snapshot())
        if problem is not None:
            raise Refused(f"switchover {switchover_id} onto {self.node} rejected: {problem}")
        with self._lock:
            self._reject_other_switchover(switchover_id)
            self._expectation = Expectation(switchover_id, source, self._clock() + seconds)
        log.info("switchover %s: %s expects to take over from %s", switchover_id, self.node, source)
        return {"node": self.node, "expecting": switchover_id}

    def hold(self, params: Mapping[str, Any]) -> dict[str, Any]:
        switchover_id, reason, seconds = _text(params, "id"), _text(params, "reason"), _seconds(params)
        healthy = params.get("healthy", False)
        if not isinstance(healthy, bool):
            raise ActionInputError("parameter 'healthy' must be true or false")
        self._set_hold(Hold(switchover_id, healthy, reason, self._clock() + seconds))
        return {"node": self.node, "held": "healthy" if healthy else "unhealthy"}

    def step_down(self, params: Mapping[str, Any]) -> dict[str, Any]:
        switchover_id, target, seconds = _text(params, "id"), _text(params, "to"), _seconds(params)
        if not self._step_down.acquire(blocking=False):
            raise Refused(f"switchover {switchover_id}: {self.node} is already stepping down")
        try:
            return self._run_step_down(switchover_id, target, seconds)
        finally:
            self._step_down.release()

    def release(self, params: Mapping[str, Any]) -> dict[str, Any]:
        switchover_id = _text(params, "id")
        released = []
        with self._lock:
            if self._hold is not None and self._hold.switchover_id == switchover_id:
                self._hold = None
                released.append("hold")
            if self._expectation is not None and self._expectation.switchover_id == switchover_id:
                self._expectation = None
                released.append("expectation")
        if released:
            log.info("switchover %s: released %s on %s", switchover_id, " and ".join(released), self.node)
        return {"node": self.node, "released": released}

    def _reject_other_switchover(self, switchover_id: str) -> None:
        """Raise Refused while this node takes part in another switchover; call with the lock held.

        Two coordinators would otherwise overwrite each other's holds and expectation, and the
        release of the one that fails would lift the holds the other still relies on.
        """
        now = self._clock()
        claims = []
        if self._hold is not None:
            claims.append((self._hold.switchover_id, self._hold.until))
        if self._expectation is not None:
            claims.append((self._expectation.switchover_id, self._expectation.until))
        for other, until in claims:
            if other != switchover_id and until > now:
                raise Refused(
                    f"switchover {switchover_id} rejected: {self.node} takes part in switchover {other} for up to "
                    f"{until - now:.0f} s more; wait for it to finish and check `mailcow-ha status`"
                )

    def _set_hold(self, hold: Hold) -> None:
        with self._lock:
            self._reject_other_switchover(hold.switchover_id)
            self._hold = hold
        verdict = "healthy" if hold.healthy else "unhealthy"
        log.info(
            "switchover %s: %s reports %s for up to %.0f s: %s",
            hold.switchover_id,
            self.node,
            verdict,
            hold.until - self._clock(),
            hold.reason,
        )

    def _run_step_down(self, switchover_id: str, target: str, seconds: float) -> dict[str, Any]:
        snapshot = self._snapshot()
        if snapshot.vrrp_state != "MASTER":
            raise Refused(f"switchover {switchover_id}: {self.node} is {snapshot.vrrp_state}, not MASTER")

        self._set_hold(Hold(switchover_id, True, f"switchover to {target}: demoting", self._clock() + seconds))
        started = time.monotonic()
        try:
            self._demote(f"switchover to {target} ({switchover_id})")
        except MailcowHaError as error:
            with self._lock:
                self._hold = None
            log.error("switchover %s: demote of %s failed: %s", switchover_id, self.node, error)
            raise MailcowHaError(
                f"switchover {switchover_id}: demote of {self.node} failed: {error}; its own health check "
                "decides from here"
            ) from None
        demote_seconds = time.monotonic() - started

        self._set_hold(Hold(switchover_id, False, f"switchover to {target}", self._clock() + seconds))
        return {"node": self.node, "demote_seconds": round(demote_seconds, 3)}


def locked_demote(config: NodeConfig, failover: Failover) -> Callable[[str], None]:
    """Return a demote of this node that holds the transition lock, as `mailcow-ha demote` does."""
    from mailcow_ha.failover.lock import TransitionLock  # noqa: PLC0415 (keeps this module importable alone)
    from mailcow_ha.failover.transitions import CancelToken  # noqa: PLC0415

    def demote(reason: str) -> None:
        lock = TransitionLock.in_run_dir(config.paths.run_dir)
        lock.acquire("switchover demote", config.deadlines.transition_lock)
        try:
            failover.demoter.run(CancelToken(reason), reason=reason)
        finally:
            lock.release()

    return demote


def planned_promote(failover: Failover) -> TransitionCallable:
    """Return the promote a switchover target runs: recorded as a switchover, not counted by the breaker."""
    from mailcow_ha.failover.history import RecordKind  # noqa: PLC0415

    def promote(token: CancelToken) -> None:
        failover.promoter.run(token, kind=RecordKind.SWITCHOVER, ignore_breaker=True)

    return promote
