"""Whether promote may clear a stale ext4 MMP block before it mounts the shared volume.

A node that lost the volume while it had it mounted (a crash, a power-off, or a detach before
its unmount) leaves the MMP block active. The next mount then waits in the kernel for
2 * (2 * check interval + 1) s. The check interval is twice the update interval, at least 5 s, so
the wait is 22 s at an update interval of 1 s and 42 s at the default of 5 s (both measured on
loop devices, Linux 6.18). Promote decides just after the API shows the volume
attached to this server. The API attaches a volume to one server at a time, so no other server
of the project can write it any more. A block left active by a node of this cluster is therefore
stale, and clearing it is safe. A block that some other host wrote is left to the kernel's own
check, which rejects the mount if that host still writes the disk. Multi-mount protection thus
stays the second line of defence against anything outside the cluster.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass

from mailcow_ha.adapters.ext4mmp import MmpBlock, MmpState


class MmpAction(enum.StrEnum):
    MOUNT = "mount"
    """Mount at once: the block is clean, or the file system has no MMP."""
    CLEAR = "clear"
    """Mark the block clean, then mount: a node of this cluster left it active."""
    KERNEL_CHECK = "kernel-check"
    """Mount and let the kernel wait and check: the writer is unknown."""
    REJECT = "reject"
    """Do not mount: e2fsck has the file system open."""


@dataclass(frozen=True)
class MmpDecision:
    action: MmpAction
    reason: str
    kernel_wait: float = 0.0
    """Seconds the mount is expected to wait in the kernel; promote adds them to the mount deadline."""


def decide_mmp(  # noqa: PLR0911
    block: MmpBlock | None, *, has_mmp: bool, own_name: str, cluster_names: Collection[str]
) -> MmpDecision:
    """Decide what to do with the MMP block before mounting; `cluster_names` are the members' host names."""
    if not has_mmp:
        return MmpDecision(MmpAction.MOUNT, "the file system has no multi-mount protection")
    if block is None:
        return MmpDecision(
            MmpAction.KERNEL_CHECK, "the MMP block could not be read; the kernel checks it when mounting"
        )
    state = block.state
    writer = block.node_name or "(no host name)"
    if state is MmpState.CLEAN:
        return MmpDecision(MmpAction.MOUNT, f"the MMP block is clean (last unmounted by host {writer})")
    if state is MmpState.FSCK:
        return MmpDecision(
            MmpAction.REJECT,
            f"the MMP block says e2fsck is running on the file system (started on host {writer}); wait for it "
            "to finish, or if no e2fsck runs anywhere, clear the block with `tune2fs -f -E clear_mmp DEVICE`",
        )
    if block.node_name == own_name:
        return MmpDecision(
            MmpAction.CLEAR,
            f"this node ({writer}) left the MMP block active, so it lost the volume while it had it mounted; "
            "the API now attaches the volume here only, so the block is stale and is cleared",
        )
    if block.node_name in cluster_names:
        return MmpDecision(
            MmpAction.CLEAR,
            f"cluster member {writer} left the MMP block active; the API now attaches the volume to this "
            "server only, so that member can no longer write it and the block is cleared",
        )
    wait = block.kernel_wait()
    return MmpDecision(
        MmpAction.KERNEL_CHECK,
        f"host {writer} left the MMP block active and is not a member of this cluster; the block is not "
        f"cleared, and the kernel waits about {wait:.0f} s at the mount to see whether that host still "
        "writes the disk",
        kernel_wait=wait,
    )
