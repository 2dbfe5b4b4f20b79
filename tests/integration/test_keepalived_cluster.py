"""Rendered keepalived.conf on real keepalived in namespaces: election, track file, data dump, reload."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.keepalived import VrrpCluster, keepalived_available
from mailcow_ha.adapters.keepalived import KeepalivedProcess
from mailcow_ha.deadline import Deadline
from mailcow_ha.failover.transitions import VrrpState

pytestmark = pytest.mark.integration


@pytest.fixture
def vrrp(tmp_path: Path) -> Iterator[VrrpCluster]:
    reason = keepalived_available()
    if reason is not None:
        pytest.skip(reason)
    cluster = VrrpCluster(3, tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()


def test_rendered_config_passes_check(vrrp: VrrpCluster) -> None:
    node = vrrp.nodes[0]
    node.render()

    result = node.daemon.check_config()

    assert result.returncode == 0, result.stderr


def test_health_file_moves_master(vrrp: VrrpCluster) -> None:
    vrrp.start()
    first = vrrp.wait_master(timeout=10)

    first.set_health(1)
    second = vrrp.wait_master(timeout=5, exclude=first)
    first.daemon.wait_state("FAULT", timeout=2)

    first.set_health(0)
    first.daemon.wait_state("BACKUP", timeout=5)

    assert first.index == 1
    assert second.index == 2
    assert vrrp.masters() == [second]


def test_data_dump_tells_each_state(vrrp: VrrpCluster) -> None:
    vrrp.start()
    master = vrrp.wait_master(timeout=10)
    standby = next(node for node in vrrp.nodes if node is not master)
    standby.set_health(1)
    standby.daemon.wait_state("FAULT", timeout=5)

    states = {}
    for node in vrrp.nodes:
        process = KeepalivedProcess(node.daemon.pid_file, node.daemon.data_file)
        states[node.name] = process.dump_state("mailcow", Deadline.after("data dump", 5))
    backup = next(node for node in vrrp.nodes if node not in (master, standby))

    assert states[master.name] is VrrpState.MASTER
    assert states[standby.name] is VrrpState.FAULT
    assert states[backup.name] is VrrpState.BACKUP


def test_reload_keeps_master(vrrp: VrrpCluster) -> None:
    vrrp.start()
    master = vrrp.wait_master(timeout=10)
    process = KeepalivedProcess(master.daemon.pid_file, master.daemon.data_file)

    process.reload()
    deadline = Deadline.after("reload", 5)
    while "Reload complete" not in master.daemon.log_text() and not deadline.expired:
        time.sleep(0.05)

    assert "Reload complete" in master.daemon.log_text()
    assert vrrp.masters() == [master]
    assert process.running()
