"""The shared data volume on this node: take it (device, checks, mount, marker) and release it.

Taking it never formats and never writes to the volume. The checks run in this order, so that
nothing starts on an empty directory of the root disk or on another cluster's data:
1. the by-id device `scsi-0HC_Volume_<id>` resolves to a block device;
2. blkid finds ext4 on it (and ext4 multi-mount protection, unless `volume.require_mmp` is off);
3. a stale MMP block is cleared when a node of this cluster left it (failover.mmpclear);
4. it is mounted on the mount point with explicit options, as the kernel's mount table shows;
5. the marker file names this cluster and this volume;
6. the compose project's data directory `<mount>/<project name>/` exists.

Releasing it stops every process that keeps the file system busy (SIGTERM, then SIGKILL),
syncs, unmounts, and verifies with the mount table that no mount of it is left.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailcow_ha.adapters import blockdev, ext4mmp
from mailcow_ha.adapters.blockdev import BlockDevice, FilesystemProbe, MountEntry
from mailcow_ha.config import NodeConfig
from mailcow_ha.deadline import Clock, Deadline
from mailcow_ha.errors import BlockDeviceError, MailcowHaError, Refused
from mailcow_ha.failover.marker import MARKER_DIR, VolumeMarker, marker_path, marker_problem, read_marker
from mailcow_ha.failover.mmpclear import MmpAction, MmpDecision, decide_mmp

log = logging.getLogger(__name__)

FILESYSTEM = "ext4"
KILL_TIMEOUT = 5.0
"""Seconds to wait for processes to exit after SIGKILL."""
_MAX_STACKED_UNMOUNTS = 8
_IGNORED_TOP_LEVEL = frozenset({MARKER_DIR, "lost+found"})


class VolumeRejected(Refused):
    """The device, its file system, the marker or the project data is not what this node expects."""


class MountAction(enum.StrEnum):
    MOUNT = "mount"
    ALREADY_MOUNTED = "already-mounted"
    REJECT = "reject"


def decide_mount(
    device: BlockDevice, mount_point: Path, at_mount_point: Sequence[MountEntry], device_mounts: Sequence[MountEntry]
) -> tuple[MountAction, str]:
    """Decide whether to mount `device` on `mount_point`, given the mount table; return the action and why."""
    if at_mount_point:
        top = at_mount_point[-1]
        if top.device_number == device.number:
            return MountAction.ALREADY_MOUNTED, f"{device.describe()} is already mounted on {mount_point}"
        return MountAction.REJECT, (
            f"{mount_point} already has {top.source} ({top.fstype}, {top.major}:{top.minor}) mounted on it, "
            f"not the shared volume {device.describe()}; unmount it or fix paths.mount_point"
        )
    elsewhere = sorted({entry.mount_point for entry in device_mounts})
    if elsewhere:
        return MountAction.REJECT, (
            f"the shared volume {device.describe()} is already mounted on {', '.join(elsewhere)}; "
            f"unmount it there before promote mounts it on {mount_point}"
        )
    return MountAction.MOUNT, f"mounting {device.describe()} on {mount_point}"


def filesystem_problem(probe: FilesystemProbe, *, require_mmp: bool) -> str | None:
    """Return why the probed file system must not be mounted as the shared volume, or None."""
    if probe.fstype is None:
        return (
            "no file system signature found; promote never formats a volume. If this is a new cluster, "
            "the volume should have been created with ext4: check it, then run `mailcow-ha init-data`"
        )
    if probe.fstype != FILESYSTEM:
        return f"it holds {probe.fstype}, not ext4; promote never formats a volume, check that it is the right one"
    if require_mmp and "mmp" not in probe.features:
        return (
            "ext4 multi-mount protection is off; run `mailcow-ha init-data` (or `tune2fs -O mmp` on the "
            "unmounted device), or set volume.require_mmp to false to accept it"
        )
    return None


def project_data_problem(entries: Sequence[str], mount_point: Path, project_name: str) -> str | None:
    """Return why `<mount>/<project>/` is missing, naming the project directories that do exist."""
    if project_name in entries:
        return None
    others = sorted(entry for entry in entries if entry not in _IGNORED_TOP_LEVEL)
    found = f"found {', '.join(others)}" if others else "found no project directory at all"
    return (
        f"the compose project's data directory {mount_point / project_name} does not exist ({found}). "
        f"Starting mailcow would start an empty mail server; check mailcow.project_name "
        "(COMPOSE_PROJECT_NAME in mailcow.conf) against the data on the volume"
    )


@dataclass(frozen=True)
class MountedVolume:
    device: BlockDevice
    probe: FilesystemProbe
    marker: VolumeMarker
    newly_mounted: bool


class SharedVolume:
    """The shared data volume's device and mount point on this node."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        member_names: Callable[[], Collection[str]] | None = None,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ):
        """`member_names` returns the cluster's members as last learned (default: the config's peers)."""
        self.device_path = config.volume_device
        self.mount_point = config.paths.mount_point
        self._node_name = config.node.name
        self._extra_mmp_names = tuple(config.volume.mmp_node_names)
        self._member_names = member_names or (lambda: [peer.name for peer in config.peers])
        self._cluster = config.cluster
        self._volume_id = config.hetzner.shared_volume_id
        self._project_name = config.mailcow.project_name
        self._options = config.volume.mount_options
        self._require_mmp = config.volume.require_mmp
        self._term_timeout = config.deadlines.holders_term
        self._clock = clock
        self._sleep = sleep

    # --- reading the node's state, no side effects -------------------------------------------

    def mounted_here(self) -> BlockDevice | None:
        """Return the shared volume's device if it is attached and mounted on the mount point, else None."""
        try:
            device = blockdev.block_device(self.device_path)
        except BlockDeviceError:
            return None
        mounts = blockdev.mounts_at(self.mount_point, blockdev.read_mountinfo())
        return device if mounts and mounts[-1].device_number == device.number else None

    def mount_entries(self) -> list[MountEntry]:
        return blockdev.mounts_at(self.mount_point, blockdev.read_mountinfo())

    # --- promote --------------------------------------------------------------------------------

    def wait_for_device(self, deadline: Deadline, checkpoint: Callable[[], None]) -> BlockDevice:
        device = blockdev.wait_for_device(self.device_path, deadline, sleep=self._sleep, checkpoint=checkpoint)
        log.info("shared volume device %s is present", device.describe())
        return device

    def check_filesystem(self, device: BlockDevice, deadline: Deadline) -> FilesystemProbe:
        probe = blockdev.probe_filesystem(device.real_path, timeout=deadline.remaining())
        problem = filesystem_problem(probe, require_mmp=self._require_mmp)
        if problem is not None:
            raise VolumeRejected(f"shared volume {device.describe()} rejected: {problem}")
        log.info(
            "shared volume %s contains ext4 (UUID %s, multi-mount protection: %s)",
            device.path,
            probe.uuid,
            "mmp" in probe.features,
        )
        return probe

    def settle_mmp(self, device: BlockDevice, probe: FilesystemProbe, deadline: Deadline) -> MmpDecision:
        """Read the MMP block and clear it when a node of this cluster left it active; return the decision.

        Call it only once the API shows the volume attached to this server. Raises VolumeRejected
        while e2fsck has the file system open.
        """
        if blockdev.mounts_of(device.number, blockdev.read_mountinfo()):
            # A promote that resumes: this node's kmmpd keeps the block, which is live, not stale.
            decision = MmpDecision(
                MmpAction.MOUNT,
                f"{device.path} is already mounted on this node; its MMP block is this node's own and stays as it is",
            )
            log.info("shared volume %s: %s", device.path, decision.reason)
            return decision
        has_mmp = "mmp" in probe.features
        block = ext4mmp.read_mmp(device.real_path, timeout=deadline.remaining()) if has_mmp else None
        try:
            members = list(self._member_names())
        except MailcowHaError as error:
            log.warning("the stored members could not be read, so only this node's names count as its own: %s", error)
            members = []
        names = {*members, *self._extra_mmp_names}
        decision = decide_mmp(block, has_mmp=has_mmp, own_name=self._node_name, cluster_names=names)
        if decision.action is MmpAction.KERNEL_CHECK:
            log.warning("shared volume %s: %s", device.path, decision.reason)
        else:
            log.info("shared volume %s: %s", device.path, decision.reason)
        if decision.action is MmpAction.REJECT:
            raise VolumeRejected(f"shared volume {device.describe()} rejected: {decision.reason}")
        if decision.action is MmpAction.CLEAR:
            assert block is not None
            ext4mmp.clear_mmp(device.real_path, timeout=deadline.remaining())
            cleared = ext4mmp.read_mmp(device.real_path, timeout=deadline.remaining())
            if cleared is None or cleared.state is not ext4mmp.MmpState.CLEAN:
                found = "no MMP block" if cleared is None else cleared.describe()
                raise BlockDeviceError(
                    f"clearing the MMP block of {device.describe()} did not take effect ({found}); "
                    "check the device with `dumpe2fs -h`"
                )
            log.info("cleared the stale MMP block of %s (was %s)", device.path, block.describe())
        return decision

    def mount(self, device: BlockDevice, deadline: Deadline) -> bool:
        """Mount the volume unless it is already mounted here; return whether this call mounted it."""
        entries = blockdev.read_mountinfo()
        action, reason = decide_mount(
            device,
            self.mount_point,
            blockdev.mounts_at(self.mount_point, entries),
            blockdev.mounts_of(device.number, entries),
        )
        log.info("%s", reason)
        if action is MountAction.REJECT:
            raise BlockDeviceError(reason)
        if action is MountAction.ALREADY_MOUNTED:
            return False
        self._prepare_mount_point()
        blockdev.mount(device, self.mount_point, fstype=FILESYSTEM, options=self._options, timeout=deadline.remaining())
        return True

    def _prepare_mount_point(self) -> None:
        if self.mount_point.is_symlink() or (self.mount_point.exists() and not self.mount_point.is_dir()):
            raise BlockDeviceError(
                f"mount point {self.mount_point} exists but is not a directory; fix paths.mount_point"
            )
        self.mount_point.mkdir(mode=0o755, parents=True, exist_ok=True)
        leftovers = sorted(os.listdir(self.mount_point))
        if leftovers:
            # Something wrote into the bare directory while the volume was not mounted; mounting hides it.
            log.warning(
                "mount point %s is not empty before mounting (%s); these files are on the root disk and "
                "will be hidden by the mount: move them aside and check how they got there",
                self.mount_point,
                ", ".join(leftovers[:10]),
            )

    def check_contents(self) -> VolumeMarker:
        """Check that the mount point shows this cluster's volume and the compose project's data."""
        mounts = self.mount_entries()
        device = blockdev.block_device(self.device_path)
        if not mounts or mounts[-1].device_number != device.number:
            raise VolumeRejected(
                f"{self.mount_point} is not a mount of the shared volume {device.describe()}; "
                "nothing is started on a directory of the root disk"
            )
        marker = read_marker(self.mount_point)
        problem = marker_problem(marker, cluster=self._cluster, volume_id=self._volume_id)
        if problem is not None:
            raise VolumeRejected(f"{marker_path(self.mount_point)}: {problem}")
        assert marker is not None
        try:
            entries = os.listdir(self.mount_point)
        except OSError as error:
            raise BlockDeviceError(f"{self.mount_point} could not be listed: {error.strerror}") from None
        problem = project_data_problem(entries, self.mount_point, self._project_name)
        if problem is not None:
            raise VolumeRejected(problem)
        if not (self.mount_point / self._project_name).is_dir():
            raise VolumeRejected(f"{self.mount_point / self._project_name} is not a directory")
        return marker

    # --- demote ---------------------------------------------------------------------------------

    def release(self, deadline: Deadline) -> list[str]:
        """Stop the mount's holders, sync and unmount every mount on the mount point; return what was done.

        Raises BlockDeviceError naming the remaining holders when the file system stays mounted.
        """
        done: list[str] = []
        for _ in range(_MAX_STACKED_UNMOUNTS):
            mounts = self.mount_entries()
            if not mounts:
                break
            self._unmount_top(mounts[-1], deadline, done)
        else:
            raise BlockDeviceError(f"{self.mount_point} still has mounts after {_MAX_STACKED_UNMOUNTS} unmounts")
        self._verify_released()
        self._check_other_namespaces()
        return done

    def _unmount_top(self, top: MountEntry, deadline: Deadline, done: list[str]) -> None:
        # The by-id link may be gone (the volume was detached under a live mount), so the mount
        # is recognised by its type. Other file systems are not ours to stop and unmount.
        if top.fstype != FILESYSTEM:
            raise BlockDeviceError(
                f"{self.mount_point} has {top.source} ({top.fstype}) mounted on it, not the shared volume; "
                "demote leaves it alone. Unmount it by hand and check paths.mount_point"
            )
        if top.device_number == os.stat("/").st_dev:
            raise BlockDeviceError(
                f"{self.mount_point} shows the root file system ({top.source}); demote does not stop the "
                "processes using it. Unmount that bind mount by hand"
            )
        remaining = blockdev.stop_holders(
            top.device_number,
            term_timeout=min(self._term_timeout, deadline.remaining()),
            kill_timeout=min(KILL_TIMEOUT, deadline.remaining()),
            sleep=self._sleep,
            clock=self._clock,
        )
        using_files = [holder for holder in remaining if holder.uses_files]
        if using_files:
            raise BlockDeviceError(
                f"cannot unmount {self.mount_point}: still in use by "
                f"{'; '.join(holder.describe() for holder in using_files)}"
            )
        try:
            blockdev.sync_filesystem(self.mount_point, timeout=deadline.remaining())
        except BlockDeviceError as error:
            # umount syncs as well; an unmount that then fails is reported below.
            log.error("%s; unmounting anyway", error)
        blockdev.unmount(self.mount_point, timeout=deadline.remaining())
        done.append(f"unmounted {top.source} from {self.mount_point}")
        log.info("unmounted %s (%d:%d) from %s", top.source, top.major, top.minor, self.mount_point)

    def _check_other_namespaces(self) -> None:
        """Raise if the volume's file system is still mounted in another mount namespace.

        A container that the engine failed to stop keeps its bind mounts of the volume after the
        host's mount is gone, and the file system stays active on the device. Demote does not
        kill such processes, because their namespace alone does not show whose they are.
        """
        try:
            device = blockdev.block_device(self.device_path)
        except BlockDeviceError:
            return
        holders = blockdev.find_holders(device.number)
        if holders:
            raise BlockDeviceError(
                f"the shared volume {device.describe()} is still in use after unmounting: "
                f"{'; '.join(holder.describe() for holder in holders)}. Its file system stays active "
                "until they stop: stop those containers or processes, then run `mailcow-ha demote` again"
            )

    def _verify_released(self) -> None:
        if self.mount_entries():
            raise BlockDeviceError(f"{self.mount_point} is still a mount point after unmounting")
        try:
            device = blockdev.block_device(self.device_path)
        except BlockDeviceError:
            return
        elsewhere = blockdev.mounts_of(device.number, blockdev.read_mountinfo())
        if elsewhere:
            places = ", ".join(entry.mount_point for entry in elsewhere)
            raise BlockDeviceError(
                f"the shared volume {device.describe()} is still mounted on {places}; unmount it there by hand"
            )
