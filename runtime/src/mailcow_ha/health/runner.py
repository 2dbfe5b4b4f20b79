"""Run probes on worker threads so that a probe that hangs is abandoned at its deadline.

Each probe has one long-lived worker thread. `start` hands the worker a run. `result` waits for
it until the deadline, and `take_result` returns it without waiting, for callers that must not
block (the agent's main loop). A run still going at the deadline counts as a failure. While that
worker stays stuck, its probe fails at once without starting another thread, so hung runs never
pile up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from mailcow_ha.deadline import Clock, Deadline
from mailcow_ha.health.verdict import ProbeResult, Role

log = logging.getLogger(__name__)


class Probe(Protocol):
    """One health check. `check` must respect the deadline where it can; the worker bounds it anyway."""

    name: str
    interval: float
    """Seconds between two runs while the probe passes."""

    def check(self, role: Role, deadline: Deadline) -> ProbeResult: ...


class ProbeWorker:
    """The thread that runs one probe, one run at a time."""

    def __init__(
        self,
        probe: Probe,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        on_result: Callable[[], None] | None = None,
    ) -> None:
        self.probe = probe
        self._clock = clock
        self._wall_clock = wall_clock
        self.on_result = on_result
        """Called on the worker thread after each run, so a caller that does not wait learns of the result."""
        self._condition = threading.Condition()
        self._job: tuple[Role, Deadline] | None = None
        self._result: ProbeResult | None = None
        self._busy_since: float | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._work, name=f"mailcow-ha-probe-{probe.name}", daemon=True)
        self._thread.start()

    @property
    def stuck_for(self) -> float | None:
        """Seconds the current run has taken, None when the worker is idle."""
        with self._condition:
            return None if self._busy_since is None else self._clock() - self._busy_since

    def start(self, role: Role, deadline: Deadline) -> bool:
        """Hand the worker a run; return False when an earlier run still has not returned."""
        with self._condition:
            if self._busy_since is not None:
                return False
            self._job = (role, deadline)
            self._result = None
            self._busy_since = self._clock()
            self._condition.notify_all()
            return True

    def result(self, deadline: Deadline) -> ProbeResult:
        """Wait for the run handed over by `start` until `deadline`; a run still going counts as failed."""
        with self._condition:
            while self._result is None and not deadline.expired:
                self._condition.wait(deadline.remaining())
            if self._result is not None:
                result, self._result = self._result, None
                return result
            took = 0.0 if self._busy_since is None else self._clock() - self._busy_since
        log.warning("probe %s did not return within %.1f s; abandoned, it counts as failed", self.probe.name, took)
        return ProbeResult(self.probe.name, False, "timed out (the probe hung)", self._wall_clock(), took)

    def take_result(self) -> ProbeResult | None:
        """Return the result of the run handed over by `start` if it has finished, without waiting."""
        with self._condition:
            result, self._result = self._result, None
            return result

    def timed_out_result(self) -> ProbeResult:
        """Return a failed result for a run still going at its deadline; the worker stays busy with it."""
        took = self.stuck_for or 0.0
        log.warning("probe %s did not return within %.1f s; abandoned, it counts as failed", self.probe.name, took)
        return ProbeResult(self.probe.name, False, "timed out (the probe hung)", self._wall_clock(), took)

    def stuck_result(self) -> ProbeResult:
        """Return a failed result for a run that could not start because the previous one still hangs."""
        return ProbeResult(
            self.probe.name, False, "timed out (an earlier run still hangs)", self._wall_clock(), self.stuck_for or 0.0
        )

    def close(self, timeout: float = 0.0) -> None:
        """Stop the worker after its current run; wait up to `timeout` seconds for a run still going."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._condition:
                while self._job is None and not self._closing:
                    self._condition.wait()
                if self._closing:
                    return
                assert self._job is not None
                role, deadline = self._job
                self._job = None
            started = self._clock()
            try:
                result = self.probe.check(role, deadline)
            except Exception as error:
                log.exception("probe %s raised an unexpected error", self.probe.name)
                result = ProbeResult(
                    self.probe.name, False, f"probe error: {type(error).__name__}", self._wall_clock(), 0.0
                )
            with self._condition:
                self._result = result
                self._busy_since = None
                self._condition.notify_all()
            if self.on_result is not None:
                try:
                    self.on_result()
                except Exception:
                    log.exception("reporting the result of probe %s failed", self.probe.name)
            took = self._clock() - started
            if deadline.expired:
                log.info("probe %s returned after its deadline (%.1f s)", self.probe.name, took)
