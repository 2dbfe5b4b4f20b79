"""Promote after an unclean loss of the shared volume: real loop devices, ext4 with MMP, mounts, podman.

The old holder is a second loop device on the volume's image, mounted and then unplugged
without a clean unmount, so the MMP block stays active with this kernel's host name in it,
as after a crash or a power-off. Whether promote clears the block depends on whether that
host name belongs to the cluster. The volume's MMP update interval is 1 s, so the kernel's
own check would make a mount wait 22 s; the mount deadlines below are shorter than that.
"""

from __future__ import annotations

import os

import pytest

from harness.failovernode import FailoverNode, failover_node, master_token
from harness.loopdev import lose_while_mounted
from harness.podman import PodmanService
from mailcow_ha import state
from mailcow_ha.adapters.ext4mmp import MmpState, read_mmp
from mailcow_ha.agent.membership import Member, Membership
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import BlockDeviceError
from mailcow_ha.failover.history import RecordOutcome
from mailcow_ha.failover.mmpclear import MmpAction
from mailcow_ha.failover.storage import SharedVolume

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop devices, mounts, mount namespaces and podman"),
]

MAIL = {"mailcowdockerized-lost/vmail/new/1.mail": "Subject: accepted before the crash\n"}
# Short enough that a mount waiting for the kernel's MMP check (22 s here) fails the test.
NO_KERNEL_WAIT = {"deadlines.release_wait": 0, "deadlines.mount": 8.0}


def lose_on_other_server(node: FailoverNode) -> str:
    """Let server 2 lose the volume while mounted; return the host name left in the MMP block."""
    lose_while_mounted(node.volume.second_device(), node.workdir / "server-2-mount", MAIL)
    block = read_mmp(node.volume.device, timeout=10)
    assert block is not None
    assert block.state is MmpState.ACTIVE
    return block.node_name


def store_members(node: FailoverNode, other_name: str) -> None:
    """Write members.json as a membership sync would, with `other_name` as server 2's node name."""
    members = (
        Member(1, node.config.node.name, node.cluster.private_ips[0], node.server_id),
        Member(2, other_name, node.cluster.private_ips[1], node.other_server_id),
    )
    document = Membership(members, node.server_id, "api", 0.0).to_json()
    state.write_json(node.config.paths.state_dir / state.MEMBERS_FILE, document)


def test_member_left_mmp_active_cleared(podman: PodmanService) -> None:
    with failover_node(podman, overrides=NO_KERNEL_WAIT) as node:
        kernel_name = lose_on_other_server(node)
        store_members(node, kernel_name)
        failover = node.failover()

        with node.health_driver():
            record = failover.promoter.run(master_token())

        assert record.outcome is RecordOutcome.SUCCEEDED
        assert node.mounted()
        mmp_step = next(step for step in record.steps if step.name == "multi-mount protection")
        assert mmp_step.detail is not None
        assert mmp_step.detail.startswith(f"{MmpAction.CLEAR}:")
        assert kernel_name in mmp_step.detail
        # A mount that waited for the kernel's MMP check would have taken 22 s.
        assert next(step for step in record.steps if step.name == "mount").seconds < 22.0
        # Written and synced before the loss, so the journal replay keeps it.
        mail = node.mount_point / next(iter(MAIL))
        assert mail.read_text(encoding="utf-8") == next(iter(MAIL.values()))
        block = read_mmp(node.volume.device, timeout=10)
        assert block is not None
        assert block.state is MmpState.ACTIVE  # mounted here now: kmmpd updates it
        failover.close()


def test_extra_mmp_name_counts_as_member(podman: PodmanService) -> None:
    # Nodes sharing one kernel (the test lab) all write the kernel's host name, which the node
    # config then lists in volume.mmp_node_names.
    with failover_node(podman, overrides=NO_KERNEL_WAIT) as node:
        kernel_name = lose_on_other_server(node)
        node.config = node.config.model_copy(
            update={"volume": node.config.volume.model_copy(update={"mmp_node_names": [kernel_name]})}
        )
        failover = node.failover()

        with node.health_driver():
            record = failover.promoter.run(master_token())

        assert record.outcome is RecordOutcome.SUCCEEDED
        mmp_step = next(step for step in record.steps if step.name == "multi-mount protection")
        assert mmp_step.detail is not None
        assert mmp_step.detail.startswith(f"{MmpAction.CLEAR}:")
        failover.close()


def test_unknown_host_mmp_not_cleared(podman: PodmanService) -> None:
    with failover_node(podman, overrides=NO_KERNEL_WAIT) as node:
        kernel_name = lose_on_other_server(node)
        store_members(node, "mailcow-somewhere-else")
        before = read_mmp(node.volume.device, timeout=10)
        node.env.fake.set_volume_server(node.cluster.volume_id, node.server_id)
        volume = SharedVolume(node.config, member_names=lambda: ["mailcow-somewhere-else"])
        device = volume.wait_for_device(Deadline.after("device", 5), lambda: None)
        probe = volume.check_filesystem(device, Deadline.after("probe", 10))

        decision = volume.settle_mmp(device, probe, Deadline.after("mmp", 10))

        assert decision.action is MmpAction.KERNEL_CHECK
        assert kernel_name in decision.reason
        assert decision.kernel_wait == 22.0
        assert read_mmp(node.volume.device, timeout=10) == before
        # The kernel's own check runs: the mount waits instead of succeeding at once.
        with pytest.raises(BlockDeviceError, match="timed out"):
            volume.mount(device, Deadline.after("mount", 2.0))
        assert not node.mounted()
        assert read_mmp(node.volume.device, timeout=10) == before


def test_clean_release_mounts_without_clearing(podman: PodmanService) -> None:
    with failover_node(podman, overrides=NO_KERNEL_WAIT) as node:
        failover = node.failover()

        with node.health_driver():
            record = failover.promoter.run(master_token())

        mmp_step = next(step for step in record.steps if step.name == "multi-mount protection")
        assert mmp_step.detail is not None
        assert mmp_step.detail.startswith(f"{MmpAction.MOUNT}:")
        assert "clean" in mmp_step.detail
        failover.close()


def test_resume_leaves_the_live_mmp_block_alone(podman: PodmanService) -> None:
    # A second promote on the master (an agent restart) finds its own host name in an active
    # block. That block is live, kept by this node's kmmpd, and must not be cleared under it.
    with failover_node(podman, overrides=NO_KERNEL_WAIT) as node:
        failover = node.failover()
        with node.health_driver():
            failover.promoter.run(master_token())
            live = read_mmp(node.volume.device, timeout=10)
            record = failover.promoter.run(master_token())

        assert live is not None
        assert live.state is MmpState.ACTIVE
        mmp_step = next(step for step in record.steps if step.name == "multi-mount protection")
        assert mmp_step.detail is not None
        assert mmp_step.detail.startswith(f"{MmpAction.MOUNT}:")
        assert "already mounted on this node" in mmp_step.detail
        assert node.mounted()
        failover.close()
