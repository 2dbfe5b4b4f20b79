"""The whole cluster stops and starts again: Galera must restart from its most advanced member."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from lab import faults
from lab.cluster import Lab
from lab.scenario import Scenario

pytestmark = pytest.mark.lab

ROWS_BETWEEN_STOPS = 5


def test_full_cluster_restart_uses_highest_seqno(lab: Lab, open_scenario: Callable[[Lab], Scenario]) -> None:
    scenario = open_scenario(lab)
    scenario.wait_for_service()
    nodes = sorted(lab.nodes.values(), key=lambda node: node.index)
    # Node 1 stops first and the last node last, so the most advanced member is not node 1.
    for node in nodes:
        faults.kill_keepalived(node, signal.SIGTERM)
    faults.wait_for(lambda: not lab.view().serving and not lab.view().mounted_on, 60, "the cluster to stop serving")

    for node in nodes[:-1]:
        node.database.stop()
        _wait_for_more_rows(scenario, ROWS_BETWEEN_STOPS)
    nodes[-1].database.stop()
    stopped_at = scenario.inject("whole cluster stopped", lambda: None)
    positions = {node.name: node.database.saved_position() for node in nodes}
    most_advanced = max(positions, key=lambda name: positions[name].seqno)
    for node in nodes:
        faults.power_off(lab, node)

    for node in nodes:
        faults.power_on(lab, node, start_galera=False)
    lab.wait_for_status_api(nodes)
    result = nodes[0].machine.run(lab.runtime_command(nodes[0], "galera", "bootstrap"), timeout=300.0, check=False)
    print(result.stdout, result.stderr)

    assert most_advanced == nodes[-1].name
    assert positions[most_advanced].safe_to_bootstrap
    assert result.returncode == 0
    assert f"did bootstrap {most_advanced}" in result.stdout
    for node in nodes:
        node.database.wait_synced(120)
    master = lab.wait_for_master(180)
    scenario.assert_invariants(before=stopped_at, master=master)


def _wait_for_more_rows(scenario: Scenario, count: int) -> None:
    """Wait until the writer got `count` more rows acknowledged, so the remaining members move ahead."""
    target = len(scenario.writer.acknowledged()) + count
    faults.wait_for(lambda: len(scenario.writer.acknowledged()) >= target, 30, f"{count} more acknowledged rows")
