"""The Galera probe against a real three-member cluster: Synced, Donor/Desynced, a hung member,
and the loss of quorum after two members are killed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pymysql
import pytest

from harness.galera import GaleraCluster, GaleraNode
from mailcow_ha.adapters.galera import GaleraClient
from mailcow_ha.config import HealthSettings
from mailcow_ha.deadline import Deadline
from mailcow_ha.health.galera import GaleraProbe
from mailcow_ha.health.monitor import HealthMonitor
from mailcow_ha.health.verdict import GALERA, Role, VerdictInputs, decide_verdict

pytestmark = pytest.mark.integration

USER = "mailcow_ha_probe"
PASSWORD = "probe-password-for-tests"


@pytest.fixture
def cluster(galera: GaleraCluster) -> Iterator[GaleraCluster]:
    galera.create_user(USER, PASSWORD)
    yield galera
    galera.ensure_healthy()


def client_for(node: GaleraNode, timeout: float = 1.0) -> GaleraClient:
    return GaleraClient(node.socket, USER, PASSWORD, timeout=timeout)


def probe_for(node: GaleraNode, *, tolerance: float = 600.0, timeout: float = 1.0) -> GaleraProbe:
    return GaleraProbe(client_for(node, timeout), interval=0.2, desync_tolerance=tolerance)


def test_synced_member_passes(cluster: GaleraCluster) -> None:
    probe = probe_for(cluster.nodes[0])

    result = probe.check(Role.MASTER, Deadline.after("test", 2))

    assert result.ok, result.detail
    assert result.detail == "Synced, Primary, cluster size 3"
    assert probe.last_status is not None
    assert probe.last_status.cluster_uuid == cluster.nodes[1].status().cluster_uuid


def test_desynced_tolerated_then_failing(cluster: GaleraCluster) -> None:
    node = cluster.nodes[1]
    probe = probe_for(node, tolerance=1.0)
    node.execute("SET GLOBAL wsrep_desync = ON")
    try:
        node.wait_for(lambda status: status.local_state == "Donor/Desynced", timeout=10, what="Donor/Desynced")
        first = probe.check(Role.STANDBY, Deadline.after("test", 2))
        time.sleep(1.2)
        later = probe.check(Role.STANDBY, Deadline.after("test", 2))
    finally:
        node.execute("SET GLOBAL wsrep_desync = OFF")
    node.wait_for(lambda status: status.synced_primary, timeout=10, what="Synced again")
    after = probe.check(Role.STANDBY, Deadline.after("test", 2))

    assert first.ok
    assert first.detail.startswith("Donor/Desynced for 0 s")
    assert not later.ok
    assert later.detail == "Donor/Desynced for longer than the tolerated 1 s"
    assert after.ok


def test_hung_member_fails_at_deadline(cluster: GaleraCluster) -> None:
    node = cluster.nodes[2]
    settings = HealthSettings(probe_timeout=0.5, failures_to_unhealthy=3, retry_interval=0.05, galera_interval=0.2)
    monitor = HealthMonitor([probe_for(node, timeout=0.5)], settings)
    monitor.run_due()
    assert monitor.records[GALERA].last.ok

    node.pause()
    try:
        started = time.monotonic()
        time.sleep(monitor.seconds_until_due())
        slow = monitor.run_due()[0]
        took = time.monotonic() - started
        one_slow_run = monitor.records[GALERA].failing
        deadline = time.monotonic() + 10
        while not monitor.records[GALERA].failing and time.monotonic() < deadline:
            time.sleep(monitor.seconds_until_due())
            monitor.run_due()
        failing_after = time.monotonic() - started
    finally:
        node.resume()
        monitor.close(timeout=5)

    assert not slow.ok
    assert "timed out" in slow.detail
    assert took < 1.5
    assert not one_slow_run
    assert monitor.records[GALERA].failing
    assert failing_after < 5.0


def test_quorum_loss_fails_everywhere(cluster: GaleraCluster) -> None:
    survivor = cluster.nodes[0]
    probe = probe_for(survivor)

    cluster.nodes[1].kill()
    cluster.nodes[2].kill()
    survivor.wait_for(lambda status: status.cluster_status != "Primary", timeout=30, what="non-Primary")
    result = probe.check(Role.MASTER, Deadline.after("test", 2))
    with pytest.raises(pymysql.err.OperationalError) as rejected:
        survivor.execute("SELECT COUNT(*) FROM mysql.user")

    assert not result.ok
    assert result.quorum_lost
    assert result.detail == "outside the primary component (cluster status non-Primary, wsrep_ready OFF)"
    assert rejected.value.args[0] == 1047

    monitor = HealthMonitor([probe], HealthSettings(failures_to_unhealthy=2, retry_interval=0.05, galera_interval=0.2))
    while not monitor.records.get(GALERA) or not monitor.records[GALERA].failing:
        time.sleep(monitor.seconds_until_due())
        monitor.run_due()
    verdict = decide_verdict(VerdictInputs(role=Role.MASTER, records=monitor.records, maintenance="on until 14:00"))
    monitor.close(timeout=5)

    assert not verdict.healthy
    assert verdict.reason.startswith("galera: outside the primary component")
