"""Upgrade order and the mailcow and runtime upgrade procedures, with recorded steps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from harness.nodeconfig import node_config_dict
from mailcow_ha.config import parse_config
from mailcow_ha.errors import DeadlineExceeded, Refused
from mailcow_ha.mailcow import upgrade
from mailcow_ha.mailcow.galera_ops import PeerUnreachable
from mailcow_ha.mailcow.upgrade import NodeRole, NodeState

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cluster(master: int = 2, size: int = 3) -> list[NodeState]:
    return [
        NodeState(f"node-{i}", i, NodeRole.MASTER if i == master else NodeRole.STANDBY, "0.1.0", True, 100.0)
        for i in range(size, 0, -1)
    ]


def test_order_is_standbys_then_master():
    order = [state.node for state in upgrade.upgrade_order(cluster(master=2, size=5))]

    assert order == ["node-1", "node-3", "node-4", "node-5", "node-2"]


def test_order_rejects_unknown_node():
    nodes = [*cluster()[:2], NodeState("node-1", 1, None, error="timed out")]

    with pytest.raises(Refused, match=r"node-1 \(timed out\) is unknown"):
        upgrade.upgrade_order(nodes)


@pytest.mark.parametrize("masters", [0, 2])
def test_order_requires_one_master(masters):
    nodes = [NodeState(f"n{i}", i, NodeRole.MASTER if i <= masters else NodeRole.STANDBY) for i in (1, 2, 3)]

    with pytest.raises(Refused, match="expected exactly one master"):
        upgrade.upgrade_order(nodes)


class Recorder:
    """A transport and a cluster whose agents restart with the new version after an install."""

    def __init__(self, *, stuck: str | None = None, silent: str | None = None) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.states = {state.node: state for state in cluster()}
        self.stuck = stuck
        self.silent = silent
        self.now = 1000.0

    def call(self, node: str, action: str, params: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        self.calls.append((node, action, dict(params)))
        if action == upgrade.ACTION_RUNTIME_INSTALL and node != self.stuck:
            old = self.states[node]
            self.states[node] = NodeState(node, old.index, old.role, "0.2.0", True, self.now + 1)
        if node == self.silent:
            raise PeerUnreachable(f"{node}: connection reset while the agent restarted")
        return {"node": node}

    def read_state(self, node: str) -> NodeState:
        return self.states[node]

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run_runtime(recorder: Recorder, timeout: float = 30.0) -> list[str]:
    return upgrade.upgrade_runtime(
        cluster(),
        COMMIT,
        recorder,
        recorder.read_state,
        expected_version="0.2.0",
        node_timeout=timeout,
        poll_interval=1.0,
        sleep=recorder.sleep,
        clock=lambda: recorder.now,
        wall_clock=lambda: recorder.now,
    )


def test_runtime_upgrade_one_node_at_a_time():
    recorder = Recorder()

    done = run_runtime(recorder)

    assert done == ["node-1", "node-3", "node-2"]
    assert [call[0] for call in recorder.calls] == ["node-1", "node-3", "node-2"]
    assert all(call[2] == {"ref": COMMIT} for call in recorder.calls)


def test_runtime_upgrade_tolerates_lost_reply():
    recorder = Recorder(silent="node-3")

    assert run_runtime(recorder) == ["node-1", "node-3", "node-2"]


def test_runtime_upgrade_stops_at_stuck_node():
    recorder = Recorder(stuck="node-3")

    with pytest.raises(DeadlineExceeded) as stopped:
        run_runtime(recorder, timeout=10.0)

    assert "node-3 did not report mailcow-ha 0.2.0" in str(stopped.value)
    assert "upgraded so far: node-1" in str(stopped.value)
    assert [call[0] for call in recorder.calls] == ["node-1", "node-3"]


def mailcow_steps(log: list[str], *, fail_update: bool = False) -> upgrade.MailcowUpgradeSteps:
    def update() -> str:
        log.append("update")
        if fail_update:
            raise upgrade.UpgradeError("./update.sh exited 1: merge conflict")
        return COMMIT

    def fix() -> list[str]:
        log.append("fix")
        return ["tags_domain"]

    return upgrade.MailcowUpgradeSteps(
        maintenance_on=lambda: log.append("maintenance on"),
        update=update,
        render_override=lambda: log.append("override"),
        fix_database=fix,
        maintenance_off=lambda: log.append("maintenance off"),
    )


def test_mailcow_upgrade_order():
    log: list[str] = []
    recorder = Recorder()

    commit = upgrade.upgrade_mailcow(mailcow_steps(log), ["node-1", "node-3"], recorder)

    assert commit == COMMIT
    assert log == ["maintenance on", "update", "override", "fix", "maintenance off"]
    assert recorder.calls == [
        ("node-1", upgrade.ACTION_MAILCOW_CHECKOUT, {"commit": COMMIT}),
        ("node-3", upgrade.ACTION_MAILCOW_CHECKOUT, {"commit": COMMIT}),
    ]


def test_mailcow_upgrade_failure_keeps_maintenance():
    log: list[str] = []
    recorder = Recorder()

    with pytest.raises(upgrade.UpgradeError, match="maintenance mode stays on"):
        upgrade.upgrade_mailcow(mailcow_steps(log, fail_update=True), ["node-1"], recorder)

    assert log == ["maintenance on", "update"]
    assert recorder.calls == []


def test_install_commands_match_first_boot():
    config = parse_config(node_config_dict())

    commands = upgrade.install_commands(config, COMMIT)

    assert commands[0] == ["git", "-C", "/opt/mailcow-ha/src", "fetch", "--quiet", "--depth", "1", "origin", COMMIT]
    assert commands[2][-2:] == ["-r", "/opt/mailcow-ha/src/runtime/requirements.lock"]
    assert "--require-hashes" in commands[2]


def test_install_rejects_non_commit():
    with pytest.raises(upgrade.UpgradeError, match="pinned to a commit"):
        upgrade.install_runtime(parse_config(node_config_dict()), "main")


def test_state_from_snapshot_roles():
    master = upgrade.state_from_snapshot("n1", 1, {"vrrp_state": "MASTER", "agent_version": "0.1.0"}, None)
    unknown = upgrade.state_from_snapshot("n2", 2, {"vrrp_state": "UNKNOWN"}, None)
    missing = upgrade.state_from_snapshot("n3", 3, None, "timed out")

    assert master.role is NodeRole.MASTER
    assert unknown.role is None
    assert missing.error == "timed out"
