"""e2fsprogs, blkid and mount for the one-time preparation of the shared volume.

Every call has a timeout and converts a failure into BlockDeviceError naming the device, the
tool and its message. Nothing here formats a device.
"""

from __future__ import annotations

import logging
import stat
import subprocess
from pathlib import Path

from mailcow_ha.errors import BlockDeviceError

log = logging.getLogger(__name__)

TOOL_TIMEOUT = 60.0
"""Seconds one tool call may take; mounting an MMP file system waits a few update intervals."""


def run_tool(argv: list[str], *, action: str, timeout: float = TOOL_TIMEOUT) -> str:
    """Run a block device tool and return its stdout; raise BlockDeviceError when it fails."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise BlockDeviceError(f"{action}: {argv[0]} not found; install e2fsprogs and util-linux") from None
    except subprocess.TimeoutExpired:
        raise BlockDeviceError(f"{action}: {argv[0]} timed out after {timeout:.0f} s") from None
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        detail = message[-1] if message else f"exit status {result.returncode}"
        raise BlockDeviceError(f"{action} failed: {detail}")
    return result.stdout


def require_block_device(device: Path) -> None:
    """Raise BlockDeviceError unless `device` exists and is a block device."""
    try:
        mode = device.stat().st_mode
    except FileNotFoundError:
        raise BlockDeviceError(
            f"device {device} not found; attach the shared volume to this server and wait for udev"
        ) from None
    if not stat.S_ISBLK(mode):
        raise BlockDeviceError(f"{device} is not a block device; pass the shared volume's device")


def filesystem_type(device: Path) -> str | None:
    """Return the file system type blkid finds on `device`, or None when it finds none."""
    try:
        result = subprocess.run(
            ["blkid", "-p", "-o", "value", "-s", "TYPE", str(device)],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired) as error:
        raise BlockDeviceError(f"blkid on {device} failed: {error}") from None
    # blkid exits 2 when it finds no known signature.
    if result.returncode == 2:
        return None
    if result.returncode != 0:
        raise BlockDeviceError(f"blkid on {device} failed: {result.stderr.strip()}")
    return result.stdout.strip() or None


def ext4_features(device: Path) -> set[str]:
    """Return the feature flags from the ext4 superblock of `device`."""
    output = run_tool(["dumpe2fs", "-h", str(device)], action=f"reading the superblock of {device}")
    for line in output.splitlines():
        if line.startswith("Filesystem features:"):
            return set(line.split(":", 1)[1].split())
    raise BlockDeviceError(f"dumpe2fs printed no feature list for {device}; check that it is ext4")


def enable_mmp(device: Path, update_interval: int) -> None:
    """Turn on ext4 multi-mount protection; the file system must not be mounted anywhere."""
    run_tool(
        ["tune2fs", "-O", "mmp", "-E", f"mmp_update_interval={update_interval}", str(device)],
        action=f"enabling multi-mount protection on {device}",
    )
    log.info("enabled ext4 multi-mount protection on %s (update interval %d s)", device, update_interval)


def mount_targets(device: Path) -> list[str]:
    """Return where `device` is mounted in this mount namespace (empty when nowhere)."""
    real = device.resolve()
    try:
        mounts = Path("/proc/self/mounts").read_text(encoding="utf-8")
    except OSError as error:
        raise BlockDeviceError(f"/proc/self/mounts could not be read: {error.strerror}") from None
    targets = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].startswith("/dev/") and Path(fields[0]).resolve() == real:
            targets.append(fields[1].replace("\\040", " "))
    return targets


def mount(device: Path, target: Path, *, read_only: bool = False) -> None:
    """Mount the ext4 file system; `read_only` also skips journal replay, so nothing is written to the device."""
    options = ["-o", "ro,noload"] if read_only else []
    run_tool(["mount", "-t", "ext4", *options, str(device), str(target)], action=f"mounting {device} on {target}")


def unmount(target: Path) -> None:
    run_tool(["umount", str(target)], action=f"unmounting {target}")
