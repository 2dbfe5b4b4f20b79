"""The MMP block as dumpe2fs prints it, the kernel's wait, and when promote clears a stale block."""

from __future__ import annotations

import pytest

from mailcow_ha.adapters.ext4mmp import SEQ_CLEAN, SEQ_FSCK, MmpBlock, MmpState, parse_dumpe2fs
from mailcow_ha.failover.mmpclear import MmpAction, decide_mmp

# `dumpe2fs -h` of e2fsprogs 1.47.0 (Debian 12) on a loop device whose holder lost it while mounted;
# the superblock lines between the two parts are left out.
ACTIVE_OUTPUT = """\
Filesystem volume name:   <none>
Filesystem features:      has_journal ext_attr resize_inode dir_index filetype needs_recovery extent 64bit mmp \
flex_bg sparse_super large_file huge_file dir_nlink extra_isize metadata_csum
Filesystem state:         clean
MMP block number:         4385
MMP update interval:      5
Checksum type:            crc32c
Checksum:                 0x1701274a
Journal features:         journal_64bit journal_checksum_v3
Journal checksum:         0x048048e8
MMP_block:
    mmp_magic: 0x4d4d50
    mmp_check_interval: 10
    mmp_sequence: 0x000002
    mmp_update_date: Fri Dec  4 18:12:38 2026
    mmp_update_time: 1796407958
    mmp_node_name: mailcow-2
    mmp_device_name: sdb

"""


def block(sequence: int = 2, node: str = "mailcow-2", *, check: int = 10, update: int = 5) -> MmpBlock:
    return MmpBlock(sequence, node, "sdb", 1796407958, check, update)


def test_parse_active_block() -> None:
    parsed = parse_dumpe2fs(ACTIVE_OUTPUT)

    assert parsed == MmpBlock(2, "mailcow-2", "sdb", 1796407958, 10, 5)
    assert parsed.state is MmpState.ACTIVE


def test_parse_clean_block() -> None:
    parsed = parse_dumpe2fs(ACTIVE_OUTPUT.replace("0x000002", "0xff4d4d50"))

    assert parsed is not None
    assert parsed.sequence == SEQ_CLEAN
    assert parsed.state is MmpState.CLEAN


def test_parse_fsck_block() -> None:
    parsed = parse_dumpe2fs(ACTIVE_OUTPUT.replace("0x000002", "0xe24d4d50"))

    assert parsed is not None
    assert parsed.sequence == SEQ_FSCK
    assert parsed.state is MmpState.FSCK


def test_parse_without_mmp() -> None:
    without = "\n".join(line for line in ACTIVE_OUTPUT.splitlines() if "mmp" not in line.lower())

    assert parse_dumpe2fs(without) is None


def test_parse_garbled_sequence() -> None:
    assert parse_dumpe2fs(ACTIVE_OUTPUT.replace("0x000002", "banana")) is None


def test_parse_empty_node_name() -> None:
    parsed = parse_dumpe2fs(ACTIVE_OUTPUT.replace("mmp_node_name: mailcow-2", "mmp_node_name: "))

    assert parsed is not None
    assert parsed.node_name == ""


@pytest.mark.parametrize(
    ("update", "check", "expected"),
    [
        (1, 5, 22.0),  # the shortest interval: the kernel checks every 5 s at least (measured: 22 s)
        (5, 10, 42.0),  # the default interval: kmmpd writes a check interval of 10 s (measured: 42-44 s)
        (5, 0, 22.0),  # a block written by e2fsprogs carries no check interval
        (200, 300, 720.0),  # the extra wait is capped at the interval plus 60 s
    ],
)
def test_kernel_wait(update: int, check: int, expected: float) -> None:
    assert block(check=check, update=update).kernel_wait() == expected


def test_decide_clean_mounts() -> None:
    decision = decide_mmp(block(SEQ_CLEAN, "mailcow-1"), has_mmp=True, own_name="mailcow-2", cluster_names=())

    assert decision.action is MmpAction.MOUNT
    assert "clean" in decision.reason
    assert decision.kernel_wait == 0.0


def test_decide_without_mmp_mounts() -> None:
    decision = decide_mmp(None, has_mmp=False, own_name="mailcow-2", cluster_names=())

    assert decision.action is MmpAction.MOUNT


def test_decide_fsck_rejects() -> None:
    decision = decide_mmp(block(SEQ_FSCK, "mailcow-3"), has_mmp=True, own_name="mailcow-1", cluster_names={"mailcow-3"})

    assert decision.action is MmpAction.REJECT
    assert "e2fsck" in decision.reason
    assert "clear_mmp" in decision.reason


def test_decide_member_clears() -> None:
    decision = decide_mmp(block(), has_mmp=True, own_name="mailcow-1", cluster_names={"mailcow-2", "mailcow-3"})

    assert decision.action is MmpAction.CLEAR
    assert "mailcow-2" in decision.reason
    assert decision.kernel_wait == 0.0


def test_decide_own_name_clears() -> None:
    decision = decide_mmp(block(node="mailcow-1"), has_mmp=True, own_name="mailcow-1", cluster_names=())

    assert decision.action is MmpAction.CLEAR
    assert "this node" in decision.reason


def test_decide_unknown_host_left_to_kernel() -> None:
    decision = decide_mmp(
        block(node="rescue-system"), has_mmp=True, own_name="mailcow-1", cluster_names={"mailcow-2", "mailcow-3"}
    )

    assert decision.action is MmpAction.KERNEL_CHECK
    assert "rescue-system" in decision.reason
    assert "not a member" in decision.reason
    assert decision.kernel_wait == 42.0


def test_decide_unreadable_block_left_to_kernel() -> None:
    decision = decide_mmp(None, has_mmp=True, own_name="mailcow-1", cluster_names={"mailcow-2"})

    assert decision.action is MmpAction.KERNEL_CHECK
    assert "could not be read" in decision.reason


def test_decide_empty_node_name_not_trusted() -> None:
    decision = decide_mmp(block(node=""), has_mmp=True, own_name="mailcow-1", cluster_names={"mailcow-2"})

    assert decision.action is MmpAction.KERNEL_CHECK
