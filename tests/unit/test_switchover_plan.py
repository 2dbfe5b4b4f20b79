"""Switchover planning (who steps down, who takes over) and the node side's holds and actions."""

from __future__ import annotations

import dataclasses

import pytest

from mailcow_ha.agent.snapshot import GaleraSnapshot, MaintenanceSnapshot, NodeSnapshot, TransitionSnapshot
from mailcow_ha.agent.statusapi import ActionInputError
from mailcow_ha.errors import MailcowHaError, Refused
from mailcow_ha.failover.transitions import CancelToken
from mailcow_ha.ops.status import Member, MemberStatus
from mailcow_ha.ops.switchover import _promote_outcome, plan_switchover
from mailcow_ha.ops.switchover_node import SwitchoverParticipant, check_target_ready


def node(index: int, state: str = "BACKUP", **overrides) -> NodeSnapshot:
    snapshot = NodeSnapshot(
        cluster="prod",
        node=f"node-{index}",
        node_index=index,
        private_ip=f"10.0.1.1{index}",
        agent_version="test",
        agent_started_at=0.0,
        taken_at=1.0,
        vrrp_state=state,
        healthy=True,
        reason="all probes pass",
        galera=GaleraSnapshot(True, True, "Primary", "Synced", 3),
    )
    return dataclasses.replace(snapshot, **overrides)


def statuses(*snapshots: NodeSnapshot | None) -> list[MemberStatus]:
    result = []
    for index, snapshot in enumerate(snapshots, start=1):
        member = Member(f"node-{index}", index, f"10.0.1.1{index}")
        result.append(MemberStatus(member, snapshot, None if snapshot else "timed out"))
    return result


def test_plan_with_named_target():
    plan = plan_switchover(statuses(node(1, "MASTER"), node(2), node(3)), "node-3")

    assert plan.master.name == "node-1"
    assert plan.target.name == "node-3"
    assert [member.name for member in plan.bystanders] == ["node-2"]
    assert plan.reason == "requested target node-3"


def test_plan_picks_lowest_index_eligible():
    unhealthy = node(2, healthy=False, reason="galera: non-Primary")

    away = node(1, maintenance=MaintenanceSnapshot(active=True))

    plan = plan_switchover(statuses(away, unhealthy, node(3, "MASTER"), node(4)), None)

    assert plan.target.name == "node-4"
    assert [member.name for member in plan.bystanders] == ["node-1", "node-2"]


def test_plan_default_target_is_node_1_when_eligible():
    plan = plan_switchover(statuses(node(1), node(2, "MASTER"), node(3)), None)

    assert plan.target.name == "node-1"
    assert "highest priority" in plan.reason


@pytest.mark.parametrize(
    ("snapshots", "target", "expected"),
    [
        ((node(1, "MASTER"), node(2), None), "node-2", "node-3 unreachable"),
        ((node(1), node(2), node(3)), None, "exactly one MASTER, found none"),
        ((node(1, "MASTER"), node(2, "MASTER"), node(3)), None, "found node-1, node-2"),
        ((node(1, "MASTER"), node(2), node(3)), "node-1", "node-1 is already the MASTER"),
        ((node(1, "MASTER"), node(2), node(3)), "node-9", "node-9 is not a reachable member"),
        ((node(1, "MASTER"), node(2, "FAULT"), node(3)), "node-2", "node-2 is FAULT, not BACKUP"),
        ((node(1, "MASTER"), node(2, healthy=False, reason="mount: mounted"), node(3)), "node-2", "unhealthy: mount"),
        (
            (node(1, "MASTER"), node(2, galera=GaleraSnapshot(True, True, "Primary", "Donor/Desynced", 3)), node(3)),
            "node-2",
            "not a Synced member of the primary component (Galera Primary/Donor/Desynced)",
        ),
        ((node(1, "MASTER"), node(2, maintenance=MaintenanceSnapshot(active=True)), node(3)), "node-2", "maintenance"),
        (
            (node(1, "MASTER", maintenance=MaintenanceSnapshot(active=True)), node(2), node(3)),
            "node-2",
            "node-1 (MASTER) is in maintenance mode",
        ),
        (
            (node(1, "MASTER", transition=TransitionSnapshot(running="MASTER")), node(2), node(3)),
            None,
            "running a transition",
        ),
        ((node(1, "MASTER"), node(2, "FAULT"), node(3, "FAULT")), None, "no standby can take over"),
    ],
)
def test_plan_rejections(snapshots, target, expected):
    with pytest.raises(Refused) as caught:
        plan_switchover(statuses(*snapshots), target)

    assert expected in str(caught.value)


def test_plan_allows_unreachable_when_asked():
    plan = plan_switchover(statuses(node(1, "MASTER"), None, node(3)), "node-3", allow_unreachable=True)

    assert [member.name for member in plan.bystanders] == ["node-2"]


def test_target_ready_when_healthy_backup():
    assert check_target_ready(node(2)) is None


@pytest.mark.parametrize(
    ("snapshot", "outcome"),
    [
        (node(2, "BACKUP"), "did not keep MASTER (now BACKUP): all probes pass"),
        (node(2, "MASTER", transition=TransitionSnapshot(running="MASTER")), None),
        (node(2, "MASTER", transition=TransitionSnapshot(last_state="BACKUP", last_outcome="succeeded")), None),
        (node(2, "MASTER", transition=TransitionSnapshot(last_state="MASTER", last_outcome="succeeded")), "done"),
        (node(2, "MASTER", transition=TransitionSnapshot(last_state="MASTER", last_outcome="ok")), "done"),
        (
            node(
                2, "MASTER", transition=TransitionSnapshot(last_state="MASTER", last_outcome="failed", last_error="x")
            ),
            "ended failed: x",
        ),
    ],
)
def test_promote_outcome(snapshot, outcome):
    assert _promote_outcome(snapshot) == outcome


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def participant(snapshot: NodeSnapshot, clock: Clock, demote=None) -> SwitchoverParticipant:
    calls: list[str] = []

    def default_demote(reason: str) -> None:
        calls.append(reason)

    return SwitchoverParticipant(snapshot.node, snapshot=lambda: snapshot, demote=demote or default_demote, clock=clock)


def test_hold_overrides_until_expiry():
    clock = Clock()
    part = participant(node(2), clock)

    part.hold({"id": "s1", "healthy": False, "reason": "kept out", "seconds": 10})

    assert part.health_override() == (False, "kept out")
    clock.now += 10
    assert part.health_override() is None


def test_release_only_matching_id():
    clock = Clock()
    part = participant(node(2), clock)
    part.hold({"id": "s1", "healthy": False, "reason": "kept out", "seconds": 10})

    assert part.release({"id": "other"}) == {"node": "node-2", "released": []}
    assert part.health_override() is not None
    assert part.release({"id": "s1"})["released"] == ["hold"]
    assert part.health_override() is None


@pytest.mark.parametrize(
    "params",
    [
        {"healthy": False, "reason": "r", "seconds": 10},
        {"id": "s1", "healthy": False, "reason": "r", "seconds": 0},
        {"id": "s1", "healthy": False, "reason": "r", "seconds": 301},
        {"id": "s1", "healthy": "no", "reason": "r", "seconds": 10},
        {"id": "s1", "healthy": False, "reason": "", "seconds": 10},
        {"id": "s1", "healthy": False, "reason": "r", "seconds": True},
    ],
)
def test_hold_rejects_bad_params(params):
    with pytest.raises(ActionInputError):
        participant(node(2), Clock()).hold(params)


def test_prepare_marks_next_promote_planned():
    clock = Clock()
    part = participant(node(3), clock)
    ran: list[str] = []
    promote = part.wrap_promote(lambda token: ran.append("automatic"), lambda token: ran.append(token.trigger))

    part.prepare({"id": "s1", "from": "node-1", "seconds": 30})
    promote(CancelToken("keepalived reported MASTER"))
    promote(CancelToken("keepalived reported MASTER"))

    assert ran == ["switchover from node-1 (s1)", "automatic"]


def test_expired_expectation_promotes_automatically():
    clock = Clock()
    part = participant(node(3), clock)
    ran: list[str] = []
    promote = part.wrap_promote(lambda token: ran.append("automatic"), lambda token: ran.append("planned"))

    part.prepare({"id": "s1", "from": "node-1", "seconds": 30})
    clock.now += 31
    promote(CancelToken())

    assert ran == ["automatic"]


def test_prepare_rejected_when_not_ready():
    part = participant(node(3, "FAULT"), Clock())

    with pytest.raises(Refused) as caught:
        part.prepare({"id": "s1", "from": "node-1", "seconds": 30})

    assert "node-3 is FAULT, not BACKUP" in str(caught.value)


def test_step_down_demotes_then_reports_unhealthy():
    clock = Clock()
    overrides_during_demote: list[tuple[bool, str] | None] = []
    part: SwitchoverParticipant

    def demote(reason: str) -> None:
        overrides_during_demote.append(part.health_override())

    part = participant(node(1, "MASTER"), clock, demote)

    result = part.step_down({"id": "s1", "to": "node-3", "seconds": 60})

    assert overrides_during_demote == [(True, "switchover to node-3: demoting")]
    assert part.health_override() == (False, "switchover to node-3")
    assert result["node"] == "node-1"


def test_step_down_rejected_on_standby():
    with pytest.raises(Refused):
        participant(node(2), Clock()).step_down({"id": "s1", "to": "node-3", "seconds": 60})


def test_failed_demote_clears_hold():
    def demote(reason: str) -> None:
        raise MailcowHaError("unmount failed: target is busy")

    part = participant(node(1, "MASTER"), Clock(), demote)

    with pytest.raises(MailcowHaError) as caught:
        part.step_down({"id": "s1", "to": "node-3", "seconds": 60})

    assert "target is busy" in str(caught.value)
    assert part.health_override() is None


def test_second_switchover_rejected_on_target():
    clock = Clock()
    part = participant(node(3), clock)
    ran: list[str] = []
    promote = part.wrap_promote(lambda token: ran.append("automatic"), lambda token: ran.append(token.trigger))
    part.prepare({"id": "s1", "from": "node-1", "seconds": 30})

    with pytest.raises(Refused) as caught:
        part.prepare({"id": "s2", "from": "node-1", "seconds": 30})
    part.release({"id": "s2"})
    promote(CancelToken("keepalived reported MASTER"))

    assert "node-3 takes part in switchover s1 for up to 30 s more" in str(caught.value)
    assert ran == ["switchover from node-1 (s1)"]


def test_second_switchover_cannot_move_hold():
    part = participant(node(2), Clock())
    part.hold({"id": "s1", "healthy": False, "reason": "kept out by s1", "seconds": 30})

    with pytest.raises(Refused, match="switchover s1"):
        part.hold({"id": "s2", "healthy": False, "reason": "kept out by s2", "seconds": 30})
    with pytest.raises(Refused, match="switchover s1"):
        part.prepare({"id": "s2", "from": "node-1", "seconds": 30})
    part.release({"id": "s2"})

    assert part.health_override() == (False, "kept out by s1")


def test_step_down_rejected_during_other_switchover():
    demoted: list[str] = []
    part = participant(node(1, "MASTER"), Clock(), demoted.append)
    part.hold({"id": "s1", "healthy": True, "reason": "held by s1", "seconds": 30})

    with pytest.raises(Refused, match="switchover s1"):
        part.step_down({"id": "s2", "to": "node-3", "seconds": 60})

    assert demoted == []
    assert part.health_override() == (True, "held by s1")


def test_same_switchover_may_repeat_its_calls():
    part = participant(node(3), Clock())

    part.prepare({"id": "s1", "from": "node-1", "seconds": 30})
    part.prepare({"id": "s1", "from": "node-1", "seconds": 30})
    part.hold({"id": "s1", "healthy": False, "reason": "r", "seconds": 30})

    assert part.health_override() == (False, "r")


def test_expired_claim_allows_next_switchover():
    clock = Clock()
    part = participant(node(2), clock)
    part.hold({"id": "s1", "healthy": False, "reason": "kept out by s1", "seconds": 10})
    clock.now += 10

    part.hold({"id": "s2", "healthy": False, "reason": "kept out by s2", "seconds": 10})

    assert part.health_override() == (False, "kept out by s2")
