"""Hetzner volumes as loop devices whose attachment follows the fake cloud API.

Each volume is a sparse image file. Attaching it to a server gives that node a loop device of
its own on the image and a `scsi-0HC_Volume_<id>` link to it in the node's device directory,
as udev makes on a real server. Two loop devices on one image behave like two servers that see
one disk, so the storage fence is the API's one-server-at-a-time rule, as in production.

Detaching removes the link and hot-unplugs the node's loop device. Its size is cut to one
sector, so every later read or write from that node fails with an I/O error, as when the
hypervisor takes a disk away. A mounted ext4 then aborts its journal and turns read-only. This kernel
has no device-mapper, which would otherwise be the natural way to switch a device to errors.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from harness import loopdev
from lab.manifest import Manifest
from lab.shell import LabError, run
from mailcow_ha.adapters import ext4mmp
from mailcow_ha.errors import BlockDeviceError

log = logging.getLogger(__name__)


def device_link_name(volume_id: int) -> str:
    """Return the name under /dev/disk/by-id that Hetzner gives a volume's device."""
    return f"scsi-0HC_Volume_{volume_id}"


@dataclass(frozen=True)
class Attachment:
    """A volume's loop device on one node."""

    volume_id: int
    node: str
    device: str


class VolumeStore:
    """The lab's volume images and their loop devices, keyed by volume id and node name."""

    def __init__(self, lab_dir: Path, manifest: Manifest) -> None:
        self.image_dir = lab_dir / "volumes"
        self.nodes_dir = lab_dir / "nodes"
        self.manifest = manifest
        self._lock = threading.Lock()
        self._attached: dict[int, Attachment] = {}

    def image(self, volume_id: int) -> Path:
        return self.image_dir / f"volume-{volume_id}.img"

    def device_dir(self, node: str) -> Path:
        """Return the node's device directory, its `paths.device_dir` in the node config."""
        return self.nodes_dir / node / "dev" / "disk" / "by-id"

    def create(self, volume_id: int, size_gb: int, filesystem: str | None) -> None:
        """Create a volume's sparse image, formatted as the API's `format` field asks."""
        image = self.image(volume_id)
        if image.exists():
            return
        self.image_dir.mkdir(parents=True, exist_ok=True)
        partial = image.with_suffix(".partial")
        with open(partial, "wb") as stream:
            stream.truncate(size_gb * 1024**3)
        if filesystem is not None:
            if filesystem not in ("ext4", "xfs"):
                raise LabError(f"volume {volume_id} asks for file system {filesystem!r}; the lab formats ext4 or xfs")
            options = ["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"] if filesystem == "ext4" else ["-q"]
            run([f"mkfs.{filesystem}", *options, str(partial)], timeout=60.0)
        partial.replace(image)
        log.info("volume %d: created %d GB image %s (%s)", volume_id, size_gb, image, filesystem or "unformatted")

    def attach(self, volume_id: int, node: str) -> Attachment:
        """Give `node` a loop device on the volume and link it into the node's device directory."""
        with self._lock:
            current = self._attached.get(volume_id)
            if current is not None:
                if current.node == node:
                    return current
                raise LabError(f"volume {volume_id} is still attached to {current.node}; detach it first")
            image = self.image(volume_id)
            if not image.exists():
                raise LabError(f"volume {volume_id} has no image {image}; it was not created through the fake cloud")
            self.manifest.record("loop", str(image), backing_file=str(image))
            device = run(["losetup", "--find", "--show", str(image)], timeout=10.0).stdout.strip()
            link_dir = self.device_dir(node)
            link_dir.mkdir(parents=True, exist_ok=True)
            temporary = link_dir / f".{device_link_name(volume_id)}.new"
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(device)
            temporary.replace(link_dir / device_link_name(volume_id))
            attachment = Attachment(volume_id, node, device)
            self._attached[volume_id] = attachment
        log.info("volume %d: attached to %s as %s", volume_id, node, device)
        return attachment

    def detach(self, volume_id: int) -> Attachment | None:
        """Unplug the volume from the node that has it: the link goes and its I/O fails from now on."""
        with self._lock:
            attachment = self._attached.pop(volume_id, None)
            if attachment is None:
                return None
            link = self.device_dir(attachment.node) / device_link_name(volume_id)
            # The link names the device now in use: a power cycle gives the node a fresh one (see replug).
            if link.is_symlink():
                attachment = Attachment(volume_id, attachment.node, str(link.readlink()))
            link.unlink(missing_ok=True)
            unplug_loop_device(attachment.device)
            # With the device still mounted the kernel only marks it to be freed on last close.
            run(["losetup", "--detach", attachment.device], timeout=10.0, check=False)
        log.info("volume %d: detached from %s (%s unplugged)", volume_id, attachment.node, attachment.device)
        return attachment

    def attachments(self) -> list[Attachment]:
        with self._lock:
            return list(self._attached.values())

    def device_of(self, volume_id: int) -> str | None:
        """Return the loop device of the volume's current attachment, or None."""
        with self._lock:
            attachment = self._attached.get(volume_id)
            return None if attachment is None else attachment.device


def node_devices(device_dir: Path) -> dict[int, str]:
    """Return the loop device of every volume linked in a node's device directory, by volume id."""
    devices = {}
    if device_dir.is_dir():
        for link in device_dir.glob("scsi-0HC_Volume_*"):
            if link.is_symlink():
                devices[int(link.name.rsplit("_", 1)[1])] = str(link.readlink())
    return devices


def replug(device_dir: Path, image_dir: Path, manifest: Manifest) -> list[str]:
    """Give a node that was powered off fresh loop devices for the volumes still attached to it.

    A power cut unplugs the node's devices (see unplug_loop_device); at the next boot the disks
    are there again, as attached volumes are after a real power cycle.
    """
    created = []
    for volume_id, old_device in node_devices(device_dir).items():
        image = image_dir / f"volume-{volume_id}.img"
        manifest.record("loop", str(image), backing_file=str(image))
        device = run(["losetup", "--find", "--show", str(image)], timeout=10.0).stdout.strip()
        link = device_dir / device_link_name(volume_id)
        temporary = device_dir / f".{link.name}.new"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(device)
        temporary.replace(link)
        run(["losetup", "--detach", old_device], timeout=10.0, check=False)
        created.append(device)
    return created


def unplug_loop_device(device: str) -> None:
    """Shrink a loop device to one sector, so that every I/O beyond it fails from now on."""
    try:
        loopdev.unplug_loop_device(device)
    except OSError as error:
        raise LabError(f"unplugging loop device {device} failed: {error.strerror}") from None


def read_mmp_node_name(image: Path) -> str:
    """Return the host name in the MMP block of the ext4 file system in `image`."""
    try:
        block = ext4mmp.read_mmp(image, timeout=30.0)
    except BlockDeviceError as error:
        raise LabError(f"reading the MMP block of {image} failed: {error}") from None
    if block is None:
        raise LabError(f"{image} has no MMP block; run init-data on the shared volume first")
    return block.node_name
