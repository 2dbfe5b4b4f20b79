"""The mailcow compose project's containers: start them in dependency order, wait until ready, stop them.

The containers exist on every node (created once, as `docker compose create` leaves them) and
run on the master only. Promote starts them through the Docker API, in waves that follow
compose's depends_on label, and waits until every container of the critical services runs and,
if it has a health check, is healthy. Demote stops every running container of the project.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mailcow_ha.adapters.engine import ContainerInfo, Engine
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import EngineError

log = logging.getLogger(__name__)

_PARALLEL_REQUESTS = 8
_READY_POLL_INTERVAL = 0.25
_STOP_MARGIN = 2.0
"""Seconds of the stop deadline kept back for the engine to respond after it sent SIGKILL."""
_ACTIVE_STATUSES = frozenset({"running", "restarting", "paused"})


class Readiness(enum.StrEnum):
    READY = "ready"
    WAITING = "waiting"
    FAILED = "failed"


@dataclass(frozen=True)
class ReadinessVerdict:
    readiness: Readiness
    reason: str


def missing_services(containers: Iterable[ContainerInfo], critical_services: Sequence[str]) -> list[str]:
    present = {container.service for container in containers}
    return [service for service in critical_services if service not in present]


def assess_readiness(containers: Sequence[ContainerInfo], critical_services: Sequence[str]) -> ReadinessVerdict:
    """Decide whether every critical service's containers are running and healthy."""
    missing = missing_services(containers, critical_services)
    if missing:
        return ReadinessVerdict(Readiness.FAILED, f"no container for critical service(s) {', '.join(missing)}")
    critical = [container for container in containers if container.service in critical_services]
    dead = [
        container
        for container in critical
        if container.status in ("exited", "dead") and container.restart_policy == "no"
    ]
    if dead:
        described = ", ".join(f"{container.describe()} exit code {container.exit_code}" for container in dead)
        return ReadinessVerdict(Readiness.FAILED, f"critical container(s) stopped and will not restart: {described}")
    waiting = [container for container in critical if not container.ready]
    if waiting:
        return ReadinessVerdict(
            Readiness.WAITING, f"waiting for {', '.join(container.describe() for container in waiting)}"
        )
    return ReadinessVerdict(Readiness.READY, f"all {len(critical)} critical container(s) running and healthy")


def start_waves(containers: Sequence[ContainerInfo]) -> list[list[ContainerInfo]]:
    """Group containers into waves: each container's depends_on services start in an earlier wave.

    Dependencies on services outside `containers` (already running, or not in the project) are
    ignored. A dependency cycle puts the containers left in one last wave, as compose would
    reject it anyway.
    """
    services = {container.service for container in containers}
    remaining = list(containers)
    started: set[str] = set()
    waves: list[list[ContainerInfo]] = []
    while remaining:
        wave = [
            container
            for container in remaining
            if all(dependency in started or dependency not in services for dependency in container.depends_on)
        ]
        if not wave:
            log.warning("depends_on cycle among %s; starting them together", ", ".join(c.name for c in remaining))
            wave = remaining
        waves.append(sorted(wave, key=lambda container: container.name))
        started.update(container.service for container in wave)
        remaining = [container for container in remaining if container not in wave]
    return waves


class ProjectContainers:
    """The containers of one compose project, through the engine adapter."""

    def __init__(self, engine: Engine, project: str, critical_services: Sequence[str]) -> None:
        self.engine = engine
        self.project = project
        self.critical_services = tuple(critical_services)

    def containers(self) -> list[ContainerInfo]:
        return self.engine.project_containers(self.project)

    def start(self, deadline: Deadline, checkpoint: Callable[[], None]) -> list[str]:
        """Start every container of the project that is not running; return the names started."""
        containers = self.containers()
        missing = missing_services(containers, self.critical_services)
        if missing:
            raise EngineError(
                f"compose project {self.project} has no container for {', '.join(missing)} "
                f"({len(containers)} container(s) found); create them on this node with "
                f"`docker compose -p {self.project} create` in the mailcow directory"
            )
        to_start = [container for container in containers if not container.running]
        started: list[str] = []
        for wave in start_waves(to_start):
            checkpoint()
            deadline.check("starting containers")
            self._start_wave(wave)
            started.extend(container.name for container in wave)
        if started:
            log.info("started %d container(s) of %s: %s", len(started), self.project, ", ".join(started))
        return started

    def _start_wave(self, wave: list[ContainerInfo]) -> None:
        errors: list[str] = []
        with ThreadPoolExecutor(max_workers=_PARALLEL_REQUESTS, thread_name_prefix="engine-start") as pool:
            for container, future in [(container, pool.submit(self.engine.start, container)) for container in wave]:
                try:
                    future.result()
                except EngineError as error:
                    log.error("starting %s failed: %s", container.name, error)
                    errors.append(str(error))
        if errors:
            raise EngineError("; ".join(errors))

    def wait_ready(
        self,
        deadline: Deadline,
        checkpoint: Callable[[], None],
        wait: Callable[[float], object],
        interval: float = _READY_POLL_INTERVAL,
    ) -> str:
        """Poll until every critical container runs and is healthy; return the final verdict's reason."""
        last_reason = ""
        while True:
            checkpoint()
            verdict = assess_readiness(self.containers(), self.critical_services)
            if verdict.reason != last_reason:
                log.info("%s", verdict.reason)
                last_reason = verdict.reason
            if verdict.readiness is Readiness.READY:
                return verdict.reason
            if verdict.readiness is Readiness.FAILED:
                raise EngineError(f"compose project {self.project}: {verdict.reason}")
            if deadline.expired:
                raise EngineError(
                    f"compose project {self.project} not ready after {deadline.step}: {verdict.reason}; "
                    "check the containers' logs and health checks"
                )
            wait(min(interval, deadline.remaining()))

    def stop(self, deadline: Deadline) -> list[str]:
        """Stop every running container of the project in parallel; return the names stopped.

        Each container gets its own stop timeout (compose's stop_grace_period), cut short by the
        deadline, after which the engine kills it. Raises EngineError if any is still running.
        """
        active = [container for container in self.containers() if container.status in _ACTIVE_STATUSES]
        if not active:
            return []
        errors: list[str] = []
        with ThreadPoolExecutor(max_workers=max(1, len(active)), thread_name_prefix="engine-stop") as pool:
            futures = []
            for container in active:
                timeout = max(0.0, min(container.stop_timeout, deadline.remaining() - _STOP_MARGIN))
                futures.append((container, pool.submit(self.engine.stop, container, timeout)))
            for container, future in futures:
                try:
                    future.result()
                except EngineError as error:
                    log.error("stopping %s failed: %s", container.name, error)
                    errors.append(str(error))
        still = [container.describe() for container in self.containers() if container.status in _ACTIVE_STATUSES]
        if still:
            raise EngineError(
                f"container(s) of {self.project} still active after stopping: {', '.join(still)}"
                + (f" ({'; '.join(errors)})" if errors else "")
            )
        names = [container.name for container in active]
        log.info("stopped %d container(s) of %s: %s", len(names), self.project, ", ".join(names))
        return names
