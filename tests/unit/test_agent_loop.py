"""The agent's main loop with real FIFO, track file and transition runner, and scripted probes."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.nodeconfig import node_config_dict
from mailcow_ha.adapters.keepalived import HealthFile, open_fifo
from mailcow_ha.agent.main import Agent, AgentParts
from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.config import NodeConfig, parse_config
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import CloudError
from mailcow_ha.failover.history import write_failover_start
from mailcow_ha.failover.transitions import CancelToken, TransitionOutcome, TransitionRunner, VrrpState
from mailcow_ha.health.monitor import HealthMonitor
from mailcow_ha.health.verdict import CONTAINERS, FLOATING_IP, GALERA, MOUNT, ProbeResult, Role
from mailcow_ha.ops import maintenance


class SwitchProbe:
    """A probe whose result the test sets; it records the roles it ran for."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.interval = 0.05
        self.ok = True
        self.quorum_lost = False
        self.roles: list[Role] = []

    def check(self, role: Role, deadline: Deadline) -> ProbeResult:
        self.roles.append(role)
        return ProbeResult(self.name, self.ok, "fine" if self.ok else "broken", time.time(), 0.0, self.quorum_lost)


class FakeKeepalived:
    def __init__(self, state: VrrpState | None) -> None:
        self.state = state
        self.alive = True

    def running(self) -> bool:
        return self.alive

    def dump_state(self, instance: str, deadline: Deadline) -> VrrpState | None:
        return self.state


class RecordingAlerter:
    def __init__(self) -> None:
        self.sent: list[tuple[AlertEvent, str]] = []

    def send(self, event: AlertEvent, reason: str, details: dict[str, str] | None = None) -> None:
        self.sent.append((event, reason))


class Transitions:
    """Promote and demote callables that record their runs; promote fails when `fail_promote` is set."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.fail_promote = False

    def promote(self, token: CancelToken) -> None:
        self.runs.append("promote")
        if self.fail_promote:
            raise CloudError("volume move timed out")

    def demote(self, token: CancelToken) -> None:
        self.runs.append("demote")


class Node:
    """An agent under test with its probes, FIFO writer and collaborators."""

    def __init__(self, tmp_path: Path, dumped: VrrpState | None) -> None:
        document = node_config_dict(
            paths={
                "state_dir": str(tmp_path / "state"),
                "run_dir": str(tmp_path / "run"),
                "keepalived_fifo": str(tmp_path / "run" / "keepalived.fifo"),
                "health_file": str(tmp_path / "run" / "health"),
            },
            health={
                "interval": 0.05,
                "probe_timeout": 0.5,
                "failures_to_unhealthy": 3,
                "successes_to_healthy": 2,
                "retry_interval": 0.01,
                "failed_transition_hold": 1.0,
                "keepalived_check_interval": 0.2,
            },
        )
        self.config: NodeConfig = parse_config(document)
        (tmp_path / "run").mkdir()
        self.fifo_writer = open_fifo(self.config.paths.keepalived_fifo)
        self.probes = {name: SwitchProbe(name) for name in (GALERA, CONTAINERS, MOUNT, FLOATING_IP)}
        self.keepalived = FakeKeepalived(dumped)
        self.alerter = RecordingAlerter()
        self.transitions = Transitions()
        self.health = HealthFile(self.config.paths.health_file)
        self.agent: Agent | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> Agent:
        def runner_factory(on_outcome: Callable[[TransitionOutcome], None]) -> TransitionRunner:
            return TransitionRunner(self.transitions.promote, self.transitions.demote, on_outcome=on_outcome)

        parts = AgentParts(
            config=self.config,
            monitor=HealthMonitor(list(self.probes.values()), self.config.health),
            runner_factory=runner_factory,
            health_file=self.health,
            keepalived=self.keepalived,  # type: ignore[arg-type]
            alerter=self.alerter,
        )
        self.agent = Agent(parts)
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()
        return self.agent

    def say(self, state: str) -> None:
        os.write(self.fifo_writer, f'INSTANCE "mailcow" {state} 250\n'.encode())

    def wait_healthy(self, timeout: float = 5.0) -> None:
        """Wait until the track file and the snapshot both report healthy (the snapshot follows the file)."""
        assert self.agent is not None
        agent = self.agent
        self.wait(lambda: self.health.read() == 0 and agent.snapshot().healthy, timeout)

    def wait_unhealthy(self, timeout: float = 5.0) -> None:
        """Wait until the track file and the snapshot both report unhealthy (the snapshot follows the file)."""
        assert self.agent is not None
        agent = self.agent
        self.wait(lambda: self.health.read() == 1 and not agent.snapshot().healthy, timeout)

    def wait(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not reached in time"
            time.sleep(0.01)

    def close(self) -> None:
        if self.agent is not None and self.thread is not None:
            self.agent.stop()
            self.thread.join(5)
        os.close(self.fifo_writer)


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[[VrrpState | None], Node]]:
    nodes: list[Node] = []

    def make(dumped: VrrpState | None = VrrpState.BACKUP) -> Node:
        node = Node(tmp_path, dumped)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()


def test_standby_reports_healthy(make_node: Callable[..., Node]) -> None:
    node = make_node(VrrpState.BACKUP)
    agent = node.start()

    node.wait_healthy()
    # The agent is healthy while its start-up demote still runs ("transition: ..."), so wait for the demote to end.
    node.wait(lambda: agent.snapshot().reason.startswith("standby:"))

    assert node.transitions.runs == ["demote"]
    snapshot = agent.snapshot()
    assert snapshot.vrrp_state == "BACKUP"
    assert snapshot.healthy
    assert snapshot.reason == "standby: all probes pass"


def test_master_failure_reaches_track_file(make_node: Callable[..., Node]) -> None:
    node = make_node(VrrpState.BACKUP)
    agent = node.start()
    node.wait_healthy()

    node.say("MASTER")
    node.wait(lambda: agent.snapshot().reason == "master: all probes pass")
    node.probes[CONTAINERS].ok = False
    node.wait_unhealthy()

    assert node.transitions.runs == ["demote", "promote"]
    assert agent.snapshot().reason == "containers: broken"
    assert (AlertEvent.HEALTH_CHANGED, "node is unhealthy: containers: broken") in node.alerter.sent


def test_maintenance_holds_master(make_node: Callable[..., Node]) -> None:
    node = make_node(VrrpState.BACKUP)
    agent = node.start()
    node.say("MASTER")
    node.wait(lambda: agent.snapshot().reason == "master: all probes pass")
    maintenance.switch_on(node.config.paths.state_dir, duration=600, reason="update")

    node.probes[CONTAINERS].ok = False
    node.wait(lambda: agent.snapshot().reason.startswith("maintenance mode on until"))
    time.sleep(0.3)

    assert node.health.read() == 0
    assert agent.snapshot().maintenance.active


def test_expired_maintenance_alerts_once(make_node: Callable[..., Node]) -> None:
    node = make_node(VrrpState.BACKUP)
    maintenance.switch_on(node.config.paths.state_dir, duration=60, now=time.time() - 120)
    node.start()

    node.wait(lambda: any(event is AlertEvent.MAINTENANCE_EXPIRED for event, _ in node.alerter.sent))
    time.sleep(0.3)

    assert [event for event, _ in node.alerter.sent].count(AlertEvent.MAINTENANCE_EXPIRED) == 1


def test_quorum_loss_alerts_once(make_node: Callable[..., Node]) -> None:
    node = make_node(VrrpState.BACKUP)
    agent = node.start()
    node.wait_healthy()

    node.probes[GALERA].ok = False
    node.probes[GALERA].quorum_lost = True
    node.wait(lambda: node.health.read() == 1)
    time.sleep(0.3)

    assert [event for event, _ in node.alerter.sent].count(AlertEvent.QUORUM_LOST) == 1
    assert agent.snapshot().reason == "galera: broken"


def test_failed_promote_reports_unhealthy(make_node: Callable[..., Node]) -> None:
    node = make_node(VrrpState.BACKUP)
    node.transitions.fail_promote = True
    agent = node.start()
    node.wait_healthy()

    node.say("MASTER")
    node.wait_unhealthy()
    reason = agent.snapshot().reason
    node.say("FAULT")
    node.wait_healthy()

    assert reason == "promote failed: volume move timed out"
    assert node.transitions.runs == ["demote", "promote", "demote"]


def test_buffered_transitions_handled_at_start(make_node: Callable[..., Node]) -> None:
    node = make_node(VrrpState.BACKUP)
    node.say("BACKUP")
    node.say("MASTER")
    agent = node.start()

    node.wait(lambda: agent.snapshot().reason == "master: all probes pass")

    assert node.transitions.runs == ["promote"]


def test_restart_as_master_verifies_service(make_node: Callable[..., Node]) -> None:
    node = make_node(VrrpState.MASTER)
    agent = node.start()

    node.wait(lambda: agent.snapshot().reason == "master: all probes pass")

    assert node.transitions.runs == []
    assert node.health.read() == 0


def test_restart_as_incomplete_master_promotes(make_node: Callable[..., Node]) -> None:
    node = make_node(VrrpState.MASTER)
    node.probes[MOUNT].ok = False
    node.start()

    node.wait(lambda: node.transitions.runs == ["promote"])


def test_unknown_state_keeps_track_file_role_free(make_node: Callable[..., Node]) -> None:
    node = make_node(None)
    node.probes[CONTAINERS].ok = False
    agent = node.start()

    node.wait_healthy()

    assert agent.snapshot().vrrp_state == "UNKNOWN"
    assert node.transitions.runs == []


def test_rewrites_track_file_after_keepalived_restart(make_node: Callable[..., Node]) -> None:
    node = make_node(VrrpState.BACKUP)
    node.start()
    node.wait_healthy()

    node.health.write(False)

    node.wait_healthy()


def test_vanished_keepalived_demotes(make_node: Callable[..., Node]) -> None:
    node = make_node(VrrpState.BACKUP)
    agent = node.start()
    node.say("MASTER")
    node.wait(lambda: agent.snapshot().reason == "master: all probes pass")

    node.keepalived.alive = False
    node.wait(lambda: agent.snapshot().vrrp_state == "STOP", timeout=8)
    node.wait(lambda: node.transitions.runs[-1] == "demote")


def test_verdict_change_logged_once(make_node: Callable[..., Node], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailcow_ha.agent.main")
    node = make_node(VrrpState.BACKUP)
    node.start()
    node.wait_healthy()

    node.probes[CONTAINERS].ok = False
    node.wait(lambda: node.health.read() == 1)
    time.sleep(0.5)

    changes = [record.getMessage() for record in caplog.records if record.getMessage().startswith("verdict UNHEALTHY")]
    assert changes == ["verdict UNHEALTHY: containers: broken"]


def test_grace_period_after_failover(make_node: Callable[..., Node]) -> None:
    node = make_node(VrrpState.BACKUP)

    def promote_records_start(token: CancelToken) -> None:
        node.transitions.runs.append("promote")
        write_failover_start(node.config.paths.state_dir, time.time(), "record-1")

    node.transitions.promote = promote_records_start  # type: ignore[method-assign]
    agent = node.start()
    node.wait_healthy()
    node.probes[CONTAINERS].ok = False
    node.say("MASTER")
    node.wait(lambda: agent.snapshot().reason.endswith("(grace period after a failover)"))
    time.sleep(0.3)
    in_grace = node.health.read()
    grace_until = agent.snapshot().grace_until

    node.probes[CONTAINERS].ok = True
    node.wait(lambda: agent.snapshot().reason == "master: all probes pass")
    node.probes[CONTAINERS].ok = False
    node.wait_unhealthy()

    assert in_grace == 0
    assert grace_until is not None
    assert agent.snapshot().grace_until is None
    assert agent.snapshot().reason == "containers: broken"


def test_master_without_quorum_does_not_promote(make_node: Callable[..., Node]) -> None:
    node = make_node(VrrpState.BACKUP)
    agent = node.start()
    node.wait_healthy()

    node.probes[GALERA].ok = False
    node.probes[GALERA].quorum_lost = True
    node.say("MASTER")
    node.wait_unhealthy()

    assert node.transitions.runs == ["demote"]
    assert agent.snapshot().vrrp_state == "MASTER"
    assert not agent.snapshot().healthy
