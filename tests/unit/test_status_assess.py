"""`mailcow-ha status`: problems found from member snapshots and cloud holders, and their rendering."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from mailcow_ha.agent.snapshot import (
    BreakerSnapshot,
    ContainerSnapshot,
    GaleraSnapshot,
    MaintenanceSnapshot,
    MountSnapshot,
    NodeSnapshot,
    TransitionSnapshot,
)
from mailcow_ha.alert_ratelimit import AlertCounters
from mailcow_ha.failover.history import FailoverRecord, RecordKind, RecordOutcome, StepTiming
from mailcow_ha.ops.history import ClusterHistory, last_move, merge_records, render_history
from mailcow_ha.ops.metrics import build_metrics, escape_label, render
from mailcow_ha.ops.status import CloudStatus, ClusterStatus, Member, MemberStatus
from mailcow_ha.ops.statuscheck import Severity, assess
from mailcow_ha.ops.statusview import render_table, status_to_json

FIP = "203.0.113.10/32"
SERVICES = ("postfix-mailcow", "dovecot-mailcow")


def snapshot(name: str, state: str = "BACKUP", **overrides) -> NodeSnapshot:
    master = state == "MASTER"
    values: dict[str, Any] = {
        "cluster": "prod",
        "node": name,
        "node_index": int(name[-1]),
        "private_ip": f"10.0.1.1{name[-1]}",
        "agent_version": "test",
        "agent_started_at": 0.0,
        "taken_at": 100.0,
        "vrrp_state": state,
        "healthy": True,
        "reason": "all probes pass",
        "galera": GaleraSnapshot(
            reachable=True, ready=True, cluster_status="Primary", local_state="Synced", cluster_size=3
        ),
        "containers": tuple(
            ContainerSnapshot(service, f"{service}-1", "running" if master else "exited") for service in SERVICES
        ),
        "mount": MountSnapshot("/srv/mailcow-data", mounted=master, marker_ok=master),
        "floating_ips_expected": (FIP,),
        "floating_ips_on_interface": (FIP,) if master else (),
        "breaker": BreakerSnapshot(tripped=False),
    }
    values.update(overrides)
    return NodeSnapshot(**values)


def cluster(*snapshots: NodeSnapshot | None, cloud: CloudStatus | None = None) -> ClusterStatus:
    members = []
    for position, item in enumerate(snapshots, start=1):
        member = Member(f"node-{position}", position, f"10.0.1.1{position}")
        members.append(MemberStatus(member, item, None if item else "connection refused"))
    return ClusterStatus("prod", "node-1", 100.0, tuple(members), cloud)


def healthy_cloud(holder: str = "node-1") -> CloudStatus:
    return CloudStatus({201: holder}, {201: FIP}, 301, holder)


def healthy_cluster(**cloud_overrides) -> ClusterStatus:
    cloud = dataclasses.replace(healthy_cloud(), **cloud_overrides)
    return cluster(snapshot("node-1", "MASTER"), snapshot("node-2"), snapshot("node-3"), cloud=cloud)


def messages(status: ClusterStatus) -> list[str]:
    return [f"{p.severity} {p.subject}: {p.message}" for p in assess(status).problems]


def test_healthy_cluster_has_no_problems():
    assessment = assess(healthy_cluster())

    assert assessment.master == "node-1"
    assert assessment.problems == ()
    assert not assessment.degraded
    assert assessment.summary == "healthy"


def test_floating_ip_on_standby_is_critical():
    found = messages(healthy_cluster(floating_ips={201: "node-2"}))

    assert found == [f"critical floating IP 201 ({FIP}): routed to node-2, but the MASTER is node-1"]


def test_volume_on_standby_is_critical():
    found = messages(healthy_cluster(volume_holder="node-3"))

    assert found == ["critical volume 301: attached to node-3, but the MASTER is node-1"]


def test_unassigned_floating_ip_is_critical():
    found = messages(healthy_cluster(floating_ips={201: None}))

    assert found == [f"critical floating IP 201 ({FIP}): assigned to no server; clients cannot reach mail"]


def test_unknown_server_named_by_id():
    found = messages(healthy_cluster(volume_holder="server 999"))

    assert "attached to server 999" in found[0]


def test_no_master_is_critical():
    status = cluster(snapshot("node-1"), snapshot("node-2"), snapshot("node-3"))

    assessment = assess(status)

    assert assessment.master is None
    assert assessment.summary == "critical"
    assert "no MASTER in the cluster" in assessment.problems[0].message


def test_two_masters_is_critical():
    status = cluster(snapshot("node-1", "MASTER"), snapshot("node-2", "MASTER"), snapshot("node-3"))

    found = messages(status)

    assert "critical cluster: more than one MASTER: node-1, node-2" in found


def test_unreachable_member_is_degraded():
    status = cluster(snapshot("node-1", "MASTER"), None, snapshot("node-3"), cloud=healthy_cloud())

    assessment = assess(status)

    assert assessment.degraded
    assert [p.subject for p in assessment.problems] == ["node-2"]
    assert "connection refused" in assessment.problems[0].message


def test_volume_mounted_on_standby_is_critical():
    standby = snapshot("node-2", mount=MountSnapshot("/srv/mailcow-data", mounted=True, marker_ok=True))

    found = messages(cluster(snapshot("node-1", "MASTER"), standby, snapshot("node-3")))

    assert found[0].startswith("critical node-2: the shared volume is mounted")
    assert "mailcow-ha gc" in found[0]


def test_containers_on_standby_are_critical():
    standby = snapshot("node-3", containers=(ContainerSnapshot("postfix-mailcow", "p", "running"),))

    found = messages(cluster(snapshot("node-1", "MASTER"), snapshot("node-2"), standby))

    assert found == [
        "critical node-3: mailcow containers run on a BACKUP node (postfix-mailcow); run `mailcow-ha gc` there"
    ]


def test_master_without_volume_or_fip():
    master = snapshot(
        "node-1",
        "MASTER",
        mount=MountSnapshot("/srv/mailcow-data", mounted=False, detail="not a mount point"),
        floating_ips_on_interface=(),
    )

    found = messages(cluster(master, snapshot("node-2"), snapshot("node-3")))

    assert "critical node-1: MASTER without the shared volume: not a mount point" in found
    assert f"critical node-1: MASTER lacks floating IP(s) {FIP} on its public interface" in found


def test_galera_problems():
    outside = snapshot(
        "node-2",
        galera=GaleraSnapshot(reachable=True, ready=False, cluster_status="non-Primary", cluster_size=1),
    )
    donor = snapshot(
        "node-3",
        galera=GaleraSnapshot(
            reachable=True, ready=True, cluster_status="Primary", local_state="Donor/Desynced", cluster_size=2
        ),
    )
    master = snapshot("node-1", "MASTER", galera=dataclasses.replace(snapshot("x1").galera, cluster_size=2))

    found = messages(cluster(master, outside, donor))

    assert "degraded node-2: Galera non-Primary: outside the primary component" in found
    assert "degraded node-3: Galera Donor/Desynced" in found
    assert "degraded Galera: primary component has 2 of 3 members; one more loss may stop the database" in found


def test_fault_and_breaker_degrade():
    fault = snapshot("node-2", "FAULT", healthy=False, reason="galera: non-Primary")
    tripped = snapshot("node-3", breaker=BreakerSnapshot(tripped=True, detail="1 failover in 3600 s"))

    found = messages(cluster(snapshot("node-1", "MASTER"), fault, tripped))

    assert "degraded node-2: keepalived state FAULT: galera: non-Primary" in found
    assert any(
        line.startswith("degraded node-3: circuit breaker tripped: it refused a failover onto this node (1 failover")
        for line in found
    )
    assert any(line.startswith("degraded cluster: no standby can take over automatically if node-1") for line in found)


def test_open_master_breaker_is_fine():
    # One failover onto node-1 opens its breaker for the window: the breaker doing its job.
    master = snapshot("node-1", "MASTER", breaker=BreakerSnapshot(open=True, failovers_in_window=1))

    assessment = assess(cluster(master, snapshot("node-2"), snapshot("node-3")))

    assert assessment.problems == ()
    assert not assessment.degraded


def test_open_standby_breaker_is_notice():
    standby = snapshot("node-2", breaker=BreakerSnapshot(open=True, failovers_in_window=1, closes_at=1796420271.0))

    assessment = assess(cluster(snapshot("node-1", "MASTER"), standby, snapshot("node-3")))

    assert [(p.severity, p.subject) for p in assessment.problems] == [(Severity.NOTICE, "node-2")]
    assert "will not take over automatically until 2026-12-04 21:37:51Z" in assessment.problems[0].message
    assert not assessment.degraded


def test_no_takeover_candidate_degrades():
    open_breaker = BreakerSnapshot(open=True, failovers_in_window=1)
    status = cluster(
        snapshot("node-1", "MASTER"), snapshot("node-2", breaker=open_breaker), snapshot("node-3", breaker=open_breaker)
    )

    assessment = assess(status)

    assert assessment.degraded
    assert [p.subject for p in assessment.problems if p.severity is Severity.DEGRADED] == ["cluster"]


def test_breaker_advice_given_once():
    detail = "1 automatic failover(s) onto this node (limit 1). Find out why, then run `mailcow-ha breaker reset`"
    tripped = snapshot("node-3", breaker=BreakerSnapshot(tripped=True, detail=detail))

    [problem] = assess(cluster(snapshot("node-1", "MASTER"), snapshot("node-2"), tripped)).problems

    assert detail in problem.message
    assert problem.message.count("breaker reset") == 1


def test_maintenance_is_notice_only():
    status = cluster(
        snapshot("node-1", "MASTER", maintenance=MaintenanceSnapshot(active=True, since=1.0)),
        snapshot("node-2"),
        snapshot("node-3"),
    )

    assessment = assess(status)

    assert [p.severity for p in assessment.problems] == [Severity.NOTICE]
    assert not assessment.degraded


def test_maintenance_notice_shows_utc_time():
    status = cluster(
        snapshot("node-1", "MASTER", maintenance=MaintenanceSnapshot(active=True, since=1.0, expires_at=1796420271.0)),
        snapshot("node-2"),
        snapshot("node-3"),
    )

    [problem] = assess(status).problems

    assert "until 2026-12-04 21:37:51Z" in problem.message
    assert "1796420271" not in problem.message


def test_expired_maintenance_degrades():
    status = cluster(
        snapshot("node-1", "MASTER", maintenance=MaintenanceSnapshot(active=False, expired_unnoticed=True)),
        snapshot("node-2"),
        snapshot("node-3"),
    )

    assert assess(status).degraded


def test_failed_transition_degrades():
    transition = TransitionSnapshot(last_state="MASTER", last_outcome="failed", last_error="mount failed")

    found = messages(
        cluster(snapshot("node-1", "MASTER"), snapshot("node-2", transition=transition), snapshot("node-3"))
    )

    assert found == ["degraded node-2: last transition to MASTER failed: mount failed"]


def test_cloud_error_degrades():
    status = healthy_cluster(floating_ips={}, volume_holder=None, error="Hetzner Cloud API: unauthorized")

    found = messages(status)

    assert found == ["degraded cloud API: holders could not be read: Hetzner Cloud API: unauthorized"]


def test_problems_sorted_worst_first():
    status = cluster(
        snapshot("node-1", "MASTER", maintenance=MaintenanceSnapshot(active=True)),
        None,
        snapshot("node-3", mount=MountSnapshot("/srv/mailcow-data", mounted=True)),
    )

    severities = [p.severity for p in assess(status).problems]

    assert severities == sorted(severities, key=list(Severity).index)


def record(node: str, kind: RecordKind, started: float, outcome=RecordOutcome.SUCCEEDED, **extra) -> FailoverRecord:
    return FailoverRecord(
        id=f"{node}-{started:.0f}",
        kind=kind,
        node=node,
        reason=extra.pop("reason", "keepalived reported MASTER"),
        started_at=started,
        outcome=outcome,
        finished_at=started + 4.2,
        steps=(StepTiming("move-volume", 2.1), StepTiming("start-containers", 1.9)),
        **extra,
    )


def test_table_shows_members_cloud_and_problems():
    status = dataclasses.replace(
        healthy_cluster(volume_holder="node-3"), last_move=record("node-1", RecordKind.FAILOVER, 50.0)
    )

    text = render_table(status, assess(status))

    assert text.startswith("cluster prod: critical, master node-1, 3/3 members reachable")
    assert "node-1*  MASTER" in text
    assert "2/2 running" in text
    assert f"floating IP 201 ({FIP}) -> node-1" in text
    assert "volume 301 -> node-3" in text
    assert (
        "last failover: 1970-01-01 00:00:50Z failover onto node-1 (keepalived reported MASTER): succeeded in 4.2 s"
        in text
    )
    assert "  CRITICAL volume 301: attached to node-3, but the MASTER is node-1" in text


def test_json_view_is_serialisable():
    status = healthy_cluster()

    document = json.loads(json.dumps(status_to_json(status, assess(status))))

    assert document["master"] == "node-1"
    assert document["degraded"] is False
    assert document["members"][0]["snapshot"]["vrrp_state"] == "MASTER"
    assert document["cloud"]["volume_holder"] == "node-1"


def test_metrics_render_families():
    status = healthy_cluster(floating_ips={201: "node-2"})
    records = [record("node-1", RecordKind.FAILOVER, 10.0), record("node-2", RecordKind.SWITCHOVER, 20.0)]

    text = render(build_metrics(status, assess(status), records=records, alert_counters=AlertCounters(sent=3)))

    assert "# TYPE mailcow_ha_cluster_degraded gauge" in text
    assert 'mailcow_ha_cluster_degraded{cluster="prod"} 1' in text
    assert 'mailcow_ha_problems{cluster="prod",severity="critical"} 1' in text
    assert 'mailcow_ha_vrrp_state{node="node-1",state="MASTER"} 1' in text
    assert 'mailcow_ha_vrrp_state{node="node-2",state="MASTER"} 0' in text
    assert 'mailcow_ha_volume_mounted{node="node-1"} 1' in text
    assert 'mailcow_ha_transitions_total{kind="switchover",node="node-2",outcome="succeeded"} 1' in text
    assert 'mailcow_ha_last_failover_duration_seconds{kind="switchover",node="node-2",outcome="succeeded"} 4.2' in text
    assert 'mailcow_ha_alerts_total{node="node-1",result="sent"} 3' in text
    assert text.endswith("\n")


def test_metric_label_escaping():
    assert escape_label('a "b"\\c\nd') == 'a \\"b\\"\\\\c\\nd'


def test_history_merge_and_last_move():
    older = record("node-1", RecordKind.FAILOVER, 10.0)
    demote = record("node-1", RecordKind.DEMOTE, 30.0)
    refused = record("node-3", RecordKind.FAILOVER, 40.0, outcome=RecordOutcome.REFUSED)
    switchover = record("node-2", RecordKind.SWITCHOVER, 20.0)

    merged = merge_records([[older, demote], [switchover, refused], [older]])

    assert [r.id for r in merged] == ["node-1-10", "node-2-20", "node-1-30", "node-3-40"]
    assert last_move(merged) == switchover
    assert last_move([demote]) is None


@pytest.mark.parametrize("limit", [0, 1])
def test_history_rendering(limit):
    failed = record(
        "node-2",
        RecordKind.FAILOVER,
        20.0,
        outcome=RecordOutcome.FAILED,
        failed_step="move-volume",
        error="volume attach timed out",
    )
    history = ClusterHistory((record("node-1", RecordKind.FAILOVER, 10.0), failed), {"node-3": "timed out"})

    text = render_history(history, limit=limit)

    assert "node-2       failover        failed" in text
    assert "steps: move-volume 2.1s, start-containers 1.9s" in text
    assert "failed at move-volume: volume attach timed out" in text
    assert "history of node-3 incomplete: timed out" in text
    assert ("1 older record(s) not shown" in text) is (limit == 1)
