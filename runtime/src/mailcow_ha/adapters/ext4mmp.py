"""ext4 multi-mount protection (MMP): read the MMP block with dumpe2fs, clear it with tune2fs.

While a node has the file system mounted, the kernel's kmmpd thread rewrites the MMP block every
`mmp_update_interval` seconds with a new sequence number, the node's host name and the time. A
clean unmount writes the sequence EXT4_MMP_SEQ_CLEAN. A mount that finds any other sequence
waits twice for `2 * interval + 1` seconds (interval at least 5 s) to see whether another node
still updates the block (`ext4_multi_mount_protect` in the kernel's fs/ext4/mmp.c). The host name
is the kernel's own (`init_utsname()`), the same for every UTS namespace on one kernel. Constants
and the output format are those of Linux 6.x and e2fsprogs 1.47 (Debian 12).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from pathlib import Path

from mailcow_ha.adapters.blockdev import run_tool
from mailcow_ha.errors import BlockDeviceError

log = logging.getLogger(__name__)

SEQ_CLEAN = 0xFF4D4D50
"""EXT4_MMP_SEQ_CLEAN: the file system was unmounted cleanly."""
SEQ_FSCK = 0xE24D4D50
"""EXT4_MMP_SEQ_FSCK: e2fsck has the file system open."""
MIN_CHECK_INTERVAL = 5
"""EXT4_MMP_MIN_CHECK_INTERVAL in seconds: the kernel never checks more often than this."""
MAX_EXTRA_WAIT = 60
"""A mount waits at most this many seconds more than the check interval, twice."""


class MmpState(enum.StrEnum):
    CLEAN = "clean"
    FSCK = "fsck"
    ACTIVE = "active"
    """Any other sequence: mounted somewhere, or left so by a node that lost the disk or its power."""


@dataclass(frozen=True)
class MmpBlock:
    """The MMP block of an ext4 file system and the superblock's update interval."""

    sequence: int
    node_name: str
    """The host name of the kernel that wrote the block last."""
    device_name: str
    updated_at: int
    """When the block was written last, in seconds since the epoch."""
    check_interval: int
    """`mmp_check_interval` as the writing kernel set it, in seconds."""
    update_interval: int
    """The superblock's `mmp_update_interval` in seconds."""

    @property
    def state(self) -> MmpState:
        if self.sequence == SEQ_CLEAN:
            return MmpState.CLEAN
        if self.sequence == SEQ_FSCK:
            return MmpState.FSCK
        return MmpState.ACTIVE

    def kernel_wait(self) -> float:
        """Return the seconds a mount waits in the kernel before it takes over this block when active."""
        interval = max(self.update_interval, self.check_interval, MIN_CHECK_INTERVAL)
        return 2.0 * min(2 * interval + 1, interval + MAX_EXTRA_WAIT)

    def describe(self) -> str:
        return (
            f"sequence {self.sequence:#010x} ({self.state}), written by host {self.node_name or '(none)'} "
            f"through {self.device_name or '(unknown device)'} at {self.updated_at}"
        )


def parse_dumpe2fs(text: str) -> MmpBlock | None:
    """Return the MMP block from the output of `dumpe2fs -h`, or None when it shows none."""
    update_interval: int | None = None
    fields: dict[str, str] = {}
    in_block = False
    for line in text.splitlines():
        if line.startswith("MMP update interval:"):
            update_interval = _integer(line.split(":", 1)[1])
        elif line.startswith("MMP_block:"):
            in_block = True
        elif in_block and line.startswith((" ", "\t")) and ":" in line:
            key, value = line.strip().split(":", 1)
            fields[key] = value.strip()
        elif in_block:
            in_block = False
    if "mmp_sequence" not in fields:
        return None
    try:
        return MmpBlock(
            sequence=int(fields["mmp_sequence"], 16),
            node_name=fields.get("mmp_node_name", ""),
            device_name=fields.get("mmp_device_name", ""),
            updated_at=int(fields.get("mmp_update_time", "0")),
            check_interval=int(fields.get("mmp_check_interval", "0")),
            update_interval=update_interval or 0,
        )
    except ValueError:
        log.warning("dumpe2fs printed an MMP block this version cannot read: %r", fields)
        return None


def _integer(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def read_mmp(device: Path, *, timeout: float) -> MmpBlock | None:
    """Read the MMP block of the ext4 file system on `device` (read-only); None when there is none."""
    result = run_tool(["dumpe2fs", "-h", str(device)], action=f"reading the MMP block of {device}", timeout=timeout)
    if result.returncode != 0:
        raise BlockDeviceError(f"dumpe2fs on {device} failed: {(result.stderr or '').strip() or result.returncode}")
    return parse_dumpe2fs(result.stdout)


def clear_mmp(device: Path, *, timeout: float) -> None:
    """Mark the MMP block clean with `tune2fs -f -E clear_mmp`, without the MMP wait.

    tune2fs replays the journal first if the file system needs it. Only call this when nothing
    else can write the device: it removes the protection against a second mount.
    """
    action = f"clearing the MMP block of {device}"
    result = run_tool(["tune2fs", "-f", "-E", "clear_mmp", str(device)], action=action, timeout=timeout)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise BlockDeviceError(f"{action} failed: {lines[-1] if lines else f'exit status {result.returncode}'}")
