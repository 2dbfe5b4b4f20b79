"""The agent's main loop with real containers through podman's Docker API.

The container poll interval is set to 60 s, so a verdict that changes within seconds of a
container's death can only have come from the engine's event stream. Every write of the
track file is recorded, so a test can tell that a verdict never flipped, even for a moment.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.nodeconfig import node_config_dict
from harness.podman import (
    COMPOSE_PROJECT_LABEL,
    COMPOSE_SERVICE_LABEL,
    MAILCOW_SERVICES,
    HealthDriver,
    MailcowProject,
    PodmanService,
    wait_for,
)
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
RESTART_WAIT = 30.0
"""Longer than every wait below, so a death that fails the node at once was judged a kill on purpose."""
TOLERANCE = 3


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


class RecordingHealthFile(HealthFile):
    """The track file, with every value the agent wrote into it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.written: list[bool] = []

    def write(self, healthy: bool) -> None:
        self.written.append(healthy)
        super().write(healthy)

    @property
    def ever_unhealthy(self) -> bool:
        return False in self.written


def no_transition(token: CancelToken) -> None:
    """Promote and demote do nothing: these tests look at the verdict only."""


def create_always_restarted(podman: PodmanService, project: MailcowProject, service: str) -> str:
    """Add the project's container of `service` with `restart: always`, as mailcow's compose file sets."""
    name = f"{project.name}-{service}-1"
    image = podman.tag_image(f"localhost/mailcow/{service}:test")
    podman.client.create_container(
        image,
        name=name,
        labels={COMPOSE_PROJECT_LABEL: project.name, COMPOSE_SERVICE_LABEL: service},
        environment={"SERVICE_NAME": service},
        healthcheck={"test": ["CMD-SHELL", "test -f /tmp/healthy"], "interval": 1_000_000_000, "retries": 1},
        host_config=podman.client.create_host_config(network_mode="none", restart_policy={"Name": "always"}),
        stop_signal="SIGTERM",
    )
    project.containers[service] = name
    return name


def healthy_master(agent: Agent) -> bool:
    return agent.snapshot().reason == "master: all probes pass"


def restarts_of(agent: Agent, service: str) -> int:
    return next((c.restarts_in_window for c in agent.snapshot().containers if c.service == service), 0)


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
                "restart_tolerance": TOLERANCE,
                "restart_wait": RESTART_WAIT,
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
            tolerance=TOLERANCE,
            window=600.0,
            restart_wait=RESTART_WAIT,
        )

        def events(on_event: Callable[[ContainerEvent | StreamConnected], None]) -> EventWatcher:
            return EventWatcher(Engine(podman.base_url, request_timeout=10.0), project.name, on_event)

        def runner_factory(on_outcome: Callable[[TransitionOutcome], None]) -> TransitionRunner:
            return TransitionRunner(no_transition, no_transition, on_outcome=on_outcome)

        parts = AgentParts(
            config=config,
            monitor=HealthMonitor([probe], config.health),
            runner_factory=runner_factory,
            health_file=RecordingHealthFile(config.paths.health_file),
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


def test_restarts_within_tolerance_stay_healthy(
    podman: PodmanService, project: MailcowProject, run_agent: Callable[[MailcowProject, VrrpState], Agent]
) -> None:
    start_all(podman, project)
    redis = project.containers["redis-mailcow"]
    with HealthDriver(podman, project.name):
        agent = run_agent(project, VrrpState.MASTER)
        wait_for(lambda: healthy_master(agent), 30, "a healthy master")
        health = agent.parts.health_file
        assert isinstance(health, RecordingHealthFile)

        # mailcow's watchdog restarts through the Docker API; an administrator uses the CLI.
        podman.client.restart(redis, timeout=1)
        wait_for(lambda: restarts_of(agent, "redis-mailcow") == 1, 20, "the API restart to be counted")
        wait_for(lambda: healthy_master(agent), 20, "the restarted container to pass")
        podman.podman("restart", "--time", "1", redis)
        wait_for(lambda: restarts_of(agent, "redis-mailcow") == 2, 20, "the CLI restart to be counted")
        wait_for(lambda: healthy_master(agent), 20, "the restarted container to pass")

    assert not health.ever_unhealthy, f"the track file reported unhealthy: {health.written}"
    assert health.read() == 0
    assert agent.snapshot().healthy


def test_restarts_beyond_tolerance_fail_master(
    podman: PodmanService, project: MailcowProject, run_agent: Callable[[MailcowProject, VrrpState], Agent]
) -> None:
    start_all(podman, project)
    redis = project.containers["redis-mailcow"]
    with HealthDriver(podman, project.name):
        agent = run_agent(project, VrrpState.MASTER)
        wait_for(lambda: healthy_master(agent), 30, "a healthy master")
        health = HealthFile(agent.config.paths.health_file)

        for count in range(1, TOLERANCE + 1):
            podman.client.restart(redis, timeout=1)
            wait_for(lambda count=count: restarts_of(agent, "redis-mailcow") == count, 20, f"restart {count}")
            wait_for(lambda: healthy_master(agent), 20, f"the master to pass after restart {count}")
        healthy_before = health.read()
        podman.client.restart(redis, timeout=1)
        wait_for(lambda: health.read() == 1, 20, "the track file to report one restart too many")

    assert healthy_before == 0
    assert agent.snapshot().reason == f"containers: redis-mailcow: restarted more than {TOLERANCE} times in 600 s"


def test_kill_without_restart_fails_at_once(
    podman: PodmanService, run_agent: Callable[[MailcowProject, VrrpState], Agent]
) -> None:
    others = {service: needs for service, needs in MAILCOW_SERVICES.items() if service != "postfix-mailcow"}
    project = MailcowProject.create(podman, f"mcha{secrets.token_hex(4)}", services=others)
    try:
        postfix = create_always_restarted(podman, project, "postfix-mailcow")
        start_all(podman, project)
        with HealthDriver(podman, project.name):
            agent = run_agent(project, VrrpState.MASTER)
            wait_for(lambda: healthy_master(agent), 30, "a healthy master")
            health = HealthFile(agent.config.paths.health_file)

            podman.podman("kill", "--signal", "KILL", postfix)
            # The restart policy would let a crash pass for RESTART_WAIT seconds; a kill fails at once.
            wait_for(lambda: health.read() == 1, RESTART_WAIT - 10, "the track file to report the kill")

        assert agent.snapshot().reason == "containers: postfix-mailcow: exited (exit code 137)"
        assert project.states()["postfix-mailcow"] == "exited"
    finally:
        project.remove()


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
