"""The agent's pure decisions: what to do after a restart, which role the node has, when keepalived is gone.

Each function takes what the agent read and returns an action with a reason string, which the
agent logs once and tests assert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mailcow_ha.failover.transitions import TransitionAction, TransitionResult, TransitionStatus, VrrpState
from mailcow_ha.health.verdict import ProbeRecord, Role


@dataclass(frozen=True)
class ResumePlan:
    """The plan of a starting agent for keepalived's current state."""

    state: VrrpState | None
    """The state the node is in, as far as the agent can tell; None when unknown."""
    submit: bool
    """Run the transition for `state` now."""
    verify_master: bool
    """Check the master's service first and promote only if it is not complete."""
    reason: str


def plan_resume(buffered: Sequence[VrrpState], dumped: VrrpState | None, *, keepalived_running: bool) -> ResumePlan:
    """Decide how a starting agent re-learns the node's VRRP state before acting.

    `buffered` are the states keepalived wrote into the FIFO while no agent read it. No agent
    handled those transitions, so the newest one runs. Otherwise keepalived's data dump gives the state.
    A MASTER is verified first, because a healthy master needs nothing and a promote would move
    nothing but cost API calls. Any other state gets a demote, which does nothing on a node that
    serves nothing.
    """
    if buffered:
        newest = buffered[-1]
        return ResumePlan(
            newest,
            True,
            False,
            f"{len(buffered)} keepalived transition(s) waited in the FIFO; acting on the newest, {newest}",
        )
    if not keepalived_running:
        return ResumePlan(VrrpState.STOP, True, False, "keepalived is not running, so this node must serve nothing")
    if dumped is None:
        return ResumePlan(
            None, False, False, "keepalived's state is unknown (no usable data dump); waiting for its next transition"
        )
    if dumped is VrrpState.MASTER:
        return ResumePlan(dumped, False, True, "keepalived is MASTER; checking the service before acting")
    return ResumePlan(
        dumped, True, False, f"keepalived is {dumped}; demote makes sure nothing of the service runs here"
    )


def plan_master_resume(failing: Sequence[str]) -> tuple[bool, str]:
    """After a restart as MASTER: promote again only when the service is incomplete. Returns (promote, reason)."""
    if failing:
        return True, f"the master's service is incomplete ({', '.join(failing)}); promote runs again to complete it"
    return False, "the master's service is complete; nothing to do"


def derive_role(
    state: VrrpState | None, status: TransitionStatus, *, resumed_master: bool, verifying_master: bool = False
) -> Role:
    """Return what the node should look like now.

    A transition that runs or waits makes the node TRANSITION. MASTER counts as MASTER only after
    a promote succeeded, or after a restarted agent verified the running service, and while it
    verifies it (the master's probes must run for that). A failed or superseded promote leaves it
    TRANSITION until keepalived reports the state that follows.
    """
    if state is None:
        return Role.UNKNOWN
    if status.running is not None or status.pending is not None:
        return Role.TRANSITION
    if state is not VrrpState.MASTER:
        return Role.STANDBY
    last = status.last
    promoted = (
        last is not None and last.action is TransitionAction.PROMOTE and last.result is TransitionResult.SUCCEEDED
    )
    verified = last is None and resumed_master
    return Role.MASTER if promoted or verified or verifying_master else Role.TRANSITION


def failed_promote(status: TransitionStatus, *, now: float, hold: float) -> str | None:
    """Return the error of a promote that failed or was refused less than `hold` seconds ago."""
    last = status.last
    if last is None or last.action is not TransitionAction.PROMOTE:
        return None
    if last.result not in (TransitionResult.FAILED, TransitionResult.REFUSED):
        return None
    if now - last.finished_at >= hold:
        return None
    return last.message


@dataclass(frozen=True)
class KeepalivedWatch:
    """How many consecutive checks found keepalived not running."""

    misses: int = 0


def note_keepalived(watch: KeepalivedWatch, running: bool, *, misses_to_stop: int = 2) -> tuple[KeepalivedWatch, bool]:
    """Count checks that found no keepalived; return the new count and whether to act as STOP now.

    Two misses in a row are needed, so that a pid file being rewritten during a restart does not
    demote a healthy master. The action fires once per disappearance.
    """
    if running:
        return KeepalivedWatch(0), False
    misses = watch.misses + 1
    return KeepalivedWatch(misses), misses == misses_to_stop


def gate_promote(galera: ProbeRecord | None) -> tuple[bool, str]:
    """Decide whether MASTER may run a promote, from a Galera probe run just before. Returns (allow, reason).

    A node outside Galera's primary component must not become master, so a promote runs only when
    the latest Galera probe passed and the probe is not failing. This also stops a node from
    promoting in the moments before its own quorum loss is confirmed, when the whole cluster lost it.
    """
    if galera is None:
        return True, "no Galera probe configured"
    if not galera.last.ok:
        return False, f"the local Galera member is not usable ({galera.last.detail})"
    if galera.failing:
        return False, "the local Galera member is recovering and has not passed enough consecutive probes"
    return True, "the local Galera member is Synced in the primary component"


@dataclass(frozen=True)
class ResyncPlan:
    """The action for keepalived's state from a data dump, compared with the state the agent acts on."""

    act: bool
    """Act on the dumped state as if keepalived had reported it through the FIFO."""
    retry: bool
    """Ask for another dump: the FIFO delivered or contains a message newer than this dump."""
    reason: str


def plan_resync(known: VrrpState | None, dumped: VrrpState | None, *, fifo_quiet: bool) -> ResyncPlan:
    """Decide whether a dumped state shows a transition that the agent missed.

    The FIFO reports transitions in order, so a message that arrived or waits unread after the
    dump was requested is at least as new as the dump, and the dump is not used.
    """
    if dumped is None:
        return ResyncPlan(False, False, "keepalived's data dump names no state for the instance; nothing to compare")
    if not fifo_quiet:
        return ResyncPlan(False, True, "a keepalived message arrived while the dump was taken; asking again")
    if dumped is known:
        return ResyncPlan(False, False, f"keepalived is {dumped}, as the agent last saw")
    before = "no state" if known is None else str(known)
    return ResyncPlan(
        True,
        False,
        f"keepalived is {dumped}, but the agent last saw {before}: a transition was missed, acting on {dumped}",
    )
