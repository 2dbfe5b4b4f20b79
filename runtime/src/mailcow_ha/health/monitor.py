"""Schedule the probes, keep their records, and tell the agent when the next run is due.

A probe runs every `interval` seconds while it passes. After a failed run it runs again after
`health.retry_interval`, so that the consecutive failures that turn it failing come quickly
(three runs in about a third of a second by default), and while it recovers it runs every
`health.interval`. A run that hangs counts as one failure per `health.probe_timeout`, so one
slow run does not fail the node over, but a probe that keeps hanging does. `request` makes a
probe due at once, which is how engine events trigger the container probe without waiting for
the next poll. All due probes run in parallel, each bounded by `health.probe_timeout`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from mailcow_ha.config import HealthSettings
from mailcow_ha.deadline import Clock, Deadline
from mailcow_ha.health.runner import Probe, ProbeWorker
from mailcow_ha.health.verdict import GALERA, ProbeRecord, ProbeResult, Role, record_result

log = logging.getLogger(__name__)


class HealthMonitor:
    """The probes of one node with their workers, schedule and records. Used from one thread."""

    def __init__(
        self,
        probes: Sequence[Probe],
        settings: HealthSettings,
        *,
        initially_failing: bool = False,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._initially_failing = initially_failing
        self._workers = {probe.name: ProbeWorker(probe, clock=clock, wall_clock=wall_clock) for probe in probes}
        self._next_due = dict.fromkeys(self._workers, 0.0)
        self._records: dict[str, ProbeRecord] = {}
        self._recorded: set[str] = set()
        self._role = Role.UNKNOWN

    @property
    def records(self) -> Mapping[str, ProbeRecord]:
        return dict(self._records)

    @property
    def names(self) -> frozenset[str]:
        """The names of the probes this monitor runs."""
        return frozenset(self._workers)

    @property
    def role(self) -> Role:
        return self._role

    def set_role(self, role: Role) -> bool:
        """Switch to `role`; the role's own probes start over because they now check other things.

        Returns whether the role changed. Galera checks the same in every role and keeps its record.
        """
        if role is self._role:
            return False
        log.info("health checks now for role %s (was %s)", role, self._role)
        self._role = role
        for name in list(self._records):
            if name != GALERA:
                del self._records[name]
                self._next_due[name] = 0.0
        return True

    def request(self, name: str) -> None:
        """Make probe `name` due now (for example after an engine event)."""
        if name in self._next_due:
            self._next_due[name] = 0.0

    def seconds_until_due(self) -> float:
        now = self._clock()
        return max(0.0, min(self._next_due.values(), default=self.settings.interval) - now)

    def run_due(self) -> list[ProbeResult]:
        """Run every due probe in parallel and fold the results into the records."""
        now = self._clock()
        due = [name for name, at in self._next_due.items() if at <= now]
        if not due:
            return []
        deadline = Deadline.after(f"health probes ({self.settings.probe_timeout:g} s)", self.settings.probe_timeout)
        started = {name: self._workers[name].start(self._role, deadline) for name in due}
        results = []
        for name in due:
            worker = self._workers[name]
            result = worker.result(deadline) if started[name] else worker.stuck_result()
            results.append(result)
            self._record(result)
        return results

    def _record(self, result: ProbeResult) -> None:
        previous = self._records.get(result.name)
        record = record_result(
            previous,
            result,
            failures_to_unhealthy=self.settings.failures_to_unhealthy,
            successes_to_healthy=self.settings.successes_to_healthy,
            # Only a probe's very first record inherits the track file's old verdict. After a
            # role change the probe checks something new, so it starts without a failure.
            initially_failing=self._initially_failing and result.name not in self._recorded,
        )
        self._recorded.add(result.name)
        self._records[result.name] = record
        if previous is None or previous.last.ok != result.ok:
            level = logging.INFO if result.ok else logging.WARNING
            log.log(level, "probe %s %s: %s", result.name, "passes" if result.ok else "fails", result.detail)
        if not result.ok and self._workers[result.name].stuck_for is not None:
            # The run still hangs: count the next failure only after another full timeout, so
            # one slow run is one failure and a run that hangs on counts once per timeout.
            delay = self.settings.probe_timeout
        elif not result.ok:
            delay = self.settings.retry_interval
        elif record.failing:
            delay = self.settings.interval
        else:
            delay = self._workers[result.name].probe.interval
        self._next_due[result.name] = self._clock() + delay

    def close(self, timeout: float = 0.5) -> None:
        """Stop the probe workers, waiting at most `timeout` seconds in all for runs still going."""
        deadline = self._clock() + timeout
        for worker in self._workers.values():
            worker.close(max(0.0, deadline - self._clock()))
