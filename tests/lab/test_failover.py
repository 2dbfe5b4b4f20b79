"""A failing master is replaced: the failures that must make another node take over."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from lab import faults
from lab.cluster import Lab
from lab.scenario import Scenario

pytestmark = pytest.mark.lab


def test_container_crash_fails_over(lab: Lab, open_scenario: Callable[[Lab], Scenario]) -> None:
    scenario = open_scenario(lab)
    master = scenario.wait_for_service()

    fault_at = scenario.inject("postfix-mailcow crash", lambda: faults.crash_container(master))
    new_master = scenario.wait_for_new_master(master, timeout=60)

    timeline = scenario.timeline("container crash", "postfix-mailcow killed", fault_at, master)
    print(timeline.render())
    assert new_master is not master
    assert timeline.mark("floating IP moved").at is not None
    assert timeline.mark("volume moved").at is not None
    scenario.wait_for_release(master)
    # The old master demotes at once, so the new one detaches the volume only after its clean
    # unmount, and the MMP block needs no clearing.
    handover = scenario.handover(new_master)
    assert handover["release wait"].startswith("released:")
    assert handover["multi-mount protection"].startswith("mount:")
    scenario.assert_invariants(before=fault_at, master=new_master)


def test_master_power_off_fails_over(lab: Lab, open_scenario: Callable[[Lab], Scenario]) -> None:
    scenario = open_scenario(lab)
    master = scenario.wait_for_service()

    fault_at = scenario.inject("power off", lambda: faults.power_off(lab, master))
    new_master = scenario.wait_for_new_master(master, timeout=60)

    timeline = scenario.timeline("node power-off", "the master powered off", fault_at, master)
    print(timeline.render())
    assert new_master is not master
    assert timeline.mark("volume moved").at is not None
    # A powered-off holder cannot respond, and it left the MMP block active. It is a member of the
    # cluster, which the API's detach has fenced, so the block is cleared.
    handover = scenario.handover(new_master)
    assert handover["release wait"].startswith("no-response:")
    assert handover["multi-mount protection"].startswith("clear:")
    scenario.assert_invariants(before=fault_at, master=new_master)


def test_agent_crash_keeps_master(lab: Lab, open_scenario: Callable[[Lab], Scenario]) -> None:
    scenario = open_scenario(lab)
    master = scenario.wait_for_service()
    killed = faults.crash_agent(master)

    fault_at = time.monotonic()
    restarted = faults.wait_for(
        lambda: [pid for pid in master.machine.processes("mailcow-ha-agen") if pid not in killed],
        timeout=20,
        what=f"the agent on {master.name} to be restarted",
    )
    time.sleep(5)

    assert restarted
    assert lab.view().serving == [master.name]
    assert lab.view().mounted_on == [master.name]
    failed = [attempt for attempt in scenario.mail.attempts() if attempt.started >= fault_at and not attempt.ok]
    assert failed == []
    scenario.assert_invariants(before=fault_at, master=master)


def test_keepalived_kill_fails_over(lab: Lab, open_scenario: Callable[[Lab], Scenario]) -> None:
    scenario = open_scenario(lab)
    master = scenario.wait_for_service()

    fault_at = scenario.inject("keepalived SIGKILL", lambda: faults.kill_keepalived(master))
    new_master = scenario.wait_for_new_master(master, timeout=90)

    timeline = scenario.timeline("keepalived SIGKILL", "every keepalived process killed", fault_at, master)
    print(timeline.render())
    assert new_master is not master
    scenario.wait_for_release(master)
    scenario.assert_invariants(before=fault_at, master=new_master)


def test_private_link_down_fails_over(lab: Lab, open_scenario: Callable[[Lab], Scenario]) -> None:
    scenario = open_scenario(lab)
    master = scenario.wait_for_service()

    fault_at = scenario.inject("private link down", lambda: faults.set_private_link(lab, master, up=False))
    new_master = scenario.wait_for_new_master(master, timeout=90)
    faults.wait_for(
        lambda: master.database.try_status() is not None and master.database.try_status().cluster_status != "Primary",  # type: ignore[union-attr]
        timeout=30,
        what=f"Galera on {master.name} to leave the Primary component",
    )

    timeline = scenario.timeline("private link down", "private link of the master down", fault_at, master)
    print(timeline.render())
    assert new_master is not master
    scenario.wait_for_release(master)
    assert lab.view().mounted_on == [new_master.name]
    scenario.assert_invariants(before=fault_at, master=new_master)
