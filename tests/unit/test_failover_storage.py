"""Shared volume decisions: when to mount, which file systems to accept, and the project data check."""

from __future__ import annotations

from pathlib import Path

from mailcow_ha.adapters.blockdev import BlockDevice, FilesystemProbe, MountEntry
from mailcow_ha.failover.storage import MountAction, decide_mount, filesystem_problem, project_data_problem

DEVICE = BlockDevice(Path("/dev/disk/by-id/scsi-0HC_Volume_301"), Path("/dev/sdb"), 8, 16)
MOUNT_POINT = Path("/srv/mailcow-data")


def entry(major: int, minor: int, mount_point: str = "/srv/mailcow-data", fstype: str = "ext4") -> MountEntry:
    return MountEntry(40, 1, major, minor, "/", mount_point, "rw,noatime", fstype, f"/dev/block-{major}-{minor}")


def test_mount_when_nothing_mounted() -> None:
    action, reason = decide_mount(DEVICE, MOUNT_POINT, [], [])

    assert action is MountAction.MOUNT
    assert "mounting" in reason


def test_already_mounted_here() -> None:
    action, _ = decide_mount(DEVICE, MOUNT_POINT, [entry(8, 16)], [entry(8, 16)])

    assert action is MountAction.ALREADY_MOUNTED


def test_other_device_on_mount_point_rejected() -> None:
    action, reason = decide_mount(DEVICE, MOUNT_POINT, [entry(8, 32)], [])

    assert action is MountAction.REJECT
    assert "8:32" in reason
    assert "paths.mount_point" in reason


def test_top_mount_decides() -> None:
    action, _ = decide_mount(DEVICE, MOUNT_POINT, [entry(8, 32), entry(8, 16)], [entry(8, 16)])

    assert action is MountAction.ALREADY_MOUNTED


def test_volume_mounted_elsewhere_rejected() -> None:
    action, reason = decide_mount(DEVICE, MOUNT_POINT, [], [entry(8, 16, "/mnt/rescue")])

    assert action is MountAction.REJECT
    assert "/mnt/rescue" in reason


def test_ext4_with_mmp_accepted() -> None:
    probe = FilesystemProbe("ext4", "uuid", None, frozenset({"has_journal", "mmp"}))

    assert filesystem_problem(probe, require_mmp=True) is None


def test_no_filesystem_never_formatted() -> None:
    problem = filesystem_problem(FilesystemProbe(None, None, None, frozenset()), require_mmp=True)

    assert problem is not None
    assert "never formats" in problem


def test_other_filesystem_rejected() -> None:
    problem = filesystem_problem(FilesystemProbe("xfs", "uuid", None, frozenset()), require_mmp=False)

    assert problem is not None
    assert "xfs" in problem


def test_missing_mmp_rejected_unless_allowed() -> None:
    probe = FilesystemProbe("ext4", "uuid", None, frozenset({"has_journal"}))

    problem = filesystem_problem(probe, require_mmp=True)

    assert problem is not None
    assert "volume.require_mmp" in problem
    assert filesystem_problem(probe, require_mmp=False) is None


def test_project_data_present() -> None:
    assert (
        project_data_problem(["lost+found", ".mailcow-ha", "mailcowdockerized"], MOUNT_POINT, "mailcowdockerized")
        is None
    )


def test_project_name_drift_names_existing() -> None:
    problem = project_data_problem(
        ["lost+found", ".mailcow-ha", "mailcow-dockerized"], MOUNT_POINT, "mailcowdockerized"
    )

    assert problem is not None
    assert "/srv/mailcow-data/mailcowdockerized does not exist" in problem
    assert "found mailcow-dockerized" in problem
    assert "lost+found" not in problem


def test_empty_volume_reported() -> None:
    problem = project_data_problem(["lost+found", ".mailcow-ha"], MOUNT_POINT, "mailcowdockerized")

    assert problem is not None
    assert "no project directory at all" in problem
