"""One cluster node for promote and demote tests, built from real parts and the fake cloud API.

`failover_node(podman)` yields a FailoverNode with these parts:
- a fake Hetzner Cloud API served on loopback, with a two-server cluster in it. This node is
  server 1, and the volume and the floating IP start on server 2;
- a loop-device volume with ext4 and multi-mount protection, prepared as `mailcow-ha init-data`
  leaves it;
- a device directory whose `scsi-0HC_Volume_<id>` link follows the fake's attachments for
  server 1;
- mailcow-like containers in a podman service, and a node config pointing every path at these.
Everything is removed on exit, even after a failure. Start the podman service and build the
node inside `harness.loopdev.private_mount_namespace()`, so that the node's mounts stay out of
other test suites' namespaces (and the containers see them).

Run `python -m harness.failovernode promote CONFIG` to run an automatic promote (kind
`failover`) in a separate process, for tests that kill it half-way.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.fakecloud.testing import FakeCloudEnv, FakeCluster, serve_fake
from harness.loopdev import DeviceDirectory, LoopVolume
from harness.nodeconfig import deep_update, node_config_dict, write_node_config
from harness.podman import MAILCOW_SERVICES, HealthDriver, MailcowProject, PodmanService
from mailcow_ha.adapters import blockdev
from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.config import NodeConfig, load_config, parse_config
from mailcow_ha.failover.history import FailoverRecord, HistoryStore
from mailcow_ha.failover.transitions import CancelToken
from mailcow_ha.failover.wiring import Failover, build_failover


@dataclass
class SentAlert:
    event: AlertEvent
    reason: str
    details: dict[str, str]


@dataclass
class RecordingAlerter:
    """An Alerter that keeps every alert in memory, for assertions."""

    sent: list[SentAlert] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, event: AlertEvent, reason: str, details: dict[str, str] | None = None) -> None:
        with self._lock:
            self.sent.append(SentAlert(event, reason, dict(details or {})))

    def events(self) -> list[AlertEvent]:
        with self._lock:
            return [alert.event for alert in self.sent]

    def reasons(self, event: AlertEvent) -> list[str]:
        with self._lock:
            return [alert.reason for alert in self.sent if alert.event is event]


# Short bounds so that failing tests fail in seconds, with room for a loaded 2-core machine.
TEST_DEADLINES = {
    "cloud_step": 10.0,
    "device": 5.0,
    "mount": 20.0,
    "containers_healthy": 30.0,
    "containers_stop": 15.0,
    "holders_term": 1.0,
    "unmount": 10.0,
    "promote": 90.0,
    "engine_request": 10.0,
    "transition_lock": 10.0,
}


@dataclass
class FailoverNode:
    """Server 1 of a fake two-server cluster, with everything promote and demote touch."""

    env: FakeCloudEnv
    cluster: FakeCluster
    config: NodeConfig
    config_path: Path
    volume: LoopVolume
    devices: DeviceDirectory
    podman: PodmanService
    project: MailcowProject
    alerter: RecordingAlerter
    workdir: Path

    @property
    def server_id(self) -> int:
        return self.cluster.server_ids[0]

    @property
    def other_server_id(self) -> int:
        return self.cluster.server_ids[1]

    @property
    def mount_point(self) -> Path:
        return self.config.paths.mount_point

    def failover(self) -> Failover:
        """Wire promote and demote to the fake API (through hcloud), podman and the loop device."""
        return build_failover(self.config, self.alerter)

    def health_driver(self, **options: Any) -> HealthDriver:
        return HealthDriver(self.podman, self.project.name, **options)

    def mounted(self) -> bool:
        """Return whether the volume's loop device is mounted on the node's mount point."""
        mounts = blockdev.mounts_at(self.mount_point, blockdev.read_mountinfo())
        return bool(mounts) and mounts[-1].device_number == os.stat(self.volume.device).st_rdev

    def volume_holder(self) -> int | None:
        return self.env.fake.volumes[self.cluster.volume_id].server

    def floating_ip_holders(self) -> list[int | None]:
        return [self.env.fake.floating_ips[fip_id].server for fip_id in self.cluster.floating_ip_ids]

    def history(self) -> list[FailoverRecord]:
        return HistoryStore(self.config.paths.state_dir).read().records


def master_token() -> CancelToken:
    return CancelToken("keepalived reported MASTER")


@contextlib.contextmanager
def failover_node(
    podman: PodmanService,
    *,
    volume_project: str | None = "",
    marker: bool = True,
    filesystem: str | None = "ext4",
    mmp: bool = True,
    modes: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    floating_ips: int = 1,
) -> Iterator[FailoverNode]:
    """Build a FailoverNode and remove it afterwards.

    `volume_project` names the project directory created on the volume: "" (default) creates
    the node's own project name, None creates none. `overrides` maps dotted config keys to values.
    """
    token = secrets.token_hex(4)
    workdir = Path(tempfile.mkdtemp(prefix=f"mcha-node-{os.getpid()}-{token}-"))
    project_name = f"mcha{token}"
    cluster_name = f"mcha-{token}"
    mount_point = workdir / "mnt"
    with serve_fake() as env:
        cluster = env.cluster(cluster_name, nodes=2, volume_on=2, ip_on=2, floating_ips=floating_ips)
        volume = LoopVolume.create(filesystem=filesystem, mmp=mmp, parent=workdir)
        project: MailcowProject | None = None
        unsubscribe = None
        try:
            if filesystem == "ext4":
                volume.prepare(
                    cluster=cluster_name,
                    volume_id=cluster.volume_id,
                    project=project_name if volume_project == "" else volume_project,
                    marker=marker,
                    directories=MAILCOW_SERVICES,
                )
            devices = DeviceDirectory(workdir / "by-id", cluster.server_ids[0], {cluster.volume_id: volume.device})
            unsubscribe = devices.follow(env.fake)
            document = _config_document(
                env, cluster, workdir, cluster_name=cluster_name, project_name=project_name, podman=podman
            )
            for key, value in (overrides or {}).items():
                document = deep_update(document, key, value)
            config = parse_config(document)
            config_path = write_node_config(workdir / "node.yaml", document)
            project = MailcowProject.create(podman, project_name, data_dir=mount_point / project_name, modes=modes)
            # podman creates missing bind-mount sources when it creates a container; on a standby the
            # mount point must stay an empty directory of the root disk.
            shutil.rmtree(mount_point / project_name, ignore_errors=True)
            yield FailoverNode(
                env, cluster, config, config_path, volume, devices, podman, project, RecordingAlerter(), workdir
            )
        finally:
            if project is not None:
                project.remove()
            if unsubscribe is not None:
                unsubscribe()
            volume.close()
            shutil.rmtree(workdir, ignore_errors=True)


def _config_document(
    env: FakeCloudEnv,
    cluster: FakeCluster,
    workdir: Path,
    *,
    cluster_name: str,
    project_name: str,
    podman: PodmanService,
) -> dict[str, Any]:
    hetzner = env.hetzner_section(
        cluster,
        1,
        request_timeout=2.0,
        connect_timeout=1.0,
        poll_interval=0.05,
        retry_backoff_initial=0.05,
        retry_backoff_max=0.5,
    )
    return node_config_dict(
        cluster=cluster_name,
        node={"name": f"{cluster_name}-1", "index": 1, "private_ip": cluster.private_ips[0]},
        peers=[],
        hetzner=hetzner,
        mailcow={"project_name": project_name, "critical_services": list(MAILCOW_SERVICES)},
        paths={
            "device_dir": str(workdir / "by-id"),
            "mount_point": str(workdir / "mnt"),
            "docker_socket": podman.base_url,
            "state_dir": str(workdir / "state"),
            "run_dir": str(workdir / "run"),
            "keepalived_fifo": str(workdir / "run" / "keepalived.fifo"),
            "health_file": str(workdir / "run" / "health"),
        },
        deadlines=dict(TEST_DEADLINES),
    )


def main(argv: list[str]) -> int:
    """Run an automatic promote for the node config at argv[1] (a test kills this process half-way)."""
    if len(argv) != 2 or argv[0] != "promote":
        print("usage: python -m harness.failovernode promote CONFIG", file=sys.stderr)
        return 2
    config = load_config(Path(argv[1]))
    failover = build_failover(config, RecordingAlerter())
    failover.promote(master_token())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
