"""Block device adapter parts that need no root: mountinfo parsing, bounded tools, device checks."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mailcow_ha.adapters import blockdev
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import BlockDeviceError

MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "40 22 8:16 / /srv/mail\\040data rw,noatime shared:7 master:3 - ext4 /dev/sdb rw,errors=remount-ro\n"
    "41 40 0:45 / /srv/mail\\040data/sub rw - tmpfs tmpfs rw\n"
    "garbage line\n"
)


def test_parse_mountinfo_fields() -> None:
    entries = blockdev.parse_mountinfo(MOUNTINFO)

    assert len(entries) == 3
    volume = entries[1]
    assert volume.mount_point == "/srv/mail data"
    assert (volume.major, volume.minor) == (8, 16)
    assert volume.fstype == "ext4"
    assert volume.source == "/dev/sdb"
    assert volume.device_number == os.makedev(8, 16)


def test_mounts_at_and_of() -> None:
    entries = blockdev.parse_mountinfo(MOUNTINFO)

    assert [entry.mount_id for entry in blockdev.mounts_at(Path("/srv/mail data"), entries)] == [40]
    assert [entry.mount_id for entry in blockdev.mounts_of(os.makedev(0, 45), entries)] == [41]


def test_run_tool_timeout_kills() -> None:
    started = time.monotonic()

    with pytest.raises(BlockDeviceError, match=r"timed out after 0\.2 s"):
        blockdev.run_tool(["sleep", "30"], action="sleeping", timeout=0.2)

    assert time.monotonic() - started < 5


def test_run_tool_missing_program() -> None:
    with pytest.raises(BlockDeviceError, match="not found"):
        blockdev.run_tool(["mcha-no-such-tool"], action="testing", timeout=1)


def test_block_device_rejects_character_device(tmp_path: Path) -> None:
    link = tmp_path / "scsi-0HC_Volume_1"
    link.symlink_to("/dev/null")

    with pytest.raises(BlockDeviceError, match="not a block device"):
        blockdev.block_device(link)


def test_wait_for_device_times_out(tmp_path: Path) -> None:
    checks: list[int] = []

    with pytest.raises(BlockDeviceError, match="check that the volume is attached"):
        blockdev.wait_for_device(
            tmp_path / "scsi-0HC_Volume_2", Deadline.after("0.2 s", 0.2), checkpoint=lambda: checks.append(1)
        )

    assert checks


def test_holder_scan_finds_open_file(tmp_path: Path) -> None:
    # A file on the file system of tmp_path, held open by this test: the scan skips this
    # process, so it must find nothing of ours and must not fail on other processes.
    with (tmp_path / "held").open("w"):
        holders = blockdev.find_holders(os.stat(tmp_path).st_dev)

    assert all(holder.pid != os.getpid() for holder in holders)
