"""Garbage collection decisions, stale-file detection and file system growth thresholds."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

from mailcow_ha.adapters.blockdev import MountEntry
from mailcow_ha.ops.fsgrow import GrowCandidate, mount_containing, needs_growth
from mailcow_ha.ops.gc import ActionKind, CloudView, GcInputs, Role, StaleFile, plan_gc
from mailcow_ha.ops.gc_files import find_stale_files

GIB = 2**30


def inputs(role: Role = Role.STANDBY, **overrides) -> GcInputs:
    values = GcInputs(
        node="node-a",
        role=role,
        role_source="agent reports BACKUP" if role is Role.STANDBY else "agent reports MASTER",
        busy=None,
        maintenance=None,
        volume_mounted=role is Role.MASTER,
        running_services=("postfix-mailcow",) if role is Role.MASTER else (),
        interrupted_records=0,
    )
    return dataclasses.replace(values, **overrides)


def cloud(fip_holder: int | None = 1, volume_holder: int | None = 1) -> CloudView:
    return CloudView(
        server_id=1,
        floating_ips={201: fip_holder},
        volume_id=301,
        volume_holder=volume_holder,
        names={1: "node-a", 2: "node-b"},
    )


def kinds(plan) -> list[ActionKind]:
    return [action.kind for action in plan.actions]


def test_clean_standby_does_nothing():
    plan = plan_gc(inputs())

    assert plan.actions == ()
    assert plan.notes == ()


def test_standby_with_residues_is_demoted():
    plan = plan_gc(inputs(volume_mounted=True, running_services=("dovecot-mailcow", "postfix-mailcow")))

    assert kinds(plan) == [ActionKind.DEMOTE_STANDBY]
    assert plan.actions[0].reason == (
        "mailcow containers run (dovecot-mailcow, postfix-mailcow) and the shared volume is mounted on a standby "
        "(agent reports BACKUP)"
    )


def test_busy_node_is_not_touched():
    plan = plan_gc(inputs(busy="the agent runs a transition to MASTER", volume_mounted=True, interrupted_records=2))

    assert plan.actions == ()
    assert plan.notes == ("nothing done: the agent runs a transition to MASTER",)


def test_maintenance_reports_instead_of_demoting():
    plan = plan_gc(inputs(volume_mounted=True, maintenance="on until switched off"))

    assert kinds(plan) == [ActionKind.REPORT_DRIFT]
    assert "left alone in maintenance mode" in plan.actions[0].reason


def test_unknown_role_only_cleans_files():
    stale = StaleFile(Path("/var/lib/mailcow-ha/.history.json.abcd1234"), "temporary file")

    plan = plan_gc(inputs(Role.UNKNOWN, volume_mounted=True, stale_files=(stale,), interrupted_records=1))

    assert kinds(plan) == [ActionKind.CLOSE_RECORDS, ActionKind.REMOVE_FILE]
    assert plan.notes[0].startswith("role unknown")


def test_engine_unreachable_is_noted():
    plan = plan_gc(inputs(running_services=None))

    assert plan.actions == ()
    assert "did not respond" in plan.notes[0]


def test_master_without_drift_does_nothing():
    assert plan_gc(inputs(Role.MASTER, cloud=cloud())).actions == ()


def test_master_reassigns_floating_ip():
    plan = plan_gc(inputs(Role.MASTER, cloud=cloud(fip_holder=2)))

    assert kinds(plan) == [ActionKind.ASSIGN_FLOATING_IPS]
    assert plan.actions[0].subject == "201"
    assert plan.actions[0].reason == "floating IP 201 routed to node-b while node-a is MASTER"


def test_master_takes_volume_back_by_promote():
    plan = plan_gc(inputs(Role.MASTER, volume_mounted=False, cloud=cloud(fip_holder=None, volume_holder=2)))

    assert kinds(plan) == [ActionKind.REPROMOTE]
    assert "floating IP 201 routed to no server; volume 301 attached to node-b" in plan.actions[0].reason


def test_volume_drift_not_repaired_while_peer_busy():
    plan = plan_gc(
        inputs(Role.MASTER, volume_mounted=False, cloud=cloud(volume_holder=2), peers_busy="node-b is promoting")
    )

    assert kinds(plan) == [ActionKind.REPORT_DRIFT]
    assert plan.actions[0].reason.endswith("not repaired because node-b is promoting")


def test_stale_mount_reported_not_repaired():
    plan = plan_gc(inputs(Role.MASTER, volume_mounted=True, cloud=cloud(volume_holder=3)))

    assert kinds(plan) == [ActionKind.REPORT_DRIFT]
    assert "server 3" in plan.actions[0].reason
    assert "mailcow-ha demote" in plan.actions[0].reason


def test_master_drift_left_in_maintenance():
    plan = plan_gc(inputs(Role.MASTER, cloud=cloud(fip_holder=2), maintenance="on for 1 h"))

    assert kinds(plan) == [ActionKind.REPORT_DRIFT]


def test_master_without_cloud_view_is_noted():
    plan = plan_gc(inputs(Role.MASTER))

    assert plan.actions == ()
    assert plan.notes == ("cloud holders not read; drift not checked",)


def growth(label: str, device_gib: float, filesystem_gib: float) -> GrowCandidate:
    return GrowCandidate(label, "/dev/sdb", "/srv/x", int(device_gib * GIB), int(filesystem_gib * GIB))


def test_grow_database_volume_on_any_role():
    plan = plan_gc(inputs(grow=(growth("database volume", 20, 10),)))

    assert kinds(plan) == [ActionKind.GROW_FILESYSTEM]
    assert "10240 MiB larger" in plan.actions[0].reason


def test_shared_volume_grown_only_on_master():
    candidate = growth("shared volume", 20, 10)

    assert plan_gc(inputs(grow=(candidate,))).actions == ()
    assert kinds(plan_gc(inputs(Role.MASTER, grow=(candidate,), cloud=cloud()))) == [ActionKind.GROW_FILESYSTEM]


@pytest.mark.parametrize(
    ("device", "filesystem", "expected"),
    [
        (10 * GIB, 10 * GIB, False),
        (10 * GIB, 10 * GIB - 8 * 2**20, False),
        (10 * GIB, 10 * GIB - 200 * 2**20, True),
        (200 * 2**20, 150 * 2**20, True),
        (64 * 2**20, 60 * 2**20, False),
    ],
)
def test_growth_threshold(device, filesystem, expected):
    assert needs_growth(GrowCandidate("x", "/dev/x", "/x", device, filesystem)) is expected


def entry(mount_point: str, source: str = "/dev/sdb") -> MountEntry:
    return MountEntry(1, 0, 8, 16, "/", mount_point, "rw", "ext4", source)


def test_mount_containing_picks_longest(tmp_path):
    data = tmp_path / "mysql"
    data.mkdir()
    entries = [entry("/"), entry(str(tmp_path)), entry(str(data)), entry(str(tmp_path / "other"))]

    inner = mount_containing(data / "sub", entries)
    outer = mount_containing(tmp_path / "x", entries)

    assert inner is not None
    assert inner.mount_point == str(data)
    assert outer is not None
    assert outer.mount_point == str(tmp_path)


def touch(path: Path, age: float) -> Path:
    path.write_text("x")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_stale_files_found(tmp_path):
    now = time.time()
    old_temp = touch(tmp_path / ".history.json.ab12cd_9", 7200)
    touch(tmp_path / ".history.json.zz99yy88", 60)
    touch(tmp_path / ".alerts.json.lock", 90000)
    dead_pid = touch(tmp_path / ".health.999999999.tmp", 1)
    touch(tmp_path / f".health.{os.getpid()}.tmp", 1)
    old_corrupt = touch(tmp_path / f"breaker.json.corrupt-{int(now - 40 * 86400)}", 1)
    touch(tmp_path / f"breaker.json.corrupt-{int(now - 86400)}", 1)
    touch(tmp_path / "history.json", 90000)
    start_file = touch(tmp_path / "failover-start.json", 1)

    found = {
        stale.path: stale.reason
        for stale in find_stale_files([tmp_path], now=now, keep_files=set(), grace_file=(start_file, now - 1))
    }

    assert set(found) == {old_temp, dead_pid, old_corrupt, start_file}
    assert "interrupted write of history.json, 2.0 h old" in found[old_temp]
    assert "pid 999999999, which no longer runs" in found[dead_pid]
    assert "30 days" in found[old_corrupt]


def test_kept_and_missing_directories(tmp_path):
    touch(tmp_path / ".health.999999999.tmp", 1)

    found = list(
        find_stale_files(
            [tmp_path, tmp_path / "absent"], now=time.time(), keep_files={".health.999999999.tmp"}, grace_file=None
        )
    )

    assert found == []
