"""The container engine through the Docker Engine API (the `docker` SDK's low-level client).

Works with Docker Engine and with podman's Docker-compatible service. Containers belong to the
mailcow compose project through compose's labels, so nothing here depends on container names.
Every request has an explicit timeout; docker, requests and urllib3 errors become EngineError.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions

from mailcow_ha.errors import EngineError

log = logging.getLogger(__name__)

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
DEPENDS_ON_LABEL = "com.docker.compose.depends_on"
"""Set by compose v2: `service:condition:restart` entries separated by commas."""

DEFAULT_STOP_TIMEOUT = 10.0
"""Docker's stop timeout when a container does not set its own StopTimeout."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class ContainerInfo:
    """The state of one container of a compose project, from `inspect`."""

    id: str
    name: str
    service: str
    status: str
    """State.Status: created, running, paused, restarting, removing, exited or dead."""
    health: str | None
    """State.Health.Status (starting, healthy, unhealthy), or None without a health check.
    A container has one when its config defines a test (`Config.Healthcheck.Test`) other than NONE."""
    restart_policy: str
    restart_count: int
    exit_code: int
    depends_on: tuple[str, ...]
    stop_timeout: float

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def ready(self) -> bool:
        """Running, and healthy if it has a health check."""
        return self.running and self.health in (None, "healthy")

    def describe(self) -> str:
        health = "" if self.health is None else f", {self.health}"
        return f"{self.name} ({self.status}{health})"


@dataclass(frozen=True)
class ContainerEvent:
    """One container event of a compose project from the engine's event stream."""

    action: str
    """start, die, stop, kill, oom, restart, health_status: healthy, ... as the engine names it."""
    container_id: str
    name: str
    service: str
    time: float
    exit_code: int | None


def parse_depends_on(label: str | None) -> tuple[str, ...]:
    """Return the service names of compose's depends_on label (`svc:condition:restart,...`)."""
    if not label:
        return ()
    return tuple(entry.split(":", 1)[0] for entry in label.split(",") if entry.strip())


def container_info(data: dict[str, Any]) -> ContainerInfo:
    """Build a ContainerInfo from the JSON of `GET /containers/{id}/json`."""
    state = data.get("State") or {}
    config = data.get("Config") or {}
    labels = config.get("Labels") or {}
    host_config = data.get("HostConfig") or {}
    stop_timeout = config.get("StopTimeout")
    return ContainerInfo(
        id=str(data.get("Id", "")),
        name=str(data.get("Name", "")).lstrip("/"),
        service=str(labels.get(SERVICE_LABEL, "")),
        status=str(state.get("Status", "unknown")),
        health=_health_status(config, state),
        restart_policy=str((host_config.get("RestartPolicy") or {}).get("Name") or "no"),
        restart_count=int(data.get("RestartCount") or 0),
        exit_code=int(state.get("ExitCode") or 0),
        depends_on=parse_depends_on(labels.get(DEPENDS_ON_LABEL)),
        # podman's compatibility API reports 0 when the container sets no StopTimeout.
        stop_timeout=float(stop_timeout)
        if isinstance(stop_timeout, int | float) and stop_timeout > 0
        else DEFAULT_STOP_TIMEOUT,
    )


def has_healthcheck(config: dict[str, Any]) -> bool:
    """Return whether a container's `Config` defines a health check (a Test other than NONE)."""
    test = (config.get("Healthcheck") or {}).get("Test") or []
    return bool(test) and test[0] != "NONE"


def _health_status(config: dict[str, Any], state: dict[str, Any]) -> str | None:
    # podman 4.3 reports State.Health = {"Status": ""} for a container without a health check,
    # so only the container's config shows whether it has one.
    if not has_healthcheck(config):
        return None
    health = state.get("Health") or {}
    return str(health.get("Status") or "starting")


class EventStream:
    """An open stream of container events; iterate it on one thread and `close()` it from any other."""

    def __init__(self, stream: Any, project: str) -> None:
        self._stream = stream
        self._project = project

    def __iter__(self) -> Iterator[ContainerEvent]:
        try:
            for raw in self._stream:
                event = _container_event(raw)
                if event is not None:
                    yield event
        except (requests.exceptions.RequestException, docker.errors.DockerException, OSError, ValueError) as error:
            raise EngineError(f"event stream for compose project {self._project} broke: {error}") from None

    def close(self) -> None:
        try:
            self._stream.close()
        except Exception as error:  # closing a half-dead HTTP stream may raise anything from urllib3
            log.debug("closing the event stream raised %s", error)


def _container_event(raw: dict[str, Any]) -> ContainerEvent | None:
    if (raw.get("Type") or raw.get("type")) != "container":
        return None
    actor = raw.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    exit_code = attributes.get("exitCode")
    return ContainerEvent(
        action=str(raw.get("Action") or raw.get("status") or ""),
        container_id=str(actor.get("ID") or raw.get("id") or ""),
        name=str(attributes.get("name", "")),
        service=str(attributes.get(SERVICE_LABEL, "")),
        time=float(raw.get("timeNano", 0)) / 1e9 if raw.get("timeNano") else float(raw.get("time", 0)),
        exit_code=int(exit_code) if exit_code not in (None, "") else None,
    )


class Engine:
    """A Docker API client for one compose project's containers.

    `request_timeout` bounds every request; a stop additionally gets its stop timeout. The
    client connects on first use (the API version is negotiated then), so constructing an
    Engine never fails.
    """

    def __init__(self, base_url: str, *, request_timeout: float) -> None:
        self.base_url = base_url
        self.request_timeout = request_timeout
        self._client: docker.APIClient | None = None
        self._client_lock = threading.Lock()

    def _api(self) -> docker.APIClient:
        with self._client_lock:
            if self._client is None:
                self._client = self._call(
                    f"connecting to the Docker API at {self.base_url}",
                    lambda: docker.APIClient(base_url=self.base_url, version="auto", timeout=self.request_timeout),
                )
            return self._client

    def _call(self, what: str, function: Callable[[], _T]) -> _T:
        try:
            return function()
        except docker.errors.NotFound as error:
            raise EngineError(f"{what} failed: not found ({_explanation(error)})") from None
        except docker.errors.APIError as error:
            raise EngineError(f"{what} failed: {_explanation(error)}") from None
        except requests.exceptions.Timeout:
            raise EngineError(
                f"{what} timed out after {self.request_timeout:g} s; "
                f"check that the engine at {self.base_url} is responsive"
            ) from None
        except (requests.exceptions.RequestException, docker.errors.DockerException, OSError) as error:
            raise EngineError(
                f"{what} failed: {type(error).__name__}: {error}; check that the engine at {self.base_url} is running"
            ) from None

    def project_containers(self, project: str) -> list[ContainerInfo]:
        """Return every container (running or not) labelled with compose project `project`, by name."""
        api = self._api()
        listed = self._call(
            f"listing the containers of compose project {project}",
            lambda: api.containers(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}),
        )
        found = []
        for summary in listed:
            container_id = str(summary["Id"])
            try:
                found.append(self.inspect(container_id))
            except EngineError as error:
                # A container removed between list and inspect is simply gone.
                log.debug("container %s vanished while listing: %s", container_id[:12], error)
        return sorted(found, key=lambda container: container.name)

    def inspect(self, container_id: str) -> ContainerInfo:
        api = self._api()
        data = self._call(f"inspecting container {container_id[:12]}", lambda: api.inspect_container(container_id))
        return container_info(data)

    def start(self, container: ContainerInfo) -> None:
        """Start a container; starting a running one does nothing."""
        api = self._api()
        self._call(f"starting container {container.name}", lambda: api.start(container.id))

    def stop(self, container: ContainerInfo, timeout: float) -> None:
        """Stop a container, letting the engine send SIGKILL after `timeout` seconds (rounded up)."""
        api = self._api()
        seconds = max(1, int(timeout + 0.999))
        self._call(f"stopping container {container.name}", lambda: api.stop(container.id, timeout=seconds))

    def events(self, project: str) -> EventStream:
        """Open the engine's event stream for the containers of compose project `project`.

        The stream has no read timeout (it is idle while nothing happens); close it from
        another thread to end the iteration.
        """
        api = self._api()
        filters = {"type": "container", "label": f"{PROJECT_LABEL}={project}"}
        stream = self._call(
            f"opening the event stream of project {project}", lambda: api.events(filters=filters, decode=True)
        )
        return EventStream(stream, project)

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _explanation(error: docker.errors.APIError) -> str:
    status = getattr(error, "status_code", None)
    detail = getattr(error, "explanation", None) or str(error)
    return f"HTTP {status}: {detail}" if status else str(detail)
