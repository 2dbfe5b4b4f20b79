"""The production agent from `build_agent`: the status API actions that the operator commands call.

The status API binds to 127.0.0.1 on a free port; nothing else of the agent runs.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.nodeconfig import node_config_dict
from mailcow_ha.agent.main import Agent
from mailcow_ha.agent.wiring import build_agent
from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.config import parse_config
from mailcow_ha.failover.transitions import CancelToken
from mailcow_ha.mailcow import galera_ops, upgrade
from mailcow_ha.ops import maintenance, switchover_node

COMMAND_ACTIONS = {
    # `mailcow-ha switchover` calls these on the source and the target.
    switchover_node.ACTION_PREPARE,
    switchover_node.ACTION_HOLD,
    switchover_node.ACTION_STEP_DOWN,
    switchover_node.ACTION_RELEASE,
    # `mailcow-ha galera bootstrap` collects positions and starts members.
    galera_ops.ACTION_POSITION,
    galera_ops.ACTION_START,
    # `mailcow-ha maintenance on|off` switches every member.
    maintenance.ACTION,
    # `mailcow-ha upgrade` checks mailcow out and installs the runtime on every member.
    upgrade.ACTION_MAILCOW_CHECKOUT,
    upgrade.ACTION_RUNTIME_INSTALL,
}


class NoAlerts:
    def send(self, event: AlertEvent, reason: str, details: dict[str, str] | None = None) -> None:
        pass


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def no_transition(token: CancelToken) -> None:
    """Stands in for promote and demote in the benchmarks' wiring."""


def wired_agent(tmp_path: Path, *, benchmark: bool) -> Agent:
    document = node_config_dict(
        node={"name": "mailcow-ha-test-1", "index": 1, "private_ip": "127.0.0.1"},
        peers=[],
        paths={
            "state_dir": str(tmp_path / "state"),
            "run_dir": str(tmp_path / "run"),
            "keepalived_fifo": str(tmp_path / "run" / "keepalived.fifo"),
            "health_file": str(tmp_path / "run" / "health"),
            "device_dir": str(tmp_path / "by-id"),
            "mount_point": str(tmp_path / "mnt"),
            "docker_socket": f"unix://{tmp_path / 'missing.sock'}",
        },
        status_api={"secret": "test-cluster-secret", "port": free_loopback_port()},
        membership={"enabled": False},
    )
    transitions = (no_transition, no_transition) if benchmark else None
    return build_agent(parse_config(document), NoAlerts(), transitions=transitions)


def close_unstarted(agent: Agent) -> None:
    for close in agent.parts.closers:
        close()
    agent.link.close()
    agent.runner.close(timeout=2.0)
    agent.parts.monitor.close()


@pytest.fixture
def production_agent(tmp_path: Path) -> Iterator[Agent]:
    agent = wired_agent(tmp_path, benchmark=False)
    yield agent
    close_unstarted(agent)


def test_production_agent_serves_command_actions(production_agent: Agent) -> None:
    api = production_agent.parts.status_api
    assert api is not None

    registered = {action.name for action in api.actions()}

    assert COMMAND_ACTIONS - registered == set()


def test_production_agent_lists_actions_over_http(production_agent: Agent) -> None:
    api = production_agent.parts.status_api
    assert api is not None
    assert api.start in production_agent.parts.background
    assert api.stop in production_agent.parts.closers
    host, port = api.address

    api.start()
    connection = http.client.HTTPConnection(host, port, timeout=5.0)
    try:
        connection.request("GET", "/v1/actions")
        response = connection.getresponse()
        listed = json.loads(response.read())
    finally:
        connection.close()

    assert response.status == 200
    assert COMMAND_ACTIONS - {action["name"] for action in listed["actions"]} == set()


def test_benchmark_wiring_lacks_only_switchover(tmp_path: Path) -> None:
    agent = wired_agent(tmp_path, benchmark=True)
    try:
        api = agent.parts.status_api
        assert api is not None
        registered = {action.name for action in api.actions()}
    finally:
        close_unstarted(agent)

    missing = COMMAND_ACTIONS - registered
    assert missing == {
        switchover_node.ACTION_PREPARE,
        switchover_node.ACTION_HOLD,
        switchover_node.ACTION_STEP_DOWN,
        switchover_node.ACTION_RELEASE,
    }
