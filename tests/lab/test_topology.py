"""Splits of the private network, and a cluster growing from 3 to 5 nodes while it serves."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from lab import faults
from lab.cluster import Lab, LabOptions
from lab.restore import restore
from lab.scenario import Scenario
from lab.testing import build_lab

pytestmark = pytest.mark.lab


SETTLE_PERIOD = 15.0
"""Seconds after a scale-out in which the members' peer syncs rewrite and reload keepalived.conf."""


@pytest.fixture
def growing_lab() -> Iterator[Lab]:
    """A lab of its own with 3 nodes, which the scale-out scenario grows to 5."""
    lab = build_lab(LabOptions(nodes=3))
    yield lab
    lab.down()


@pytest.fixture
def five_node_lab() -> Iterator[Lab]:
    """A lab of its own, created with 5 nodes."""
    lab = build_lab(LabOptions(nodes=5))
    yield lab
    lab.down()


def test_master_alone_in_partition_steps_down(lab: Lab, open_scenario: Callable[[Lab], Scenario]) -> None:
    scenario = open_scenario(lab)
    master = scenario.wait_for_service()

    fault_at = scenario.inject("partition 1 | 2", lambda: faults.partition(lab, [master]))
    new_master = scenario.wait_for_new_master(master, timeout=90)
    scenario.wait_for_release(master)

    timeline = scenario.timeline("partition 1 | 2", "the master alone on its side", fault_at, master)
    print(timeline.render())
    assert lab.view().mounted_on == [new_master.name]
    scenario.assert_invariants(before=fault_at, master=new_master)


def test_scale_out_three_to_five(growing_lab: Lab, open_scenario: Callable[[Lab], Scenario]) -> None:
    lab = growing_lab
    master = restore(lab)
    scenario = open_scenario(lab)
    scenario.wait_for_service()
    started = len(scenario.mail.attempts())

    added = lab.scale_out(5)

    new_ips = [node.server.private_ip for node in added]
    for node in lab.nodes.values():
        faults.wait_for(
            lambda node=node: all(address in node.paths.keepalived_conf.read_text() for address in new_ips),  # type: ignore[misc]
            60,
            f"{node.name}'s keepalived.conf to list the new members",
        )
    time.sleep(SETTLE_PERIOD)
    for node in added:
        status = node.database.status()
        assert status.synced_primary
        assert status.cluster_size == 5
    assert lab.view().serving == [master.name]
    assert scenario.vrrp.masters() == [master.server.private_ip]
    failed = [attempt for attempt in scenario.mail.attempts()[started:] if not attempt.ok]
    assert failed == []
    scenario.assert_invariants(before=scenario.mail.attempts()[-1].finished, master=master)


def test_partition_two_three_on_five(five_node_lab: Lab, open_scenario: Callable[[Lab], Scenario]) -> None:
    lab = five_node_lab
    scenario = open_scenario(lab)
    master = scenario.wait_for_service()
    minority = [master, next(node for node in lab.nodes.values() if node is not master)]

    fault_at = scenario.inject("partition 2 | 3", lambda: faults.partition(lab, minority))
    new_master = scenario.wait_for_new_master(master, timeout=120)

    assert new_master not in minority
    scenario.wait_for_release(master)
    for node in minority:
        status = node.database.try_status()
        assert status is None or status.cluster_status != "Primary"
    timeline = scenario.timeline("partition 2 | 3 on 5 nodes", "master and one standby cut off", fault_at, master)
    print(timeline.render())
    assert lab.view().mounted_on == [new_master.name]
    scenario.assert_invariants(before=fault_at, master=new_master)
    faults.heal_partition(lab)
