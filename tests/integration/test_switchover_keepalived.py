"""Switchover with real keepalived in network namespaces: the requested node, and only it, takes over.

Every node is `state BACKUP` with `nopreempt`, as rendered for production. The stand-in agents
(harness.switchoverlab) simulate promote and demote; elections, FAULT and advertisements are
keepalived's own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from harness.keepalived import keepalived_available
from harness.switchoverlab import SwitchoverLab
from mailcow_ha.errors import Refused
from mailcow_ha.ops.status import fetch_snapshots
from mailcow_ha.ops.switchover import Coordinator, SwitchoverFailed, SwitchoverTimings, plan_switchover

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(keepalived_available() is not None, reason=str(keepalived_available())),
]

TIMINGS = SwitchoverTimings(hold=30.0, fault=5.0, demote=10.0, election=8.0, promote=10.0)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[SwitchoverLab]:
    running = SwitchoverLab(tmp_path_factory.mktemp("switchover"), size=3)
    try:
        running.start()
        running.wait_master(15)
        yield running
    finally:
        running.close()


@pytest.fixture
def healthy_lab(lab: SwitchoverLab) -> SwitchoverLab:
    """The shared lab with every fault cleared and a single serving master."""
    for agent in lab:
        agent.failing = None
        agent.maintenance = False
        agent.demote_error = None
    lab.wait_master(15)
    lab.wait_states({agent.name: "BACKUP" for agent in lab if agent.vrrp_state != "MASTER"}, 10)
    return lab


def switchover(lab: SwitchoverLab, target: str | None):
    statuses = fetch_snapshots(lab.client, lab.members())
    plan = plan_switchover(statuses, target)
    return Coordinator(lab.client, requested_by="test", timings=TIMINGS).run(plan)


def test_switchover_elects_requested_node(healthy_lab):
    lab = healthy_lab
    master = lab.wait_master(5)
    target = next(agent for agent in reversed(lab.agents) if agent is not master)
    bystander = next(agent for agent in lab.agents if agent not in (master, target))
    started = time.monotonic()

    result = switchover(lab, target.name)

    assert lab.wait_master(10) is target
    assert target.promote_kinds[-1] == "switchover"
    assert result.plan.bystanders == (next(m for m in lab.members() if m.name == bystander.name),)
    lab.wait_states({master.name: "BACKUP", bystander.name: "BACKUP"}, 10)
    assert lab.timeline.max_serving_at_once() == 1
    gap = lab.timeline.gap(started)
    assert gap is not None
    assert result.interruption is not None
    assert set(result.steps) == {"prepare target", "hold standbys", "master demote", "election", "target promote"}


def test_higher_priority_node_does_not_take_back(healthy_lab):
    lab = healthy_lab
    lowest = lab.agents[-1]
    if lab.wait_master(5) is not lowest:
        switchover(lab, lowest.name)
    lab.wait_states({agent.name: "BACKUP" for agent in lab.agents[:-1]}, 10)

    time.sleep(3.5)

    assert lab.masters() == [lowest]
    assert lowest.serving


def test_switchover_without_target_picks_highest_priority(healthy_lab):
    lab = healthy_lab
    master = lab.wait_master(5)
    expected = min((agent for agent in lab if agent is not master), key=lambda agent: agent.vrrp.index)

    result = switchover(lab, None)

    assert result.plan.target.name == expected.name
    assert lab.wait_master(10) is expected


def test_unhealthy_target_is_refused(healthy_lab):
    lab = healthy_lab
    master = lab.wait_master(5)
    target = next(agent for agent in lab if agent is not master)
    target.failing = "containers: postfix-mailcow exited"
    lab.wait_states({target.name: "FAULT"}, 5)

    with pytest.raises(Refused) as caught:
        switchover(lab, target.name)

    assert f"{target.name} is FAULT, not BACKUP" in str(caught.value)
    assert lab.masters() == [master]


def test_target_failing_after_plan_changes_nothing(healthy_lab):
    """The target re-checks itself when asked to prepare, so a plan that went stale is refused."""
    lab = healthy_lab
    master = lab.wait_master(5)
    target = next(agent for agent in lab if agent is not master)
    plan = plan_switchover(fetch_snapshots(lab.client, lab.members()), target.name)
    target.maintenance = True

    with pytest.raises(Refused) as caught:
        Coordinator(lab.client, requested_by="test", timings=TIMINGS).run(plan)

    assert "maintenance mode" in str(caught.value)
    assert lab.masters() == [master]
    assert master.serving


def test_failed_demote_releases_holds(healthy_lab):
    lab = healthy_lab
    master = lab.wait_master(5)
    target = next(agent for agent in lab if agent is not master)
    master.demote_error = "unmount of /srv/mailcow-data failed: target is busy"

    with pytest.raises(SwitchoverFailed) as caught:
        switchover(lab, target.name)

    assert "target is busy" in str(caught.value)
    lab.wait_states({agent.name: "BACKUP" for agent in lab if agent is not master}, 10)
    assert lab.masters() == [master]
    for agent in lab:
        assert agent.participant.health_override() is None


def test_expired_hold_returns_node_to_election(healthy_lab):
    lab = healthy_lab
    master = lab.wait_master(5)
    bystander = next(agent for agent in lab if agent is not master)

    lab.client.call(
        bystander.address,
        "switchover-hold",
        {"id": "abandoned", "healthy": False, "reason": "coordinator died", "seconds": 1.0},
        timeout=5,
    )
    lab.wait_states({bystander.name: "FAULT"}, 5)

    lab.wait_states({bystander.name: "BACKUP"}, 5)
    assert bystander.participant.health_override() is None


def test_automatic_failover_still_works(healthy_lab):
    lab = healthy_lab
    master = lab.wait_master(5)

    master.failing = "containers: dovecot-mailcow exited"
    lab.wait_states({master.name: "FAULT"}, 5)
    new_master = lab.wait_master(15)

    assert new_master is not master
    assert new_master.promote_kinds[-1] == "failover"
    assert lab.timeline.max_serving_at_once() == 1
    master.failing = None
