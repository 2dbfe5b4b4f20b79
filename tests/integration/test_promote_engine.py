"""The engine adapter against podman's Docker API: compose labels, start order, health, stop, events."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator

import pytest

from harness.podman import MAILCOW_SERVICES, HealthDriver, MailcowProject, PodmanService, wait_for
from mailcow_ha.adapters.engine import ContainerEvent, Engine
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import EngineError
from mailcow_ha.failover.containers import ProjectContainers

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop devices, mounts, mount namespaces and podman"),
]


@pytest.fixture
def project(podman: PodmanService) -> Iterator[MailcowProject]:
    created = MailcowProject.create(podman, f"mcha{secrets.token_hex(4)}")
    try:
        yield created
    finally:
        created.remove()


@pytest.fixture
def engine(podman: PodmanService) -> Iterator[Engine]:
    adapter = Engine(podman.base_url, request_timeout=10)
    yield adapter
    adapter.close()


def test_lists_project_by_label(engine: Engine, project: MailcowProject) -> None:
    containers = engine.project_containers(project.name)

    assert sorted(container.service for container in containers) == sorted(MAILCOW_SERVICES)
    assert all(container.status == "created" for container in containers)
    nginx = next(container for container in containers if container.service == "nginx-mailcow")
    assert set(nginx.depends_on) == {"php-fpm-mailcow", "redis-mailcow"}
    assert engine.project_containers("mcha-no-such-project") == []


def test_start_wait_stop(engine: Engine, project: MailcowProject, podman: PodmanService) -> None:
    containers = ProjectContainers(engine, project.name, list(MAILCOW_SERVICES))

    started = containers.start(Deadline.after("start", 30), lambda: None)
    with HealthDriver(podman, project.name):
        reason = containers.wait_ready(Deadline.after("healthy", 30), lambda: None, threading.Event().wait)
    stopped = containers.stop(Deadline.after("stop", 30))

    assert len(started) == len(MAILCOW_SERVICES)
    assert "running and healthy" in reason
    assert sorted(stopped) == sorted(project.containers.values())
    assert project.running() == []
    assert containers.stop(Deadline.after("stop", 30)) == []


def test_events_report_death(engine: Engine, project: MailcowProject, podman: PodmanService) -> None:
    stream = engine.events(project.name)
    seen: list[ContainerEvent] = []

    def read() -> None:
        try:
            for event in stream:
                seen.append(event)
        except EngineError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    redis = project.containers["redis-mailcow"]
    podman.client.start(redis)
    podman.client.kill(redis, signal="SIGKILL")

    wait_for(lambda: any(event.action == "die" for event in seen), 20, "a die event for redis-mailcow")
    stream.close()
    reader.join(10)

    die = next(event for event in seen if event.action == "die")
    assert die.service == "redis-mailcow"
    assert die.name == redis
    assert any(event.action == "start" for event in seen)


def test_health_only_with_health_check(engine: Engine, podman: PodmanService) -> None:
    # podman reports State.Health {"Status": ""} for a container without a health check; promote
    # must not wait for a health status that never comes.
    name = f"mcha{secrets.token_hex(4)}"
    image = podman.tag_image(f"localhost/mailcow/{name}:test")
    labels = {"com.docker.compose.project": name}
    checks = {
        "checked": {"test": ["CMD-SHELL", "true"], "interval": 1_000_000_000},
        "unchecked": None,
        "disabled": {"test": ["NONE"]},
    }
    try:
        for service, healthcheck in checks.items():
            extra = {} if healthcheck is None else {"healthcheck": healthcheck}
            container = podman.client.create_container(
                image,
                name=f"{name}-{service}-1",
                command=["sleep", "60"],
                labels={**labels, "com.docker.compose.service": service},
                host_config=podman.client.create_host_config(network_mode="none"),
                **extra,
            )
            podman.client.start(container)
        raw_health = podman.inspect(f"{name}-unchecked-1")["State"].get("Health")

        found = {container.service: container for container in engine.project_containers(name)}
        containers = ProjectContainers(engine, name, ["unchecked", "disabled"])
        reason = containers.wait_ready(Deadline.after("ready", 10), lambda: None, threading.Event().wait)
    finally:
        podman.remove_project(name)

    assert raw_health in (None, {"Status": "", "FailingStreak": 0, "Log": None})
    assert found["unchecked"].health is None
    assert found["disabled"].health is None
    assert found["checked"].health == "starting"
    assert found["unchecked"].ready
    assert not found["checked"].ready
    assert "running" in reason
