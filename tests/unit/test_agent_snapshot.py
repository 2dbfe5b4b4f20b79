"""NodeSnapshot: JSON round trip, tolerance of newer writers, rejection of foreign data."""

from __future__ import annotations

import json

import pytest

from mailcow_ha.agent.snapshot import (
    SNAPSHOT_FORMAT,
    ContainerSnapshot,
    GaleraSnapshot,
    MaintenanceSnapshot,
    MountSnapshot,
    NodeSnapshot,
    ProbeSnapshot,
    TransitionSnapshot,
)


def full_snapshot() -> NodeSnapshot:
    return NodeSnapshot(
        cluster="c1",
        node="c1-1",
        node_index=1,
        private_ip="10.0.1.11",
        agent_version="0.1.0",
        agent_started_at=1000.0,
        taken_at=1010.0,
        vrrp_state="MASTER",
        vrrp_state_since=1001.0,
        healthy=True,
        reason="all probes pass",
        verdict_since=1002.0,
        probes=(ProbeSnapshot("galera", True, "Synced, Primary, size 3", consecutive_successes=4),),
        galera=GaleraSnapshot(True, True, "Primary", "Synced", 3, "uuid-1", 42),
        containers=(ContainerSnapshot("postfix-mailcow", "c1-postfix-1", "running", "healthy"),),
        mount=MountSnapshot("/srv/mailcow-data", True, True),
        floating_ips_expected=("203.0.113.10/32",),
        floating_ips_on_interface=("203.0.113.10/32",),
        maintenance=MaintenanceSnapshot(active=True, since=1000.0, expires_at=2000.0, reason="update"),
        transition=TransitionSnapshot(last_state="MASTER", last_outcome="ok", last_finished_at=1005.0),
        members=("c1-1", "c1-2", "c1-3"),
    )


def test_round_trip_through_json() -> None:
    snapshot = full_snapshot()

    rebuilt = NodeSnapshot.from_dict(json.loads(snapshot.to_json()))

    assert rebuilt == snapshot


def test_dict_carries_format() -> None:
    assert full_snapshot().to_dict()["format"] == SNAPSHOT_FORMAT


def test_unknown_keys_ignored() -> None:
    data = full_snapshot().to_dict()
    data["added_later"] = {"x": 1}
    data["galera"]["added_later"] = 5

    rebuilt = NodeSnapshot.from_dict(data)

    assert rebuilt == full_snapshot()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a JSON object"),
        ({"format": 99}, "unsupported format 99"),
        ({"format": SNAPSHOT_FORMAT}, "invalid field"),
        ({**full_snapshot().to_dict(), "galera": "broken"}, "invalid field"),
    ],
)
def test_foreign_data_rejected(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NodeSnapshot.from_dict(data)  # type: ignore[arg-type]
