"""Faults that must not cause a failover, or only a bounded one: the cluster's safety rules."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from lab import faults
from lab.cluster import Lab
from lab.labnode import LabNode
from lab.restore import restore
from lab.scenario import Scenario

pytestmark = pytest.mark.lab

QUIET_PERIOD = 8.0
"""Seconds a scenario watches for a failover that must not happen (keepalived elects within about 4 s)."""


def _others(lab: Lab, node: LabNode) -> list[LabNode]:
    return [other for other in lab.nodes.values() if other is not node]


def _runtime(lab: Lab, node: LabNode, *args: str) -> str:
    return node.machine.run(lab.runtime_command(node, *args), timeout=60.0).stdout


def _breaker(lab: Lab, node: LabNode) -> dict[str, Any]:
    """Return `mailcow-ha breaker status --json` of a node (it exits 4 once the breaker refused a failover)."""
    result = node.machine.run(lab.runtime_command(node, "breaker", "status", "--json"), timeout=60.0, check=False)
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def test_maintenance_mode_blocks_failover(lab: Lab, open_scenario: Callable[[Lab], Scenario]) -> None:
    scenario = open_scenario(lab)
    master = scenario.wait_for_service()
    _runtime(lab, master, "maintenance", "on", "--reason", "lab scenario")

    fault_at = scenario.inject("postfix-mailcow crash in maintenance", lambda: faults.crash_container(master))
    time.sleep(QUIET_PERIOD)

    view = lab.view()
    assert view.mounted_on == [master.name]
    assert all(other.name not in view.serving for other in _others(lab, master))
    assert scenario.volume_attachments_since(fault_at) == []
    scenario.assert_invariants(before=fault_at, master=master)


def test_old_master_returns_without_move_back(lab: Lab, open_scenario: Callable[[Lab], Scenario]) -> None:
    scenario = open_scenario(lab)
    master = scenario.wait_for_service()
    fault_at = scenario.inject("postfix-mailcow crash", lambda: faults.crash_container(master))
    new_master = scenario.wait_for_new_master(master, timeout=90)
    settled_at = time.monotonic()

    faults.wait_for(lambda: lab.view().node(master.name).health == "0", 60, f"{master.name} healthy again")
    time.sleep(QUIET_PERIOD)

    assert lab.view().serving == [new_master.name]
    assert lab.view().mounted_on == [new_master.name]
    assert scenario.volume_attachments_since(settled_at) == []
    scenario.assert_invariants(before=fault_at, master=new_master)


def test_two_galera_members_lost_no_promote(lab: Lab, open_scenario: Callable[[Lab], Scenario]) -> None:
    scenario = open_scenario(lab)
    master = scenario.wait_for_service()
    standbys = _others(lab, master)

    def lose_two_members() -> None:
        for node in standbys:
            faults.kill_galera(node)

    fault_at = scenario.inject("Galera killed on both standbys", lose_two_members)
    faults.wait_for(lambda: not lab.view().serving, 60, "the master to stop serving without quorum")
    time.sleep(QUIET_PERIOD)

    quorum_alerts = faults.wait_for(lambda: scenario.alerts("quorum-lost"), 60, "a quorum-lost alert")

    assert quorum_alerts
    assert lab.view().serving == []
    assert lab.view().mounted_on == []
    assert scenario.volume_attachments_since(fault_at) == []
    for node in lab.nodes.values():
        status = _breaker(lab, node)
        assert status["open"] is False, f"{node.name}: {status}"
        assert status["counted"] == [], f"{node.name}: {status}"
    recovered = restore(lab)
    scenario.assert_invariants(before=fault_at, master=recovered)


def test_cloud_errors_during_promote_are_retried(lab: Lab, open_scenario: Callable[[Lab], Scenario]) -> None:
    scenario = open_scenario(lab)
    master = scenario.wait_for_service()
    lab.control.add_fault(operation="volume.attach", code="locked", count=2)
    lab.control.add_fault(operation="floating_ip.assign", rate_limit_reset_in=1.0, count=1)

    fault_at = scenario.inject("postfix-mailcow crash", lambda: faults.crash_container(master))
    new_master = scenario.wait_for_new_master(master, timeout=120)

    remaining = lab.control.request("GET", "/_fake/faults")["faults"]
    assert [fault["hits"] for fault in remaining] == [fault["count"] for fault in remaining]
    assert scenario.agent_lines("locked")
    timeline = scenario.timeline("cloud errors during promote", "postfix-mailcow killed", fault_at, master)
    print(timeline.render())
    scenario.assert_invariants(before=fault_at, master=new_master)


def test_failed_attach_action_fails_cleanly(lab: Lab, open_scenario: Callable[[Lab], Scenario]) -> None:
    scenario = open_scenario(lab)
    master = scenario.wait_for_service()
    lab.control.add_fault(operation="volume.attach", action="error", count=1)

    fault_at = scenario.inject("postfix-mailcow crash", lambda: faults.crash_container(master))
    faults.wait_for(lambda: scenario.alerts("failover-failed"), 60, "a promote to fail at the attach action")
    serving = scenario.wait_for_service(timeout=120)

    failed = scenario.alerts("failover-failed")
    assert any("volume attach" in line for _, line in failed)
    assert lab.view().serving == [serving.name]
    assert lab.view().mounted_on == [serving.name]
    scenario.assert_invariants(before=fault_at, master=serving)


def test_second_fault_in_breaker_window(lab: Lab, open_scenario: Callable[[Lab], Scenario]) -> None:
    scenario = open_scenario(lab)
    first = scenario.wait_for_service()
    second, bystander = _others(lab, first)
    # Without keepalived the bystander is no candidate, so the failovers stay between two nodes.
    faults.kill_keepalived(bystander, signal.SIGTERM)

    scenario.inject("crash on the first master", lambda: faults.crash_container(first))
    landed = scenario.wait_for_new_master(first, timeout=120)
    assert landed is second
    scenario.inject("crash on the second master", lambda: faults.crash_container(second))
    back = scenario.wait_for_new_master(second, timeout=120)
    assert back is first
    fault_at = scenario.inject("crash inside both breakers' window", lambda: faults.crash_container(first))
    time.sleep(QUIET_PERIOD)

    view = lab.view()
    assert second.name not in view.serving
    assert scenario.volume_attachments_since(fault_at + 0.5) == []
    assert scenario.alerts("breaker-tripped")
    status = _breaker(lab, second)
    assert status["open"] is True
    assert status["tripped"] is True
    recovered = restore(lab)
    scenario.assert_invariants(before=fault_at, master=recovered)
