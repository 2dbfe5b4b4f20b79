"""The Galera test cluster itself: positions after an ordered stop, and recovery to three members."""

from __future__ import annotations

import pytest

from harness.galera import GaleraCluster

pytestmark = pytest.mark.integration


def test_cluster_members_synced(galera: GaleraCluster) -> None:
    statuses = [node.status() for node in galera.nodes]

    assert [status.synced_primary for status in statuses] == [True, True, True]
    assert {status.cluster_size for status in statuses} == {3}
    assert len({status.cluster_uuid for status in statuses}) == 1


def test_ordered_stop_positions(galera: GaleraCluster) -> None:
    galera.nodes[0].execute(
        "CREATE DATABASE IF NOT EXISTS harness", "CREATE OR REPLACE TABLE harness.t (id INT PRIMARY KEY)"
    )
    galera.nodes[0].execute("INSERT INTO harness.t VALUES (1)")
    try:
        galera.stop_ordered([2, 3, 1])
        positions = {node.index: node.position() for node in galera.nodes}
        recovered = {node.index: node.recover_position() for node in galera.nodes}

        assert positions[1].safe_to_bootstrap
        assert not positions[2].safe_to_bootstrap
        assert not positions[3].safe_to_bootstrap
        assert positions[1].seqno > positions[3].seqno > positions[2].seqno
        assert recovered == positions
    finally:
        galera.ensure_healthy()

    assert galera.nodes[2].execute("SELECT id FROM harness.t") == [(1,)]
