"""Loop-device volumes with ext4 and multi-mount protection, and a fake /dev/disk/by-id directory.

A LoopVolume is a sparse image file with a loop device on it, formatted ext4 with multi-mount
protection (MMP) and a 1 s `mmp_update_interval`. A mount after an unclean detach then waits
about 11 s instead of the 21 s of the default interval, because the kernel waits about
2 * max(2 * interval, 5) + 1 s. A second loop device on the same file behaves like a second
server seeing the same disk: with MMP, the kernel rejects the second mount.

DeviceDirectory stands in for udev's /dev/disk/by-id on one server: a link
`scsi-0HC_Volume_<id>` appears when the fake cloud API attaches that volume to the server and
disappears when it detaches it (`follow(fake)`), as on a Hetzner server.

Every name includes the test process's pid and a random token; `close()` unmounts what is
mounted from the volume's devices, detaches them and deletes the image, even after a failure.
`private_mount_namespace()` keeps a test's mounts out of other test suites' namespaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import secrets
import shutil
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailcow_ha.adapters import blockdev
from mailcow_ha.failover.marker import VolumeMarker, write_marker

log = logging.getLogger(__name__)

_TOOL_TIMEOUT = 60.0


_CLONE_FS = 0x00000200
_CLONE_NEWNS = 0x00020000
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")


@contextlib.contextmanager
def private_mount_namespace() -> Iterator[None]:
    """Run the calling thread in a new mount namespace with private propagation, then return it.

    Mounts made inside (by this thread, the threads it starts and the processes they spawn) are
    invisible to every other namespace on the machine, and namespaces that other test suites
    create meanwhile do not get copies of them. Without this, a namespace cloned from the host
    while a test volume is mounted would keep that file system alive after the test unmounts it.
    """
    original = os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "making / private")
        yield
    finally:
        # Joining a mount namespace needs a file system context of our own (no CLONE_FS sharing).
        _check(_libc.unshare(_CLONE_FS), "unshare(CLONE_FS)")
        _check(_libc.setns(original, _CLONE_NEWNS), "setns back to the original mount namespace")
        os.close(original)


def _run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=_TOOL_TIMEOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed with {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def device_number(device: Path) -> int:
    return os.stat(device).st_rdev


_LOOP_SET_STATUS64 = 0x4C04
_LOOP_GET_STATUS64 = 0x4C05
_LOOP_INFO64_SIZE = 232
_SIZELIMIT_OFFSET = 32
"""Offset of `lo_sizelimit` in `struct loop_info64` (after lo_device, lo_inode, lo_rdevice, lo_offset)."""
_UNPLUGGED_SIZE = 512


def unplug_loop_device(device: str | Path) -> None:
    """Shrink a loop device to its first sector, so that every later I/O beyond it fails.

    The node that has it sees what a hot-unplugged disk looks like: a mounted ext4 aborts its
    journal, and neither the unmount nor kmmpd can write to the disk any more.
    """
    descriptor = os.open(device, os.O_RDONLY)
    try:
        info = bytearray(_LOOP_INFO64_SIZE)
        fcntl.ioctl(descriptor, _LOOP_GET_STATUS64, info)
        struct.pack_into("Q", info, _SIZELIMIT_OFFSET, _UNPLUGGED_SIZE)
        fcntl.ioctl(descriptor, _LOOP_SET_STATUS64, bytes(info))
    finally:
        os.close(descriptor)


def lose_while_mounted(device: Path, mount_point: Path, files: dict[str, str]) -> None:
    """Mount `device`, write and sync `files`, then unplug the device and unmount it.

    This is a node that lost the volume with the file system mounted (a crash, a power-off, a
    detach before its unmount): the synced files are on the disk, the journal needs recovery,
    and the MMP block stays active with this kernel's host name in it.
    """
    mount_point.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "ext4", str(device), str(mount_point))
    try:
        for name, text in files.items():
            path = mount_point / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        _run("sync", "-f", str(mount_point))
        unplug_loop_device(device)
    finally:
        # The unmount succeeds but cannot write the clean MMP sequence to the unplugged device.
        subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=_TOOL_TIMEOUT, check=False)


@dataclass
class LoopVolume:
    """An image file, the loop devices on it, and the directory holding both."""

    workdir: Path
    image: Path
    device: Path
    extra_devices: list[Path] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        *,
        size_mb: int = 64,
        filesystem: str | None = "ext4",
        mmp: bool = True,
        parent: Path | None = None,
    ) -> LoopVolume:
        """Create the image and its loop device, formatted as asked (None leaves it blank)."""
        workdir = Path(tempfile.mkdtemp(prefix=f"mcha-loop-{os.getpid()}-{secrets.token_hex(3)}-", dir=parent))
        image = workdir / "volume.img"
        with image.open("wb") as stream:
            stream.truncate(size_mb * 1024 * 1024)
        device = Path(_run("losetup", "--find", "--show", str(image)).strip())
        volume = cls(workdir, image, device)
        try:
            if filesystem == "ext4":
                options = ["-O", "mmp", "-E", "mmp_update_interval=1"] if mmp else []
                _run("mkfs.ext4", "-q", "-F", *options, str(device))
            elif filesystem is not None:
                _run(f"mkfs.{filesystem}", "-q", str(device))
        except BaseException:
            volume.close()
            raise
        return volume

    def second_device(self) -> Path:
        """Attach another loop device to the same image, as a second server seeing the same disk."""
        device = Path(_run("losetup", "--find", "--show", str(self.image)).strip())
        self.extra_devices.append(device)
        return device

    def prepare(
        self, *, cluster: str, volume_id: int, project: str | None, marker: bool = True, directories: Iterable[str] = ()
    ) -> None:
        """Lay out the volume as `mailcow-ha init-data` leaves it: marker, project directory, subdirectories."""
        mount_point = self.workdir / "prepare"
        mount_point.mkdir(exist_ok=True)
        _run("mount", "-t", "ext4", str(self.device), str(mount_point))
        try:
            if marker:
                write_marker(mount_point, VolumeMarker(cluster, volume_id, "2026-01-01T00:00:00Z"))
            if project is not None:
                (mount_point / project).mkdir()
                for directory in directories:
                    (mount_point / project / directory).mkdir()
        finally:
            _run("umount", str(mount_point))

    def mount_points(self) -> list[str]:
        """Return where this volume's devices are mounted in this mount namespace."""
        numbers = {device_number(device) for device in [self.device, *self.extra_devices]}
        return [entry.mount_point for entry in blockdev.read_mountinfo() if entry.device_number in numbers]

    def close(self) -> None:
        for mount_point in reversed(self.mount_points()):
            result = subprocess.run(
                ["umount", mount_point], capture_output=True, text=True, timeout=_TOOL_TIMEOUT, check=False
            )
            if result.returncode != 0:
                log.warning("cleanup: umount %s failed: %s; detaching lazily", mount_point, result.stderr.strip())
                subprocess.run(
                    ["umount", "--lazy", mount_point], capture_output=True, timeout=_TOOL_TIMEOUT, check=False
                )
        for device in [self.device, *self.extra_devices]:
            subprocess.run(
                ["losetup", "--detach", str(device)], capture_output=True, timeout=_TOOL_TIMEOUT, check=False
            )
        shutil.rmtree(self.workdir, ignore_errors=True)


class DeviceDirectory:
    """A stand-in for one server's /dev/disk/by-id, with links named as Hetzner names volumes."""

    def __init__(self, path: Path, server_id: int, devices: dict[int, Path]) -> None:
        self.path = path
        self.server_id = server_id
        self.devices = dict(devices)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.changes: list[tuple[str, int]] = []
        self.on_change: Callable[[str, int], None] | None = None

    def link(self, volume_id: int) -> Path:
        return self.path / f"scsi-0HC_Volume_{volume_id}"

    def attach(self, volume_id: int) -> None:
        with self._lock:
            link = self.link(volume_id)
            if not link.is_symlink():
                link.symlink_to(self.devices[volume_id])
            self.changes.append(("attached", volume_id))
        if self.on_change is not None:
            self.on_change("attached", volume_id)

    def detach(self, volume_id: int) -> None:
        with self._lock:
            self.link(volume_id).unlink(missing_ok=True)
            self.changes.append(("detached", volume_id))
        if self.on_change is not None:
            self.on_change("detached", volume_id)

    def follow(self, fake: Any) -> Callable[[], None]:
        """Create and remove links as the fake cloud attaches and detaches volumes; return the unsubscribe function."""

        def on_event(event: dict[str, Any]) -> None:
            volume_id = event.get("volume")
            if volume_id not in self.devices or event.get("server") != self.server_id:
                return
            if event["kind"] == "volume.attached":
                self.attach(volume_id)
            elif event["kind"] == "volume.detached":
                self.detach(volume_id)

        unsubscribe: Callable[[], None] = fake.subscribe(on_event)
        return unsubscribe
