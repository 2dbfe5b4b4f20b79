"""`status` reading the floating IP and volume holders from the fake Hetzner API through hcloud."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from harness.fakecloud.testing import FakeCloudEnv, FakeCluster, serve_fake
from harness.nodeconfig import node_config_dict
from mailcow_ha.adapters.hetzner import HetznerCloud
from mailcow_ha.agent.snapshot import GaleraSnapshot, MountSnapshot, NodeSnapshot
from mailcow_ha.config import NodeConfig, parse_config
from mailcow_ha.ops.status import CloudReader, ClusterStatus, Member, MemberStatus
from mailcow_ha.ops.statuscheck import Severity, assess

pytestmark = pytest.mark.integration


@pytest.fixture
def cloud() -> Iterator[tuple[FakeCloudEnv, FakeCluster]]:
    with serve_fake() as env:
        cluster = env.cluster(f"mcha-status-{secrets.token_hex(3)}", nodes=3, volume_on=1, ip_on=1)
        yield env, cluster


def config_for(env: FakeCloudEnv, cluster: FakeCluster, **hetzner: object) -> NodeConfig:
    section = env.hetzner_section(cluster, 1, request_timeout=2.0, poll_interval=0.05, **hetzner)
    return parse_config(
        node_config_dict(
            cluster=cluster.name,
            node={"name": f"{cluster.name}-1", "index": 1, "private_ip": cluster.private_ips[0]},
            peers=[],
            hetzner=section,
        )
    )


def members(cluster: FakeCluster) -> tuple[MemberStatus, ...]:
    result = []
    for index in (1, 2, 3):
        name = f"{cluster.name}-{index}"
        master = index == 1
        snapshot = NodeSnapshot(
            cluster=cluster.name,
            node=name,
            node_index=index,
            private_ip=cluster.private_ips[index - 1],
            agent_version="test",
            agent_started_at=0.0,
            taken_at=0.0,
            vrrp_state="MASTER" if master else "BACKUP",
            healthy=True,
            galera=GaleraSnapshot(True, True, "Primary", "Synced", 3),
            mount=MountSnapshot("/srv/mailcow-data", mounted=master, marker_ok=master),
        )
        result.append(MemberStatus(Member(name, index, cluster.private_ips[index - 1]), snapshot))
    return tuple(result)


def test_holders_named_by_server(cloud):
    env, cluster = cloud
    config = config_for(env, cluster)

    view = CloudReader(config, HetznerCloud(config.hetzner)).read()

    fip = cluster.floating_ip_ids[0]
    assert view.error is None
    assert view.floating_ips == {fip: f"{cluster.name}-1"}
    assert view.volume_holder == f"{cluster.name}-1"
    assert view.floating_ip_addresses[fip].endswith("/32")
    status = ClusterStatus(cluster.name, f"{cluster.name}-1", 0.0, members(cluster), view)
    assert assess(status).problems == ()


def test_floating_ip_moved_is_critical(cloud):
    env, cluster = cloud
    config = config_for(env, cluster)
    fip = cluster.floating_ip_ids[0]
    env.fake.set_floating_ip_server(fip, cluster.server_ids[1])
    env.fake.set_volume_server(cluster.volume_id, None)

    view = CloudReader(config, HetznerCloud(config.hetzner)).read()
    problems = assess(ClusterStatus(cluster.name, "x", 0.0, members(cluster), view)).problems

    assert [p.severity for p in problems] == [Severity.CRITICAL, Severity.CRITICAL]
    assert f"routed to {cluster.name}-2, but the MASTER is {cluster.name}-1" in problems[0].message
    assert problems[1].message == f"attached to no server, but the MASTER is {cluster.name}-1"


def test_wrong_token_reported(cloud):
    env, cluster = cloud
    config = config_for(env, cluster, token="not-the-token")

    view = CloudReader(config, HetznerCloud(config.hetzner)).read()
    problems = assess(ClusterStatus(cluster.name, "x", 0.0, members(cluster), view)).problems

    assert view.error is not None
    assert "unauthorized" in view.error
    assert "not-the-token" not in view.error
    assert problems[0].subject == "cloud API"
    assert problems[0].severity is Severity.DEGRADED
