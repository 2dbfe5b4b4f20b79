"""Membership sync against the fake Hetzner API and a running keepalived in a namespace:
one API request per sync, files rewritten and keepalived reloaded only when the members change."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.fakecloud.testing import FakeCloudEnv, serve_fake
from harness.keepalived import VrrpCluster, keepalived_available
from harness.nodeconfig import node_config_dict
from mailcow_ha.adapters.hetzner import HetznerCloud
from mailcow_ha.adapters.keepalived import KeepalivedProcess
from mailcow_ha.agent.membership import MembershipSync, load_membership
from mailcow_ha.config import NodeConfig, parse_config
from mailcow_ha.deadline import Deadline

pytestmark = pytest.mark.integration

CLUSTER = "member-test"


@pytest.fixture
def vrrp(tmp_path: Path) -> Iterator[VrrpCluster]:
    reason = keepalived_available()
    if reason is not None:
        pytest.skip(reason)
    cluster = VrrpCluster(3, tmp_path)
    try:
        cluster.start()
        cluster.wait_master(timeout=15)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cloud() -> Iterator[FakeCloudEnv]:
    with serve_fake() as env:
        yield env


def add_server(cloud: FakeCloudEnv, network_id: int, index: int, address: str) -> int:
    server = cloud.fake.create_server(
        f"{CLUSTER}-{index}",
        labels={"cluster": CLUSTER, "role": "node", "node": str(index)},
        network_id=network_id,
        private_ip=address,
    )
    return server.id


def node_config(vrrp: VrrpCluster, cloud: FakeCloudEnv, **keepalived: object) -> NodeConfig:
    node = vrrp.nodes[0]
    document = node_config_dict(
        cluster=CLUSTER,
        node={"name": f"{CLUSTER}-1", "index": 1, "private_ip": node.address, "private_interface": "eth0"},
        peers=[],
        hetzner={
            "token": cloud.token,
            "endpoint": cloud.url,
            "floating_ip_ids": [1],
            "floating_ips": ["203.0.113.10/32"],
            "shared_volume_id": 1,
        },
        galera={"password": "x", "cluster_name": CLUSTER},
        keepalived={
            "priority": 250,
            "script_user": "nobody",
            "script_group": "nogroup",
            "agent_process": None,
            **keepalived,
        },
        paths={
            "state_dir": str(node.work_dir / "state"),
            "keepalived_fifo": str(node.fifo),
            "health_file": str(node.health_file),
            "keepalived_conf": str(node.daemon.config_path),
            "keepalived_pid_file": str(node.daemon.pid_file),
            "keepalived_data_file": str(node.daemon.data_file),
            "galera_conf": str(node.work_dir / "galera.cnf"),
        },
    )
    return parse_config(document)


def peers_in_dump(process: KeepalivedProcess) -> str:
    """Ask the running keepalived for its data dump and return its unicast peer section."""
    process.data_file.unlink(missing_ok=True)
    pid = process.pid()
    assert pid is not None
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if process.data_file.exists() and "------< VRRP Sockpool" in process.data_file.read_text():
            text = process.data_file.read_text()
            return text.split("Unicast Peer :", 1)[1].split("Unicast checksum", 1)[0]
        time.sleep(0.05)
    raise AssertionError("keepalived wrote no data dump")


def wait_for_reloads(count: Callable[[], int], expected: int) -> None:
    deadline = time.monotonic() + 5
    while count() < expected:
        assert time.monotonic() < deadline, f"keepalived did not complete reload {expected}"
        time.sleep(0.05)


def test_sync_learns_new_member(vrrp: VrrpCluster, cloud: FakeCloudEnv) -> None:
    network = cloud.fake.create_network("member-net", "10.0.0.0/8", subnet=f"{vrrp.subnet_prefix}.0/24")
    for node in vrrp.nodes:
        add_server(cloud, network.id, node.index, node.address)
    config = node_config(vrrp, cloud)
    keepalived = KeepalivedProcess(config.paths.keepalived_pid_file, config.paths.keepalived_data_file)
    sync = MembershipSync(config, HetznerCloud(config.hetzner), keepalived=keepalived)

    def reloads() -> int:
        return vrrp.nodes[0].daemon.log_text().count("Reload complete")

    mark = cloud.fake.requests.mark()
    first = sync.sync(Deadline.after("sync", 30))
    first_requests = cloud.fake.requests.counts(mark)
    wait_for_reloads(reloads, 1)
    second = sync.sync(Deadline.after("sync", 30))
    time.sleep(0.5)
    reloads_after_second = reloads()

    new_address = f"{vrrp.subnet_prefix}.14"
    add_server(cloud, network.id, 4, new_address)
    third = sync.sync(Deadline.after("sync", 30))
    wait_for_reloads(reloads, 2)
    peers = peers_in_dump(keepalived)

    assert first_requests == {"GET /servers": 1}
    assert first.updated
    assert first.reloaded
    assert not second.updated
    assert not second.reloaded
    assert third.updated
    assert third.reloaded
    assert reloads_after_second == 1
    assert reloads() == 2
    assert new_address in peers
    assert vrrp.nodes[1].address in peers
    assert "gcomm://" in config.paths.galera_conf.read_text()
    assert new_address in config.paths.galera_conf.read_text()
    assert load_membership(config).server_id == first.membership.server_id
    assert [member.index for member in load_membership(config).members] == [1, 2, 3, 4]
    assert vrrp.masters(), "keepalived lost its master after the reload"


def test_sync_rejects_invalid_config(vrrp: VrrpCluster, cloud: FakeCloudEnv) -> None:
    network = cloud.fake.create_network("member-net", "10.0.0.0/8", subnet=f"{vrrp.subnet_prefix}.0/24")
    for node in vrrp.nodes:
        add_server(cloud, network.id, node.index, node.address)
    config = node_config(vrrp, cloud, script_group="no-such-group")
    before = config.paths.keepalived_conf.read_text()
    sync = MembershipSync(config, HetznerCloud(config.hetzner))

    with pytest.raises(Exception, match="keepalived -t rejected"):
        sync.sync(Deadline.after("sync", 30))

    assert config.paths.keepalived_conf.read_text() == before
