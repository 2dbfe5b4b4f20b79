"""Wait, bounded, until the shared volume's holder has unmounted it, before promote detaches it.

Detaching a volume that another node still has mounted cuts its file system off: what the old
master had not yet written to the disk is lost, and the MMP block stays active. An old master
that is alive demotes at the same time (it left MASTER before this node became MASTER), and its
unmount ends well within a second of the fault. So before the volume thread detaches the volume,
it requests the holder's status every RELEASE_POLL_INTERVAL seconds from the holder's agent, at the
private address that members.json lists for the server id the API names. It detaches when:
- the holder reports the volume not mounted (released), from a read of its mount table made
  after its last chance to mount it (see `unmount_report_problem`);
- the holder cannot be asked: its server is not a known member, it does not answer, or its
  answer is unusable (a powered-off node ends up here after one request timeout);
- the holder reports that its demote failed, so it will not release the volume;
- `deadlines.release_wait` has passed.
The floating IPs move in another thread and never wait for this.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailcow_ha.deadline import Clock, Deadline, Sleep
from mailcow_ha.errors import MailcowHaError

log = logging.getLogger(__name__)

RELEASE_POLL_INTERVAL = 0.1
"""Seconds between two status requests to the holder; each costs one request on the private network."""
MIN_REQUEST_TIMEOUT = 0.05


class ReleaseOutcome(enum.StrEnum):
    """The way the wait for the holder's release ended."""

    RELEASED = "released"
    NOT_A_MEMBER = "not-a-member"
    NO_RESPONSE = "no-response"
    DEMOTE_FAILED = "demote-failed"
    TIMED_OUT = "timed-out"


@dataclass(frozen=True)
class Holder:
    """The cluster member that the API names as the volume's holder, and where its status API is."""

    server_id: int
    name: str
    address: str


@dataclass(frozen=True)
class HolderReport:
    """The holder agent's report on the shared volume and on its own transitions."""

    node: str
    mounted: bool | None
    """Whether the shared volume is mounted there; None when the agent does not probe the mount."""
    vrrp_state: str
    transition_running: str | None
    """The VRRP state whose transition runs there now, or None."""
    last_state: str | None = None
    last_outcome: str | None = None
    """Outcome of the holder's last transition: ok, failed or superseded."""
    transition_started_at: float | None = None
    """Start time of the running transition, on the holder's wall clock."""
    last_finished_at: float | None = None
    """End time of the holder's last transition, on its wall clock."""
    mount_read_at: float | None = None
    """Time of the mount probe's latest read of the mount table, on the holder's wall clock (None before any)."""


def unmount_report_problem(report: HolderReport) -> str | None:
    """Return why the holder's "not mounted" may be out of date, or None when it can be trusted.

    The agent's mount flag comes from its mount probe, which reads the mount table every
    `health.system_interval` seconds, and only a promote mounts the volume. So "not mounted" is
    true only when no promote runs and the table was read after the running transition started, or,
    with none running, after the last one ended.
    """
    if report.transition_running == "MASTER":
        return "its promote is running and may mount the volume at any moment"
    if report.mount_read_at is None:
        return f"it has not read its mount table since its role changed (keepalived {report.vrrp_state})"
    if report.transition_running is not None:
        boundary, event = report.transition_started_at, f"its {report.transition_running} transition started"
    else:
        boundary, event = report.last_finished_at, f"its last transition ({report.last_state}) ended"
    if boundary is not None and report.mount_read_at < boundary:
        return f"it read its mount table {boundary - report.mount_read_at:.1f} s before {event}"
    return None


@dataclass(frozen=True)
class ReleaseDecision:
    wait: bool
    outcome: ReleaseOutcome | None
    """The way the wait ended; None while it goes on."""
    reason: str


@dataclass(frozen=True)
class ReleaseResult:
    outcome: ReleaseOutcome
    reason: str
    seconds: float


def decide_release(  # noqa: PLR0911
    server_id: int, holder: Holder | None, response: HolderReport | str | None, *, expired: bool
) -> ReleaseDecision:
    """Decide whether to go on waiting, given the holder's latest response (a string is the request's error)."""
    if holder is None:
        return ReleaseDecision(
            False,
            ReleaseOutcome.NOT_A_MEMBER,
            f"server {server_id} is not a member with a known address (members.json), so it cannot be asked; "
            "detaching without waiting",
        )
    described = f"{holder.name} (server {server_id}, {holder.address})"
    if response is None or isinstance(response, str):
        return ReleaseDecision(
            False,
            ReleaseOutcome.NO_RESPONSE,
            f"{described} did not respond ({response or 'no request'}); detaching now",
        )
    if response.node != holder.name:
        return ReleaseDecision(
            False,
            ReleaseOutcome.NO_RESPONSE,
            f"the status API at {holder.address} responded as {response.node!r}, not {holder.name}; detaching now",
        )
    if response.mounted is None:
        return ReleaseDecision(
            False, ReleaseOutcome.NO_RESPONSE, f"{described} does not report its mount; detaching without waiting"
        )
    if not response.mounted:
        stale = unmount_report_problem(response)
        if stale is None:
            return ReleaseDecision(False, ReleaseOutcome.RELEASED, f"{described} reports the volume unmounted")
        if expired:
            return ReleaseDecision(
                False,
                ReleaseOutcome.TIMED_OUT,
                f"{described} reported the volume unmounted, but {stale}, when the release wait ended; "
                "detaching anyway",
            )
        return ReleaseDecision(True, None, f"{described} reports the volume unmounted, but {stale}; waiting")
    state = f"keepalived {response.vrrp_state}, " + (
        f"{response.transition_running} transition running" if response.transition_running else "no transition running"
    )
    if (
        response.transition_running is None
        and response.vrrp_state != "MASTER"
        and response.last_state == response.vrrp_state
        and response.last_outcome == "failed"
    ):
        return ReleaseDecision(
            False,
            ReleaseOutcome.DEMOTE_FAILED,
            f"{described} still has the volume mounted and its demote failed ({state}); detaching without waiting",
        )
    if expired:
        return ReleaseDecision(
            False,
            ReleaseOutcome.TIMED_OUT,
            f"{described} still had the volume mounted when the release wait ended ({state}); detaching anyway",
        )
    return ReleaseDecision(True, None, f"{described} still has the volume mounted ({state}); waiting")


LocateHolder = Callable[[int], Holder | None]
"""Returns the member with this server id, or None."""
FetchReport = Callable[[Holder, float], HolderReport]
"""Requests the holder's report with the given request timeout; raises MailcowHaError when that fails."""


class ReleaseWaiter:
    """Polls the volume's holder until it released the volume, or one of the other ends of the wait."""

    def __init__(
        self,
        *,
        locate: LocateHolder,
        fetch: FetchReport,
        request_timeout: float,
        poll_interval: float = RELEASE_POLL_INTERVAL,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        self._locate = locate
        self._fetch = fetch
        self._request_timeout = request_timeout
        self._poll_interval = poll_interval
        self._clock = clock
        self._sleep = sleep

    def wait(self, server_id: int, deadline: Deadline, checkpoint: Callable[[], None]) -> ReleaseResult:
        """Wait until the holder `server_id` released the volume, or until asking it is pointless.

        `checkpoint()` runs before every request and may raise (Superseded) to stop the wait.
        """
        started = self._clock()
        try:
            holder = self._locate(server_id)
        except MailcowHaError as error:
            log.warning("the members could not be read to find server %d: %s", server_id, error)
            holder = None
        logged = ""
        while True:
            checkpoint()
            response: HolderReport | str | None = None
            if holder is not None:
                timeout = max(MIN_REQUEST_TIMEOUT, min(self._request_timeout, deadline.remaining()))
                try:
                    response = self._fetch(holder, timeout)
                except MailcowHaError as error:
                    response = str(error)
            decision = decide_release(server_id, holder, response, expired=deadline.expired)
            if decision.outcome is not None:
                result = ReleaseResult(decision.outcome, decision.reason, self._clock() - started)
                level = logging.INFO if decision.outcome is ReleaseOutcome.RELEASED else logging.WARNING
                log.log(level, "release wait ended after %.2f s, %s: %s", result.seconds, result.outcome, result.reason)
                return result
            if decision.reason != logged:
                log.info("%s", decision.reason)
                logged = decision.reason
            self._sleep(min(self._poll_interval, deadline.remaining()))
