"""Rendered keepalived.conf on real keepalived in namespaces: election, health file, nopreempt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.keepalived import VrrpCluster, keepalived_available

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
