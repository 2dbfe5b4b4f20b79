"""The Galera probe: the local member must be ready, in the primary component, and Synced.

A member outside the primary component is unhealthy in every role, so it can neither become nor
stay master: this is the cluster's fence against split brain. A member that is Donor/Desynced
(serving a state transfer, or desynced on purpose for a backup) is tolerated for
`desync_tolerance` seconds. A query that fails or hangs fails the probe without saying anything
about quorum.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from mailcow_ha.adapters.galera import GaleraClient, GaleraStatus
from mailcow_ha.deadline import Clock, Deadline
from mailcow_ha.errors import MailcowHaError
from mailcow_ha.health.verdict import GALERA, ProbeResult, Role

SYNCED = "Synced"
DESYNCED = "Donor/Desynced"
PRIMARY = "Primary"


@dataclass(frozen=True)
class GaleraEvaluation:
    ok: bool
    detail: str
    quorum_lost: bool = False


def evaluate_galera(status: GaleraStatus, *, desynced_for: float | None, tolerance: float) -> GaleraEvaluation:
    """Judge one status reading. `desynced_for` is how long the member has been Donor/Desynced."""
    if status.cluster_status != PRIMARY:
        return GaleraEvaluation(
            False,
            f"outside the primary component (cluster status {status.cluster_status or 'unknown'}, "
            f"wsrep_ready {'ON' if status.ready else 'OFF'})",
            quorum_lost=True,
        )
    if not status.ready:
        return GaleraEvaluation(False, "wsrep_ready is OFF in the primary component; the member rejects queries")
    if status.local_state == SYNCED:
        return GaleraEvaluation(True, f"Synced, Primary, cluster size {status.cluster_size}")
    if status.local_state == DESYNCED:
        elapsed = desynced_for or 0.0
        if elapsed <= tolerance:
            return GaleraEvaluation(True, f"Donor/Desynced for {elapsed:.0f} s, tolerated up to {tolerance:g} s")
        return GaleraEvaluation(False, f"Donor/Desynced for longer than the tolerated {tolerance:g} s")
    return GaleraEvaluation(False, f"local state {status.local_state or 'unknown'}, not Synced")


class GaleraProbe:
    """Runs the status query and tracks since when the member has been Donor/Desynced."""

    name = GALERA

    def __init__(
        self,
        client: GaleraClient,
        *,
        interval: float,
        desync_tolerance: float,
        clock: Clock = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.interval = interval
        self.desync_tolerance = desync_tolerance
        self._clock = clock
        self._wall_clock = wall_clock
        self._desynced_since: float | None = None
        self.last_status: GaleraStatus | None = None
        self.last_error: str | None = None

    def check(self, role: Role, deadline: Deadline) -> ProbeResult:
        """Query the member once; the role does not matter, every node must be in the primary component."""
        started = self._clock()
        try:
            status = self.client.status(deadline)
        except MailcowHaError as error:
            self.last_status = None
            self.last_error = str(error)
            detail = f"status query failed: {error}"
            return ProbeResult(GALERA, False, detail, self._wall_clock(), self._clock() - started)
        self.last_status = status
        self.last_error = None
        now = self._clock()
        if status.local_state == DESYNCED:
            if self._desynced_since is None:
                self._desynced_since = now
        else:
            self._desynced_since = None
        desynced_for = None if self._desynced_since is None else now - self._desynced_since
        evaluation = evaluate_galera(status, desynced_for=desynced_for, tolerance=self.desync_tolerance)
        return ProbeResult(
            GALERA,
            evaluation.ok,
            evaluation.detail,
            self._wall_clock(),
            now - started,
            quorum_lost=evaluation.quorum_lost,
        )
