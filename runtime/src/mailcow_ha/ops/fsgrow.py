"""Online growth of a mounted ext4 file system after its volume was resized.

Hetzner resizes volumes in place. The kernel then reports a bigger block device, but the file
system keeps its old size until `resize2fs` grows it. Growing a mounted ext4 file system works
online (the kernel's EXT4_IOC_RESIZE_FS), needs the CAP_SYS_RESOURCE capability, and never
shrinks.
Sizes come from the kernel (/sys/dev/block/MAJOR:MINOR/size, in 512-byte sectors) and from the
ext4 superblock (`dumpe2fs -h`: block count times block size).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mailcow_ha.adapters.blockdev import MountEntry, run_tool
from mailcow_ha.errors import BlockDeviceError

SECTOR = 512
MIN_GROWTH = 16 * 1024 * 1024
"""Smallest difference in bytes between device and file system that is worth a resize."""
MIN_GROWTH_RATIO = 0.01
"""Smallest difference relative to the device size; ext4 leaves less than this unused after mkfs."""
TOOL_TIMEOUT = 30.0
RESIZE_TIMEOUT = 600.0
"""Upper bound on one online grow; adding block groups to a large file system takes a while."""

_BLOCK_COUNT = re.compile(r"^Block count:\s+(\d+)\s*$", re.MULTILINE)
_BLOCK_SIZE = re.compile(r"^Block size:\s+(\d+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class GrowCandidate:
    """A mounted ext4 file system, its device and both sizes in bytes."""

    label: str
    """Purpose of the volume, e.g. `shared volume` or `database volume`."""
    device: str
    mount_point: str
    device_bytes: int
    filesystem_bytes: int


def needs_growth(candidate: GrowCandidate) -> bool:
    """Return whether the device is enough bigger than the file system to grow it."""
    spare = candidate.device_bytes - candidate.filesystem_bytes
    return spare >= MIN_GROWTH and spare >= MIN_GROWTH_RATIO * candidate.device_bytes


def device_bytes(entry: MountEntry, sys_block: Path = Path("/sys/dev/block")) -> int:
    """Return the size of a mount's block device in bytes, from the kernel."""
    path = sys_block / f"{entry.major}:{entry.minor}" / "size"
    try:
        return int(path.read_text().strip()) * SECTOR
    except (OSError, ValueError) as error:
        raise BlockDeviceError(f"size of {entry.source} could not be read from {path}: {error}") from None


def filesystem_bytes(device: str) -> int:
    """Return the size of the ext4 file system on `device` in bytes, from its superblock."""
    result = run_tool(["dumpe2fs", "-h", device], action=f"reading the superblock of {device}", timeout=TOOL_TIMEOUT)
    count, size = _BLOCK_COUNT.search(result.stdout), _BLOCK_SIZE.search(result.stdout)
    if result.returncode != 0 or count is None or size is None:
        message = (result.stderr or result.stdout).strip().splitlines()
        detail = message[-1] if message else f"exit status {result.returncode}"
        raise BlockDeviceError(f"dumpe2fs -h {device} failed: {detail}")
    return int(count.group(1)) * int(size.group(1))


def candidate_for(label: str, entry: MountEntry) -> GrowCandidate | None:
    """Measure a mount; return None when it is not ext4 on a block device."""
    if entry.fstype != "ext4" or not entry.source.startswith("/dev/"):
        return None
    return GrowCandidate(label, entry.source, entry.mount_point, device_bytes(entry), filesystem_bytes(entry.source))


def mount_containing(path: Path, entries: list[MountEntry]) -> MountEntry | None:
    """Return the visible mount that contains `path` (the longest matching mount point)."""
    target = os.path.realpath(path)
    best: MountEntry | None = None
    for entry in entries:
        point = entry.mount_point
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = entry
    return best


def grow(candidate: GrowCandidate) -> int:
    """Grow the file system online to fill its device; return the new size in bytes."""
    result = run_tool(
        ["resize2fs", candidate.device], action=f"growing {candidate.mount_point}", timeout=RESIZE_TIMEOUT
    )
    if result.returncode != 0:
        errors = [line.strip() for line in result.stderr.splitlines() if line.startswith("resize2fs:")]
        other = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        detail = (errors or other or [f"exit status {result.returncode}"])[-1]
        hint = ""
        if "Permission denied" in detail:
            hint = "; online growth needs the CAP_SYS_RESOURCE capability (run as root on the host)"
        raise BlockDeviceError(f"resize2fs {candidate.device} ({candidate.label}) failed: {detail}{hint}")
    return filesystem_bytes(candidate.device)
