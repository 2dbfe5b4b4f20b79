"""A node's container engine: podman's Docker API inside the node, and mailcow's containers.

Each node runs `podman system service` in its own namespaces with its own storage, so the
runtime talks to it through `paths.docker_socket` exactly as it would to Docker Engine. The
containers are created (not started) at boot, named and labelled as docker compose names
mailcow's, from one small busybox image (tests/lab/images): `postfix-mailcow` serves SMTP on
the node's port 25 and writes every accepted message to the shared volume, the others keep a
data directory on the shared volume busy, as mailcow's containers do.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import docker

from lab.node import NodeMachine
from lab.shell import LabError

log = logging.getLogger(__name__)

IMAGE_SOURCES = Path(__file__).resolve().parent / "images"
LAB_IMAGE = "localhost/mailcow-lab/service:latest"
SMTP_SERVICE = "postfix-mailcow"
SERVICE_VOLUMES = {
    "postfix-mailcow": "vmail-vol-1",
    "dovecot-mailcow": "vmail-index-vol-1",
    "redis-mailcow": "redis-vol-1",
    "rspamd-mailcow": "rspamd-vol-1",
    "php-fpm-mailcow": "sogo-web-vol-1",
    "nginx-mailcow": "crypt-vol-1",
    "unbound-mailcow": "postfix-vol-1",
}
"""Each stand-in service's data directory under `<mount point>/<project>/`."""
CONTAINER_MOUNT = "/srv/mailcow-data"
"""Where each container sees the shared volume's mount point."""
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"
COMPOSE_NUMBER_LABEL = "com.docker.compose.container-number"
_BUSYBOX = Path("/bin/busybox")
_TESTS_DIR = Path(__file__).resolve().parent.parent
_STARTUP_TIMEOUT = 30.0
_PING_TIMEOUT = 5.0


def build_image_tar(target: Path) -> Path:
    """Write the lab image's root file system (busybox-static and the lab scripts) as a tar file."""
    if not _BUSYBOX.exists():
        raise LabError("/bin/busybox not found; run scripts/install-system-packages (busybox-static)")
    applets = sorted({name for name in _run_busybox_list() if name and "/" not in name} - {"busybox"})
    with tarfile.open(target, "w") as archive:
        for directory in ("bin", "tmp", "data", "var", "var/vmail", "usr", "usr/local", "usr/local/bin", "proc", "etc"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            archive.addfile(info)
        archive.add(_BUSYBOX, "bin/busybox")
        for applet in applets:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            archive.addfile(link)
        for script in ("smtp-session", "mailcow-lab-service"):
            archive.add(IMAGE_SOURCES / script, f"usr/local/bin/{script}")
        passwd = b"root:x:0:0:root:/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        archive.addfile(info, io.BytesIO(passwd))
    return target


def _run_busybox_list() -> list[str]:
    result = subprocess.run([str(_BUSYBOX), "--list"], capture_output=True, text=True, timeout=10, check=True)
    return result.stdout.split()


class NodeEngine:
    """The podman service of one node and the mailcow project's containers in it."""

    def __init__(self, node: NodeMachine, project: str, mount_point: Path) -> None:
        self.node = node
        self.project = project
        self.mount_point = mount_point
        self.work_dir = node.node_dir / "podman"
        self.socket_path = self.work_dir / "podman.sock"

    @property
    def socket_url(self) -> str:
        return f"unix://{self.socket_path}"

    def podman_argv(self) -> list[str]:
        return [
            "podman",
            "--root",
            str(self.work_dir / "storage"),
            "--runroot",
            "/run/podman-lab",
            "--storage-driver",
            "vfs",
        ]

    def environment(self) -> dict[str, str]:
        return {"CONTAINERS_CONF": str(self.work_dir / "containers.conf"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def write_config(self) -> None:
        """Write the containers.conf that podman 4.3 needs here: runc, cgroupfs, lower ulimits."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "[containers]",
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]',
            "",
            "[network]",
            f'network_config_dir = "{self.work_dir / "networks"}"',
            "",
            "[engine]",
            'runtime = "runc"',
            'cgroup_manager = "cgroupfs"',
            'events_logger = "file"',
            f'events_logfile_path = "{self.work_dir / "events.log"}"',
            'tmp_dir = "/run/podman-lab/tmp"',
            f'volume_path = "{self.work_dir / "volumes"}"',
            "",
        ]
        (self.work_dir / "containers.conf").write_text("\n".join(lines), encoding="utf-8")

    def start(self, cancel: threading.Event | None = None) -> None:
        """Start the node's podman API service and wait until it responds, or until `cancel` is set."""
        self.write_config()
        self.socket_path.unlink(missing_ok=True)
        argv = ["env", *(f"{key}={value}" for key, value in self.environment().items())]
        argv += [*self.podman_argv(), "system", "service", "--time=0", self.socket_url]
        self.node.spawn("podman", argv)
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        stop = cancel or threading.Event()
        while True:
            try:
                with self.client(timeout=_PING_TIMEOUT) as client:
                    client.ping()
                    return
            except (docker.errors.DockerException, OSError):
                if time.monotonic() > deadline:
                    raise LabError(
                        f"podman API of {self.node.name} did not respond within {_STARTUP_TIMEOUT:g} s; "
                        f"see {self.node.log_dir}/podman.log"
                    ) from None
            if stop.wait(0.1):
                raise LabError(f"stopped waiting for the podman API of {self.node.name}: the lab setup was cancelled")

    def client(self, timeout: float = 30.0) -> docker.APIClient:
        return docker.APIClient(base_url=self.socket_url, version="1.41", timeout=timeout)

    def start_health_timer(self) -> None:
        """Start the node's stand-in for podman's health check timers (see lab.healthtimer)."""
        argv = [
            "env",
            f"PYTHONPATH={_TESTS_DIR}",
            sys.executable,
            "-m",
            "lab.healthtimer",
            "--socket",
            str(self.socket_path),
        ]
        self.node.spawn("healthtimer", argv)

    def podman(self, *args: str, timeout: float = 60.0) -> str:
        """Run a podman command inside the node against its storage and return its output."""
        argv = ["env", *(f"{key}={value}" for key, value in self.environment().items()), *self.podman_argv(), *args]
        return self.node.run(argv, timeout=timeout).stdout

    def import_image(self, image_tar: Path) -> None:
        """Import the lab image, unless this node's storage has it from an earlier boot."""
        if LAB_IMAGE in self.podman("images", "--format", "{{.Repository}}:{{.Tag}}"):
            return
        local = self.work_dir / "image.tar"
        shutil.copyfile(image_tar, local)
        self.podman("import", "--change", "CMD=/usr/local/bin/mailcow-lab-service", str(local), LAB_IMAGE)
        local.unlink()

    def create_project(self, services: Sequence[str]) -> None:
        """Create one stopped container per service, as `docker compose create` would, if missing."""
        with self.client() as client:
            existing = {name.lstrip("/") for container in client.containers(all=True) for name in container["Names"]}
            for service in services:
                name = f"{self.project}-{service}-1"
                if name in existing:
                    continue
                volume = SERVICE_VOLUMES.get(service, "postfix-vol-1")
                # The containers bind the mount point itself, which always exists: podman creates a
                # missing bind source, which would put the project's directories on the root disk.
                mount = docker.types.Mount(CONTAINER_MOUNT, str(self.mount_point), type="bind")
                host_config = client.create_host_config(network_mode="host", mounts=[mount])
                client.create_container(
                    LAB_IMAGE,
                    name=name,
                    hostname=self.node.name,
                    labels={
                        COMPOSE_PROJECT_LABEL: self.project,
                        COMPOSE_SERVICE_LABEL: service,
                        COMPOSE_NUMBER_LABEL: "1",
                    },
                    environment={
                        "SERVICE_NAME": service,
                        "SERVICE_DATA": f"{CONTAINER_MOUNT}/{self.project}/{volume}",
                    },
                    healthcheck={
                        "test": ["CMD-SHELL", "test -f /tmp/healthy"],
                        "interval": 1_000_000_000,
                        "timeout": 2_000_000_000,
                        "retries": 1,
                    },
                    host_config=host_config,
                    stop_signal="SIGTERM",
                )
        log.info("node %s: mailcow containers created (%s)", self.node.name, ", ".join(services))

    def running_containers(self) -> list[str]:
        """Return the names of the project's running containers."""
        with self.client(timeout=5.0) as client:
            containers = client.containers(filters={"label": f"{COMPOSE_PROJECT_LABEL}={self.project}"})
        return sorted(container["Names"][0].lstrip("/") for container in containers)
