"""init-data on real ext4 file systems on loop devices."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.loopdev import private_mount_namespace
from harness.nodeconfig import deep_update, node_config_dict, write_node_config
from mailcow_ha.cli import main
from mailcow_ha.errors import ExitCode, Refused
from mailcow_ha.failover.marker import VolumeMarker, marker_path, read_marker, write_marker
from mailcow_ha.mailcow import ext4
from mailcow_ha.mailcow.initdata import InitAction, InitRequest, init_data
from mailcow_ha.render.compose import STATEFUL_DIRECTORIES

pytestmark = pytest.mark.integration

CLUSTER = "mailcow-ha-test"
VOLUME_ID = 301
PROJECT = "mailcowdockerized"


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout.strip()


class LoopVolume:
    """A sparse file behind one or more loop devices, like a disk seen by several hosts."""

    def __init__(self, directory: Path, size: str = "64M"):
        self.image = directory / f"volume-{os.getpid()}-{uuid.uuid4().hex[:8]}.img"
        run("truncate", "-s", size, str(self.image))
        self.devices: list[Path] = []
        self.mounts: list[Path] = []

    def attach(self) -> Path:
        device = Path(run("losetup", "--find", "--show", str(self.image)))
        self.devices.append(device)
        return device

    def mount(self, device: Path, target: Path) -> None:
        target.mkdir(exist_ok=True)
        ext4.mount(device, target)
        self.mounts.append(target)

    def unmount_all(self) -> None:
        for target in reversed(self.mounts):
            subprocess.run(["umount", str(target)], capture_output=True, check=False, timeout=60)
        self.mounts.clear()

    def close(self) -> None:
        self.unmount_all()
        for device in self.devices:
            subprocess.run(["losetup", "-d", str(device)], capture_output=True, check=False, timeout=60)
        self.image.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def own_mount_namespace() -> Iterator[None]:
    """Keep each test's mounts out of the namespaces that concurrent test runs create."""
    with private_mount_namespace():
        yield


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[LoopVolume]:
    loop = LoopVolume(tmp_path)
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture
def ext4_device(volume: LoopVolume) -> Path:
    device = volume.attach()
    run("mkfs.ext4", "-q", str(device))
    return device


def request_for(device: Path, tmp_path: Path, cluster: str = CLUSTER) -> InitRequest:
    return InitRequest(
        device=device,
        cluster=cluster,
        volume_id=VOLUME_ID,
        project_name=PROJECT,
        mmp_update_interval=1,
        work_dir=tmp_path / "run",
    )


def seed(volume: LoopVolume, device: Path, tmp_path: Path, write) -> None:
    """Mount the volume, let `write` put files on it, and unmount it again."""
    target = tmp_path / "seed"
    volume.mount(device, target)
    write(target)
    volume.unmount_all()


def test_fresh_volume_prepared(ext4_device, tmp_path):
    decision = init_data(request_for(ext4_device, tmp_path))

    assert decision.action is InitAction.PREPARE
    assert "mmp" in ext4.ext4_features(ext4_device)
    assert ext4.mount_targets(ext4_device) == []
    assert list((tmp_path / "run").iterdir()) == []


def test_marker_and_layout_written(volume, ext4_device, tmp_path):
    init_data(request_for(ext4_device, tmp_path))
    target = tmp_path / "check"
    volume.mount(ext4_device, target)

    marker = read_marker(target)
    assert marker is not None
    assert marker.cluster == CLUSTER
    assert marker.volume_id == VOLUME_ID
    assert oct(marker_path(target).stat().st_mode & 0o777) == oct(0o600)
    for name in STATEFUL_DIRECTORIES:
        assert (target / PROJECT / name).is_dir(), name


def test_second_run_keeps_marker(volume, ext4_device, tmp_path):
    init_data(request_for(ext4_device, tmp_path))
    seed(volume, ext4_device, tmp_path, lambda root: (root / PROJECT / "redis-vol-1").rmdir())

    decision = init_data(request_for(ext4_device, tmp_path))

    assert decision.action is InitAction.COMPLETE_LAYOUT
    target = tmp_path / "check"
    volume.mount(ext4_device, target)
    assert (target / PROJECT / "redis-vol-1").is_dir()


def test_other_cluster_rejected_by_cli(volume, ext4_device, tmp_path, capsys):
    init_data(request_for(ext4_device, tmp_path, cluster="someone-else"))
    document = deep_update(node_config_dict(), "paths", {"run_dir": str(tmp_path / "run")})
    config = write_node_config(tmp_path / "node.yaml", document)

    code = main(["--config", str(config), "init-data", "--device", str(ext4_device), "--mmp-interval", "1"])

    assert code == ExitCode.REFUSED
    assert "belongs to cluster 'someone-else'" in capsys.readouterr().err
    target = tmp_path / "check"
    volume.mount(ext4_device, target)
    marker = read_marker(target)
    assert marker is not None
    assert marker.cluster == "someone-else"


def test_mailcow_data_without_marker_rejected(volume, ext4_device, tmp_path):
    def write(root: Path) -> None:
        (root / PROJECT / "vmail-vol-1").mkdir(parents=True)
        (root / PROJECT / "vmail-vol-1" / "mail").write_text("a message")

    seed(volume, ext4_device, tmp_path, write)

    with pytest.raises(Refused, match="contains mailcow data"):
        init_data(request_for(ext4_device, tmp_path))

    target = tmp_path / "check"
    volume.mount(ext4_device, target)
    assert (target / PROJECT / "vmail-vol-1" / "mail").read_text() == "a message"
    assert not marker_path(target).exists()


def test_corrupt_marker_rejected(volume, ext4_device, tmp_path):
    def write(root: Path) -> None:
        marker_path(root).parent.mkdir()
        marker_path(root).write_text("{not json")

    seed(volume, ext4_device, tmp_path, write)

    with pytest.raises(Refused, match="corrupt"):
        init_data(request_for(ext4_device, tmp_path))


def test_other_volume_id_rejected(volume, ext4_device, tmp_path):
    marker = VolumeMarker(cluster=CLUSTER, volume_id=999, created_at="2026-01-01T00:00:00+00:00")
    seed(volume, ext4_device, tmp_path, lambda root: write_marker(root, marker))

    with pytest.raises(Refused, match="names volume 999"):
        init_data(request_for(ext4_device, tmp_path))


def test_unformatted_device_rejected(volume, tmp_path):
    device = volume.attach()

    with pytest.raises(Refused, match="no file system"):
        init_data(request_for(device, tmp_path))

    assert ext4.filesystem_type(device) is None


def test_mounted_device_rejected(volume, ext4_device, tmp_path):
    volume.mount(ext4_device, tmp_path / "busy")

    with pytest.raises(Refused, match="is mounted on"):
        init_data(request_for(ext4_device, tmp_path))


def test_mmp_blocks_second_host(volume, ext4_device, tmp_path):
    init_data(request_for(ext4_device, tmp_path))
    second_device = volume.attach()
    volume.mount(ext4_device, tmp_path / "host-a")
    (tmp_path / "host-b").mkdir()

    result = subprocess.run(
        ["mount", "-t", "ext4", str(second_device), str(tmp_path / "host-b")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode != 0
    assert ext4.mount_targets(second_device) == []


def test_marker_file_is_json_with_format(volume, ext4_device, tmp_path):
    init_data(request_for(ext4_device, tmp_path))
    target = tmp_path / "check"
    volume.mount(ext4_device, target)

    document = json.loads(marker_path(target).read_text())

    assert set(document) == {"cluster", "volume_id", "created_at", "format_version"}
    assert document["format_version"] == 1


def device_digest(device: Path) -> str:
    digest = hashlib.sha256()
    with device.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_foreign_data(root: Path) -> None:
    (root / "backups").mkdir()
    (root / "backups" / "2026-01-01.tar").write_text("someone's archive")


def write_other_cluster(root: Path) -> None:
    write_marker(root, VolumeMarker(cluster="someone-else", volume_id=VOLUME_ID, created_at="2026-01-01T00:00:00Z"))


@pytest.mark.parametrize("write", [write_foreign_data, write_other_cluster], ids=["foreign-data", "other-cluster"])
def test_rejected_volume_left_unchanged(volume, ext4_device, tmp_path, write):
    seed(volume, ext4_device, tmp_path, write)
    before = device_digest(ext4_device)

    with pytest.raises(Refused):
        init_data(request_for(ext4_device, tmp_path))

    assert "mmp" not in ext4.ext4_features(ext4_device)
    assert device_digest(ext4_device) == before
