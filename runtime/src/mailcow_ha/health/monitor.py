"""Schedule the probes, keep their records, and tell the agent when the next run is due.

A probe runs every `interval` seconds while it passes. After a failed run it runs again after
`health.retry_interval`, so that the consecutive failures that turn it failing come quickly
(three runs in about a third of a second by default), and while it recovers it runs every
`health.interval`. A run that hangs counts as one failure per `health.probe_timeout`, so one
slow run does not fail the node over, but a probe that keeps hanging does. `request` makes a
probe due at once, which is how engine events trigger the container probe without waiting for
the next poll. All due probes run in parallel, each bounded by `health.probe_timeout`.

The agent's main loop calls `poll`, which never waits: it starts the due probes and records the
runs that finished or passed their deadline. The workers call `on_result` when a run ends, so
the loop wakes for it. `run_due` waits for the runs instead, for callers that may block.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mailcow_ha.config import HealthSettings
from mailcow_ha.deadline import Clock, Deadline
from mailcow_ha.health.runner import Probe, ProbeWorker
from mailcow_ha.health.verdict import GALERA, ProbeRecord, ProbeResult, Role, record_result

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Flight:
    """A probe run that was started and not recorded yet."""

    deadline: Deadline
    role: Role
    """The role the run checks; a result for a role the node no longer has is dropped."""


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
        on_result: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._initially_failing = initially_failing
        self._workers = {
            probe.name: ProbeWorker(probe, clock=clock, wall_clock=wall_clock, on_result=on_result) for probe in probes
        }
        self._next_due = dict.fromkeys(self._workers, 0.0)
        self._records: dict[str, ProbeRecord] = {}
        self._recorded: set[str] = set()
        self._completed = dict.fromkeys(self._workers, 0)
        self._in_flight: dict[str, _Flight] = {}
        self._role = Role.UNKNOWN

    def notify(self, on_result: Callable[[], None]) -> None:
        """Have every worker call `on_result` (on its own thread) when a run ends."""
        for worker in self._workers.values():
            worker.on_result = on_result

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

    def request_fresh(self, name: str) -> int:
        """Make probe `name` due now and return the count `completed(name)` reaches with the first new run.

        A run already in flight started before the request, so its result does not count.
        """
        self.request(name)
        return self._completed[name] + (2 if name in self._in_flight else 1)

    def completed(self, name: str) -> int:
        """Return how many results of probe `name` were recorded, including failures for hung runs."""
        return self._completed[name]

    def seconds_until_due(self) -> float:
        """Return the seconds until a probe is due or a run in flight reaches its deadline."""
        now = self._clock()
        waiting = [at for name, at in self._next_due.items() if name not in self._in_flight]
        waiting.extend(now + flight.deadline.remaining() for flight in self._in_flight.values())
        return max(0.0, min(waiting, default=now + self.settings.interval) - now)

    def poll(self) -> list[ProbeResult]:
        """Record the runs that finished or passed their deadline and start the due probes; never wait."""
        results = self._collect(wait=False)
        now = self._clock()
        due = [name for name, at in self._next_due.items() if at <= now and name not in self._in_flight]
        if not due:
            return results
        timeout = self.settings.probe_timeout
        deadline = Deadline.after(f"health probes ({timeout:g} s)", timeout, self._clock)
        for name in due:
            worker = self._workers[name]
            if worker.start(self._role, deadline):
                self._in_flight[name] = _Flight(deadline, self._role)
            else:
                result = worker.stuck_result()
                results.append(result)
                self._record(result)
        return results

    def run_due(self) -> list[ProbeResult]:
        """Run every due probe in parallel, wait for the runs until their deadline, and record the results."""
        results = self.poll()
        results.extend(self._collect(wait=True))
        return results

    def _collect(self, *, wait: bool) -> list[ProbeResult]:
        results = []
        for name, flight in list(self._in_flight.items()):
            worker = self._workers[name]
            if wait:
                result: ProbeResult | None = worker.result(flight.deadline)
            else:
                result = worker.take_result()
                if result is None and flight.deadline.expired:
                    result = worker.timed_out_result()
            if result is None:
                continue
            del self._in_flight[name]
            if flight.role is not self._role:
                log.debug("dropped a run of probe %s for role %s: the role is now %s", name, flight.role, self._role)
                continue
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
        self._completed[result.name] += 1
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
