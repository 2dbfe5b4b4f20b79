"""The mount and floating IP probes.

On the master the shared volume is mounted at the mount point and carries the marker file of
this cluster and volume (an empty directory on the root disk is not the volume). On a standby
the mount point is not a mount and the volume's device, if it is attached here, is mounted
nowhere. The master also carries every floating IP on its public interface. The API routes the
addresses to the master, but the kernel accepts packets only for addresses configured on an interface.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mailcow_ha.adapters import blockdev, netif
from mailcow_ha.deadline import Clock, Deadline
from mailcow_ha.errors import MailcowHaError
from mailcow_ha.failover.marker import marker_problem, read_marker
from mailcow_ha.health.verdict import FLOATING_IP, MOUNT, ProbeResult, Role


def check_master_mount(
    entries: Sequence[blockdev.MountEntry], mount_point: Path, *, cluster: str, volume_id: int
) -> tuple[bool, str]:
    if not blockdev.mounts_at(mount_point, entries):
        return False, f"{mount_point} is not a mount point"
    try:
        problem = marker_problem(read_marker(mount_point), cluster=cluster, volume_id=volume_id)
    except MailcowHaError as error:
        problem = str(error)
    if problem is not None:
        return False, f"{mount_point} is mounted but its marker file is wrong: {problem}"
    return True, f"{mount_point} mounted with the marker of volume {volume_id}"


def check_standby_mount(
    entries: Sequence[blockdev.MountEntry], mount_point: Path, volume_device: Path
) -> tuple[bool, str]:
    if blockdev.mounts_at(mount_point, entries):
        return False, f"{mount_point} is mounted on a standby"
    try:
        device = blockdev.block_device(volume_device)
    except MailcowHaError:
        return True, f"{mount_point} not mounted"
    elsewhere = blockdev.mounts_of(device.number, entries)
    if elsewhere:
        return False, f"the shared volume {volume_device} is mounted on a standby at {elsewhere[0].mount_point}"
    return True, f"{mount_point} not mounted"


def missing_floating_ips(configured: Sequence[netif.IpInterface], present: Sequence[netif.IpInterface]) -> list[str]:
    """Return the configured floating IPs that the interface lacks, compared by address."""
    addresses = {item.ip for item in present}
    return [str(item) for item in configured if item.ip not in addresses]


class MountProbe:
    name = MOUNT

    def __init__(
        self,
        mount_point: Path,
        volume_device: Path,
        *,
        cluster: str,
        volume_id: int,
        interval: float,
        clock: Clock = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.mount_point = mount_point
        self.volume_device = volume_device
        self.cluster = cluster
        self.volume_id = volume_id
        self.interval = interval
        self._clock = clock
        self._wall_clock = wall_clock
        self.mounted = False

    def check(self, role: Role, deadline: Deadline) -> ProbeResult:
        started = self._clock()
        try:
            entries = blockdev.read_mountinfo()
            self.mounted = bool(blockdev.mounts_at(self.mount_point, entries))
            if role is Role.MASTER:
                ok, detail = check_master_mount(
                    entries, self.mount_point, cluster=self.cluster, volume_id=self.volume_id
                )
            else:
                ok, detail = check_standby_mount(entries, self.mount_point, self.volume_device)
        except (MailcowHaError, OSError) as error:
            ok, detail = False, f"mount table unreadable: {error}"
        return ProbeResult(MOUNT, ok, detail, self._wall_clock(), self._clock() - started)


class FloatingIpProbe:
    name = FLOATING_IP

    def __init__(
        self,
        interface: str,
        floating_ips: Sequence[netif.IpInterface],
        *,
        interval: float,
        clock: Clock = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.interface = interface
        self.floating_ips = tuple(floating_ips)
        self.interval = interval
        self._clock = clock
        self._wall_clock = wall_clock
        self.present: tuple[str, ...] = ()
        self.missing: tuple[str, ...] = ()

    def check(self, role: Role, deadline: Deadline) -> ProbeResult:
        started = self._clock()
        try:
            addresses = netif.interface_addresses(self.interface)
        except MailcowHaError as error:
            return ProbeResult(FLOATING_IP, False, str(error), self._wall_clock(), self._clock() - started)
        self.missing = tuple(missing_floating_ips(self.floating_ips, addresses))
        self.present = tuple(str(item) for item in self.floating_ips if str(item) not in self.missing)
        if role is not Role.MASTER:
            detail = (
                f"{len(self.present)} of {len(self.floating_ips)} floating IP(s) on {self.interface} "
                "(checked on the master only)"
            )
            return ProbeResult(FLOATING_IP, True, detail, self._wall_clock(), self._clock() - started)
        if self.missing:
            detail = f"{', '.join(self.missing)} not configured on {self.interface}"
            return ProbeResult(FLOATING_IP, False, detail, self._wall_clock(), self._clock() - started)
        detail = f"{len(self.floating_ips)} floating IP(s) on {self.interface}"
        return ProbeResult(FLOATING_IP, True, detail, self._wall_clock(), self._clock() - started)
