"""Probe scheduling: fast retries after a failure, a hung probe abandoned at its deadline, role changes."""

from __future__ import annotations

import threading
import time

from mailcow_ha.config import HealthSettings
from mailcow_ha.deadline import Deadline
from mailcow_ha.health.monitor import HealthMonitor
from mailcow_ha.health.verdict import CONTAINERS, GALERA, ProbeResult, Role

SETTINGS = HealthSettings(
    interval=0.5,
    probe_timeout=0.3,
    failures_to_unhealthy=3,
    successes_to_healthy=2,
    retry_interval=0.01,
    galera_interval=1.0,
)


class ScriptedProbe:
    """Returns the scripted results in order, then repeats the last; may hang until released."""

    def __init__(self, name: str, results: list[bool], interval: float = 5.0) -> None:
        self.name = name
        self.interval = interval
        self.results = results
        self.roles: list[Role] = []
        self.hang = threading.Event()
        self.release = threading.Event()

    def check(self, role: Role, deadline: Deadline) -> ProbeResult:
        self.roles.append(role)
        if self.hang.is_set():
            self.release.wait(10)
        ok = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        return ProbeResult(self.name, ok, "fine" if ok else "broken", time.time(), 0.0)


def run_until(monitor: HealthMonitor, condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(monitor.seconds_until_due())
        monitor.run_due()


def test_failures_confirm_quickly() -> None:
    probe = ScriptedProbe(GALERA, [True, False])
    monitor = HealthMonitor([probe], SETTINGS)
    monitor.run_due()

    started = time.monotonic()
    monitor.request(GALERA)
    run_until(monitor, lambda: monitor.records[GALERA].failing)

    assert time.monotonic() - started < 0.5
    assert monitor.records[GALERA].failures == 3


def test_passing_probe_waits_its_interval() -> None:
    monitor = HealthMonitor([ScriptedProbe(GALERA, [True], interval=5.0)], SETTINGS)

    monitor.run_due()

    assert 4.0 < monitor.seconds_until_due() <= 5.0
    assert monitor.run_due() == []


def test_hung_probe_abandoned_at_deadline() -> None:
    probe = ScriptedProbe(GALERA, [True])
    probe.hang.set()
    monitor = HealthMonitor([probe], SETTINGS)

    started = time.monotonic()
    results = monitor.run_due()
    took = time.monotonic() - started
    again = monitor.run_due()

    assert 0.25 < took < 0.6
    assert results[0].detail == "timed out (the probe hung)"
    assert again == []
    assert monitor.seconds_until_due() > 0.2
    assert monitor.records[GALERA].failures == 1
    probe.release.set()
    monitor.close(timeout=5)


def test_hung_probe_counts_once_per_timeout() -> None:
    probe = ScriptedProbe(GALERA, [True])
    probe.hang.set()
    monitor = HealthMonitor([probe], SETTINGS)

    run_until(monitor, lambda: monitor.records.get(GALERA) is not None and monitor.records[GALERA].failing)

    assert monitor.records[GALERA].failures == 3
    assert monitor.records[GALERA].last.detail == "timed out (an earlier run still hangs)"
    assert len(probe.roles) == 1
    probe.release.set()
    monitor.close(timeout=5)


def test_role_change_restarts_role_probes() -> None:
    galera = ScriptedProbe(GALERA, [True])
    containers = ScriptedProbe(CONTAINERS, [True])
    monitor = HealthMonitor([galera, containers], SETTINGS)
    monitor.run_due()

    changed = monitor.set_role(Role.MASTER)
    unchanged = monitor.set_role(Role.MASTER)

    assert changed
    assert not unchanged
    assert set(monitor.records) == {GALERA}
    assert [result.name for result in monitor.run_due()] == [CONTAINERS]
    assert containers.roles == [Role.UNKNOWN, Role.MASTER]


def test_initially_failing_needs_successes() -> None:
    monitor = HealthMonitor([ScriptedProbe(GALERA, [True])], SETTINGS, initially_failing=True)

    monitor.run_due()
    first = monitor.records[GALERA].failing
    run_until(monitor, lambda: not monitor.records[GALERA].failing)

    assert first
    assert monitor.records[GALERA].successes == 2


def test_role_change_forgets_initial_failure() -> None:
    containers = ScriptedProbe(CONTAINERS, [True])
    monitor = HealthMonitor([containers], SETTINGS, initially_failing=True)
    monitor.run_due()
    assert monitor.records[CONTAINERS].failing

    monitor.set_role(Role.MASTER)
    monitor.run_due()

    assert not monitor.records[CONTAINERS].failing
