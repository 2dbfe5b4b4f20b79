"""The agent's main loop with real containers through podman's Docker API.

The container poll interval is set to 60 s, so a verdict that changes within seconds of a
container's death can only have come from the engine's event stream.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.loopdev import private_mount_namespace
from harness.nodeconfig import node_config_dict
from harness.podman import HealthDriver, MailcowProject, PodmanService, wait_for
from mailcow_ha.adapters.engine import ContainerEvent, Engine
from mailcow_ha.adapters.keepalived import HealthFile, open_fifo
from mailcow_ha.agent.events import EventWatcher, StreamConnected
from mailcow_ha.agent.main import Agent, AgentParts
from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.config import parse_config
from mailcow_ha.deadline import Deadline
from mailcow_ha.failover.transitions import CancelToken, TransitionOutcome, TransitionRunner, VrrpState
from mailcow_ha.health.containers import ContainerProbe
from mailcow_ha.health.monitor import HealthMonitor

pytestmark = pytest.mark.integration

POLL_INTERVAL = 60.0


@pytest.fixture(scope="module")
def podman() -> Iterator[PodmanService]:
    if os.geteuid() != 0:
        pytest.skip("needs root for podman's storage and mount namespace")
    with private_mount_namespace():
        service = PodmanService.start()
        try:
            yield service
        finally:
            service.close()


@pytest.fixture
def project(podman: PodmanService) -> Iterator[MailcowProject]:
    created = MailcowProject.create(podman, f"mcha{secrets.token_hex(4)}")
    try:
        yield created
    finally:
        created.remove()


def start_all(podman: PodmanService, project: MailcowProject) -> None:
    for container in project.containers.values():
        podman.client.start(container)
    wait_for(lambda: len(project.running()) == len(project.containers), 30, "every container running")


class FakeKeepalived:
    def __init__(self, state: VrrpState) -> None:
        self.state = state

    def running(self) -> bool:
        return True

    def dump_state(self, instance: str, deadline: Deadline) -> VrrpState:
        return self.state


class RecordingAlerter:
    def __init__(self) -> None:
        self.sent: list[tuple[AlertEvent, str]] = []

    def send(self, event: AlertEvent, reason: str, details: dict[str, str] | None = None) -> None:
        self.sent.append((event, reason))


def no_transition(token: CancelToken) -> None:
    """Promote and demote do nothing: these tests look at the verdict only."""


@pytest.fixture
def run_agent(tmp_path: Path, podman: PodmanService) -> Iterator[Callable[[MailcowProject, VrrpState], Agent]]:
    started: list[tuple[Agent, threading.Thread, int]] = []

    def run(project: MailcowProject, state: VrrpState) -> Agent:
        document = node_config_dict(
            mailcow={"project_name": project.name, "critical_services": sorted(project.containers)},
            paths={
                "state_dir": str(tmp_path / "state"),
                "run_dir": str(tmp_path / "run"),
                "keepalived_fifo": str(tmp_path / "run" / "keepalived.fifo"),
                "health_file": str(tmp_path / "run" / "health"),
                "docker_socket": podman.base_url,
            },
            health={
                "interval": 0.1,
                "probe_timeout": 5.0,
                "failures_to_unhealthy": 3,
                "successes_to_healthy": 2,
                "retry_interval": 0.05,
                "container_poll_interval": POLL_INTERVAL,
                "restart_tolerance": 3,
            },
        )
        config = parse_config(document)
        (tmp_path / "run").mkdir(exist_ok=True)
        fifo_writer = open_fifo(config.paths.keepalived_fifo)
        probe = ContainerProbe(
            Engine(podman.base_url, request_timeout=5.0),
            project=project.name,
            critical_services=sorted(project.containers),
            interval=POLL_INTERVAL,
            tolerance=3,
            window=600.0,
            restart_wait=10.0,
        )

        def events(on_event: Callable[[ContainerEvent | StreamConnected], None]) -> EventWatcher:
            return EventWatcher(Engine(podman.base_url, request_timeout=10.0), project.name, on_event)

        def runner_factory(on_outcome: Callable[[TransitionOutcome], None]) -> TransitionRunner:
            return TransitionRunner(no_transition, no_transition, on_outcome=on_outcome)

        parts = AgentParts(
            config=config,
            monitor=HealthMonitor([probe], config.health),
            runner_factory=runner_factory,
            health_file=HealthFile(config.paths.health_file),
            keepalived=FakeKeepalived(state),  # type: ignore[arg-type]
            alerter=RecordingAlerter(),
            containers=probe,
            events=events,
        )
        agent = Agent(parts)
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        started.append((agent, thread, fifo_writer))
        wait_for(lambda: agent.events_connected, 30, "the container event stream")
        return agent

    yield run
    for agent, thread, fifo_writer in started:
        agent.stop()
        thread.join(10)
        os.close(fifo_writer)


def test_killed_container_seen_from_events(
    podman: PodmanService, project: MailcowProject, run_agent: Callable[[MailcowProject, VrrpState], Agent]
) -> None:
    start_all(podman, project)
    with HealthDriver(podman, project.name):
        agent = run_agent(project, VrrpState.MASTER)
        wait_for(lambda: agent.snapshot().reason == "master: all probes pass", 30, "a healthy master")
        health = HealthFile(agent.config.paths.health_file)
        assert health.read() == 0

        killed_at = time.monotonic()
        podman.podman("kill", "--signal", "KILL", project.containers["postfix-mailcow"])
        wait_for(lambda: health.read() == 1, 20, "the track file to report the death")
        wait_for(lambda: not agent.snapshot().healthy, 5, "the snapshot to follow the track file")
        detected_after = time.monotonic() - killed_at

    reason = agent.snapshot().reason
    assert reason.startswith("containers: postfix-mailcow: exited"), reason
    # The poll would come only after 60 s, so detection within 20 s proves the event path.
    assert detected_after < 20
    died = next(c for c in agent.snapshot().containers if c.service == "postfix-mailcow")
    assert died.status == "exited"


def test_restart_within_tolerance_stays_healthy(
    podman: PodmanService, project: MailcowProject, run_agent: Callable[[MailcowProject, VrrpState], Agent]
) -> None:
    start_all(podman, project)
    with HealthDriver(podman, project.name):
        agent = run_agent(project, VrrpState.MASTER)
        wait_for(lambda: agent.snapshot().reason == "master: all probes pass", 30, "a healthy master")

        podman.podman("restart", "--time", "1", project.containers["redis-mailcow"])
        wait_for(
            lambda: any(
                c.service == "redis-mailcow" and c.restarts_in_window == 1 for c in agent.snapshot().containers
            ),
            20,
            "the restart to be counted",
        )
        time.sleep(0.5)

    assert agent.snapshot().healthy
    assert HealthFile(agent.config.paths.health_file).read() == 0


def test_container_on_standby_is_unhealthy(
    podman: PodmanService, project: MailcowProject, run_agent: Callable[[MailcowProject, VrrpState], Agent]
) -> None:
    agent = run_agent(project, VrrpState.BACKUP)
    wait_for(lambda: agent.snapshot().reason == "standby: all probes pass", 30, "a healthy standby")
    health = HealthFile(agent.config.paths.health_file)

    podman.client.start(project.containers["nginx-mailcow"])
    wait_for(lambda: health.read() == 1, 20, "the track file to report the container")
    wait_for(lambda: not agent.snapshot().healthy, 5, "the snapshot to follow the track file")

    assert agent.snapshot().reason == f"containers: running on a standby: {project.containers['nginx-mailcow']}"
