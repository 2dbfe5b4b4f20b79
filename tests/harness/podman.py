"""A podman Docker-API service with its own storage, and small local images named like mailcow's.

Each PodmanService lives in one temporary directory: storage root (vfs driver, so no overlay
mounts are left behind), runroot, network config dir, containers.conf and the API socket. The
containers.conf applies the two changes podman 4.3 needs on this kind of machine: runc with the
cgroupfs manager (crun rejects the hybrid cgroup layout) and `nofile`/`nproc` ulimits below the
machine's hard limits. Containers get no network (`netns="none"`), so nothing touches the host's
firewall or bridges.

No registry can be reached, so images are imported from a tar of a busybox-static root file
system. One image carries a small service script (`/usr/local/bin/mailcow-test-service`) whose
behaviour is set per container by environment variables:

- `SERVICE_MODE=healthy` (default) marks itself healthy and runs until SIGTERM;
  `unhealthy` runs but never passes its health check; `exit` exits at once with
  `SERVICE_EXIT_CODE`.
- With a bind mount at /data, it appends one line to /data/started at every start.

Without systemd, podman never runs health checks by itself: `State.Health` stays `starting` until
`podman healthcheck run NAME` is called. HealthDriver does that in a background thread for the
containers that are running and not yet healthy (or for all of them).

Usage:
    service = PodmanService.start()
    project = MailcowProject.create(service, "mcha1234", data_dir=...)
    ...
    service.close()
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from harness.loopdev import private_mount_namespace

log = logging.getLogger(__name__)

COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"
COMPOSE_NUMBER_LABEL = "com.docker.compose.container-number"
COMPOSE_DEPENDS_LABEL = "com.docker.compose.depends_on"

BASE_IMAGE = "localhost/mailcow-test/base:latest"
SERVICE_SCRIPT = "/usr/local/bin/mailcow-test-service"

# The services of mailcow-dockerized whose containers the tests create, with the compose
# dependencies that matter for start order (mailcow's compose file has more of both).
MAILCOW_SERVICES: dict[str, tuple[str, ...]] = {
    "unbound-mailcow": (),
    "redis-mailcow": (),
    "rspamd-mailcow": ("redis-mailcow", "unbound-mailcow"),
    "php-fpm-mailcow": ("redis-mailcow",),
    "dovecot-mailcow": ("redis-mailcow",),
    "postfix-mailcow": ("unbound-mailcow",),
    "nginx-mailcow": ("php-fpm-mailcow", "redis-mailcow"),
}

_SERVICE_SCRIPT_TEXT = textwrap.dedent(
    """\
    #!/bin/sh
    # Stand-in for a mailcow service: stops on SIGTERM at once, health set by SERVICE_MODE.
    trap 'exit 0' TERM INT
    mode="${SERVICE_MODE:-healthy}"
    if [ "$mode" = exit ]; then
        exit "${SERVICE_EXIT_CODE:-1}"
    fi
    if [ -d /data ]; then
        echo "$(date +%s) ${SERVICE_NAME:-unknown}" >> /data/started
    fi
    if [ "$mode" = healthy ]; then
        touch /tmp/healthy
    fi
    while :; do
        sleep 1 &
        wait $!
    done
    """
)

_BUSYBOX_APPLETS = ("sh", "sleep", "touch", "test", "date", "echo", "cat", "mkdir", "rm", "ls", "true", "false")

_STARTUP_TIMEOUT = 20.0
_COMMAND_TIMEOUT = 60.0


@dataclass
class PodmanService:
    """One `podman system service` process and the directory holding everything it uses."""

    workdir: Path
    process: subprocess.Popen[bytes]
    client: docker.APIClient = field(repr=False)

    @property
    def socket_path(self) -> Path:
        return self.workdir / "podman.sock"

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket_path}"

    @classmethod
    def start(cls, parent: Path | None = None) -> PodmanService:
        """Create the directory and configuration, start the service, wait for its API, import the image."""
        workdir = Path(tempfile.mkdtemp(prefix=f"mcha-podman-{os.getpid()}-", dir=parent))
        _write_containers_conf(workdir)
        log_file = (workdir / "service.log").open("wb")
        process = subprocess.Popen(
            [*_podman_argv(workdir), "system", "service", "--time=0", f"unix://{workdir / 'podman.sock'}"],
            env=_podman_env(workdir),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log_file.close()
        try:
            client = _wait_for_api(workdir / "podman.sock", process)
            service = cls(workdir, process, client)
            service.import_base_image()
        except BaseException:
            _terminate(process)
            _remove_workdir(workdir)
            raise
        return service

    def podman(
        self, *args: str, check: bool = True, timeout: float = _COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run the podman CLI against this service's storage."""
        return subprocess.run(
            [*_podman_argv(self.workdir), *args],
            env=_podman_env(self.workdir),
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def import_base_image(self) -> None:
        rootfs = self.workdir / "rootfs"
        for directory in ("bin", "tmp", "data", "usr/local/bin", "proc", "sys", "dev", "etc"):
            (rootfs / directory).mkdir(parents=True, exist_ok=True)
        (rootfs / "tmp").chmod(0o1777)
        shutil.copy2(shutil.which("busybox") or "/bin/busybox", rootfs / "bin" / "busybox")
        for applet in _BUSYBOX_APPLETS:
            (rootfs / "bin" / applet).symlink_to("busybox")
        script = rootfs / SERVICE_SCRIPT.lstrip("/")
        script.write_text(_SERVICE_SCRIPT_TEXT, encoding="utf-8")
        script.chmod(0o755)
        archive = self.workdir / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True, timeout=_COMMAND_TIMEOUT)
        self.podman("import", "--change", f'CMD ["{SERVICE_SCRIPT}"]', str(archive), BASE_IMAGE)
        shutil.rmtree(rootfs)
        archive.unlink()

    def tag_image(self, name: str) -> str:
        """Tag the base image as `name` (for example localhost/mailcow/postfix-mailcow:test)."""
        self.podman("tag", BASE_IMAGE, name)
        return name

    def run_healthcheck(self, name: str) -> bool:
        """Run the container's health check once, as podman's systemd timer would; return whether it passed."""
        result = self.podman("healthcheck", "run", name, check=False)
        return result.returncode == 0

    def inspect(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = self.client.inspect_container(name)
        return data

    def project_containers(self, project: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.client.containers(
            all=True, filters={"label": f"{COMPOSE_PROJECT_LABEL}={project}"}
        )
        return found

    def remove_project(self, project: str) -> None:
        """Remove every container of `project`, running or not."""
        for container in self.project_containers(project):
            self.client.remove_container(container["Id"], force=True)

    def close(self) -> None:
        """Remove every container, stop the service and delete the directory."""
        try:
            self.podman("rm", "--all", "--force", "--time", "0", check=False)
        except subprocess.TimeoutExpired:
            log.warning("podman rm --all timed out in %s", self.workdir)
        self.client.close()
        _terminate(self.process)
        _remove_workdir(self.workdir)


@dataclass
class MailcowProject:
    """Containers named and labelled the way docker compose creates mailcow's, created and stopped."""

    service: PodmanService
    name: str
    containers: dict[str, str]
    """Compose service name -> container name."""

    @classmethod
    def create(
        cls,
        service: PodmanService,
        name: str,
        *,
        services: dict[str, tuple[str, ...]] | None = None,
        data_dir: Path | None = None,
        modes: dict[str, str] | None = None,
    ) -> MailcowProject:
        """Create one stopped container per service, as `docker compose create` would.

        With `data_dir`, every container bind-mounts `<data_dir>/<service>` at /data, so a
        running container keeps the shared volume busy the way mailcow's do. `modes` sets
        SERVICE_MODE per service (healthy, unhealthy, exit).
        """
        services = MAILCOW_SERVICES if services is None else services
        modes = modes or {}
        containers = {}
        for compose_service, depends_on in services.items():
            container_name = f"{name}-{compose_service}-1"
            image = service.tag_image(f"localhost/mailcow/{compose_service}:test")
            labels = {
                COMPOSE_PROJECT_LABEL: name,
                COMPOSE_SERVICE_LABEL: compose_service,
                COMPOSE_NUMBER_LABEL: "1",
                COMPOSE_DEPENDS_LABEL: ",".join(f"{dependency}:service_started:false" for dependency in depends_on),
            }
            binds = []
            if data_dir is not None:
                binds.append(f"{data_dir / compose_service}:/data:rw")
            host_config = service.client.create_host_config(network_mode="none", binds=binds or None)
            service.client.create_container(
                image,
                name=container_name,
                labels=labels,
                environment={"SERVICE_NAME": compose_service, "SERVICE_MODE": modes.get(compose_service, "healthy")},
                healthcheck={
                    "test": ["CMD-SHELL", "test -f /tmp/healthy"],
                    "interval": 1_000_000_000,
                    "timeout": 5_000_000_000,
                    "retries": 1,
                },
                host_config=host_config,
                stop_signal="SIGTERM",
            )
            containers[compose_service] = container_name
        return cls(service, name, containers)

    def states(self) -> dict[str, str]:
        """Compose service -> State.Status (created, running, exited, ...)."""
        return {svc: self.service.inspect(container)["State"]["Status"] for svc, container in self.containers.items()}

    def running(self) -> list[str]:
        return sorted(svc for svc, status in self.states().items() if status == "running")

    def remove(self) -> None:
        self.service.remove_project(self.name)


class HealthDriver:
    """Run `podman healthcheck run` for a project's running containers every `interval` seconds.

    By default only containers that are not yet healthy are checked, which is all a promote
    waits for and keeps the CPU cost low. `pause()` stops checking, so a test can hold a promote
    in its wait for healthy containers.
    """

    def __init__(self, service: PodmanService, project: str, *, interval: float = 0.2, recheck_healthy: bool = False):
        self._service = service
        self._project = project
        self._interval = interval
        self._recheck_healthy = recheck_healthy
        self._stop = threading.Event()
        self._paused = threading.Event()
        self.runs = 0
        self._thread = threading.Thread(target=self._loop, name=f"healthdriver-{project}", daemon=True)

    def __enter__(self) -> HealthDriver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=_COMMAND_TIMEOUT)

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            if self._paused.is_set():
                continue
            try:
                names = self._due_names()
            except docker.errors.DockerException as error:
                log.warning("health driver could not list containers: %s", error)
                continue
            threads = [threading.Thread(target=self._service.run_healthcheck, args=(name,)) for name in names]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(_COMMAND_TIMEOUT)
            self.runs += len(threads)

    def _due_names(self) -> list[str]:
        due = []
        for container in self._service.project_containers(self._project):
            if container.get("State") != "running":
                continue
            name = container["Names"][0].lstrip("/")
            if not self._recheck_healthy:
                health = self._service.inspect(name)["State"].get("Health") or {}
                if health.get("Status") == "healthy":
                    continue
            due.append(name)
        return due


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns a truthy value, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _podman_argv(workdir: Path) -> list[str]:
    return [
        "podman",
        "--root",
        str(workdir / "root"),
        "--runroot",
        str(workdir / "runroot"),
        "--storage-driver",
        "vfs",
    ]


def _podman_env(workdir: Path) -> dict[str, str]:
    environment = dict(os.environ)
    environment["CONTAINERS_CONF"] = str(workdir / "containers.conf")
    environment.pop("CONTAINER_HOST", None)
    return environment


def _write_containers_conf(workdir: Path) -> None:
    lines = [
        "[containers]",
        'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]',
        'netns = "none"',
        "",
        "[network]",
        f'network_config_dir = "{workdir / "networks"}"',
        "",
        "[engine]",
        'runtime = "runc"',
        'cgroup_manager = "cgroupfs"',
        'events_logger = "file"',
        f'events_logfile_path = "{workdir / "events.log"}"',
        f'tmp_dir = "{workdir / "tmp"}"',
        f'volume_path = "{workdir / "volumes"}"',
        "",
    ]
    (workdir / "containers.conf").write_text("\n".join(lines), encoding="utf-8")


def _wait_for_api(socket_path: Path, process: subprocess.Popen[bytes]) -> docker.APIClient:
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_text = (socket_path.parent / "service.log").read_text(errors="replace")
            raise RuntimeError(f"podman system service exited with {process.returncode}: {log_text[-2000:]}")
        if socket_path.exists():
            try:
                client = docker.APIClient(base_url=f"unix://{socket_path}", version="auto", timeout=30)
                client.ping()
                return client
            except docker.errors.DockerException:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"podman API at {socket_path} did not answer within {_STARTUP_TIMEOUT} s")


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _remove_workdir(workdir: Path) -> None:
    """Unmount whatever podman left mounted below `workdir` (shm, for example), then delete it."""
    for mount_point in _mounts_below(workdir):
        subprocess.run(["umount", "--lazy", mount_point], check=False, capture_output=True, timeout=_COMMAND_TIMEOUT)
    shutil.rmtree(workdir, ignore_errors=True)


def _mounts_below(directory: Path) -> list[str]:
    prefix = str(directory) + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            mount_point = line.split()[4].encode().decode("unicode_escape")
            if mount_point.startswith(prefix):
                found.append(mount_point)
    return sorted(found, key=len, reverse=True)


def container_names(containers: Iterable[dict[str, Any]]) -> list[str]:
    return sorted(container["Names"][0].lstrip("/") for container in containers)


def dump_state(service: PodmanService, project: str) -> str:
    """Return a JSON summary of the project's containers, for assertion messages."""
    summary: list[dict[str, Any]] = []
    for container in service.project_containers(project):
        state = service.inspect(container["Id"])["State"]
        summary.append(
            {
                "name": container["Names"][0],
                "status": state.get("Status"),
                "health": (state.get("Health") or {}).get("Status"),
            }
        )
    return json.dumps(summary, indent=1)


@pytest.fixture(scope="module")
def podman() -> Iterator[PodmanService]:
    """A podman service for one test module, in the module's own mount namespace.

    Everything the module mounts, podman's containers included, stays in that namespace, so that
    namespaces other test runs create meanwhile do not keep a test volume busy.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root: podman's storage, loop devices and a mount namespace")
    with private_mount_namespace():
        service = PodmanService.start()
        try:
            yield service
        finally:
            service.close()
