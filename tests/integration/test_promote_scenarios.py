"""Promote against real parts: loop-device ext4 volumes with MMP, real mounts, podman, the fake cloud API.

Each test builds one node (harness.failovernode): the volume and the floating IP start on the
other server, and promote must move them here, mount the volume and start mailcow's containers.
The scenarios follow failures that operators of this kind of cluster have reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.failovernode import FailoverNode, failover_node, master_token
from harness.podman import MAILCOW_SERVICES, PodmanService, dump_state
from mailcow_ha import state
from mailcow_ha.adapters import blockdev
from mailcow_ha.agent.membership import Member, Membership
from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.errors import BlockDeviceError, CloudError, DeadlineExceeded, Refused
from mailcow_ha.failover.history import FailoverRecord, RecordKind, RecordOutcome, read_failover_start
from mailcow_ha.failover.marker import VolumeMarker, write_marker
from mailcow_ha.failover.storage import SharedVolume, VolumeRejected

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop devices, mounts, mount namespaces and podman"),
]

ALL_SERVICES = sorted(MAILCOW_SERVICES)


@pytest.fixture
def node(podman: PodmanService) -> Iterator[FailoverNode]:
    with failover_node(podman) as built:
        yield built


def last_promote(node: FailoverNode) -> FailoverRecord:
    """Return the newest promote record (a failed promote's release adds a demote record after it)."""
    return next(record for record in reversed(node.history()) if record.kind is not RecordKind.DEMOTE)


def assert_released(node: FailoverNode) -> None:
    """Check that the node keeps nothing locally: no container running, the volume not mounted."""
    assert node.project.running() == [], dump_state(node.podman, node.project.name)
    assert not node.mounted()
    assert node.volume.mount_points() == []


def test_promote_moves_everything(node: FailoverNode) -> None:
    failover = node.failover()

    with node.health_driver():
        record = failover.promoter.run(master_token())

    assert node.volume_holder() == node.server_id
    assert node.floating_ip_holders() == [node.server_id]
    assert node.mounted()
    assert node.project.running() == ALL_SERVICES
    started = (node.mount_point / node.project.name / "postfix-mailcow" / "started").read_text()
    assert "postfix-mailcow" in started
    assert record.outcome is RecordOutcome.SUCCEEDED
    assert record.kind is RecordKind.FAILOVER
    step_names = [step.name for step in record.steps]
    for name in ("breaker", "floating IPs", "volume attach", "device", "mount", "marker", "containers healthy"):
        assert name in step_names
    assert node.history()[-1].id == record.id
    assert read_failover_start(node.config.paths.state_dir) == pytest.approx(record.started_at)
    assert node.alerter.events() == [AlertEvent.FAILOVER_STARTED, AlertEvent.FAILOVER_SUCCEEDED]
    failover.close()


def test_promote_twice_converges(node: FailoverNode) -> None:
    failover = node.failover()

    with node.health_driver():
        first = failover.promoter.run(master_token())
        mark = node.env.fake.requests.mark()
        second = failover.promoter.run(master_token())

    assert first.outcome is RecordOutcome.SUCCEEDED
    assert second.outcome is RecordOutcome.SUCCEEDED
    assert second.kind is RecordKind.RESUME
    assert node.alerter.events() == [AlertEvent.FAILOVER_STARTED, AlertEvent.FAILOVER_SUCCEEDED]
    assert [record.id for record in failover.breaker.status().counted] == [first.id]
    assert node.mounted()
    assert len(node.volume.mount_points()) == 1
    assert node.project.running() == ALL_SERVICES
    mutations = [key for key in node.env.fake.requests.counts(mark) if key.startswith("POST")]
    assert mutations == []
    failover.close()


def test_locked_then_already_attached(node: FailoverNode) -> None:
    # The volume's holder is powered off. Attach returns locked twice, then "already attached"
    # because the old holder got the volume back meanwhile. Promote must retry, detach, wait
    # and attach, and mount nothing before the API shows the volume on this node.
    fake = node.env.fake
    volume_id = node.cluster.volume_id
    fake.set_volume_server(volume_id, None)
    fake.set_server_status(node.other_server_id, "off")
    fake.inject(operation="volume.attach", code="locked", count=2)
    fake.inject(
        operation="volume.get", skip=2, count=1, then=lambda: fake.set_volume_server(volume_id, node.other_server_id)
    )
    mounted_at_attach: list[bool] = []
    node.devices.on_change = lambda change, _: (
        mounted_at_attach.append(node.mounted()) if change == "attached" else None
    )
    mark = fake.requests.mark()
    failover = node.failover()

    with node.health_driver():
        record = failover.promoter.run(master_token())

    attach_statuses = [
        item.status for item in fake.requests.records(mark) if item.route == "/volumes/{id}/actions/attach"
    ]
    assert attach_statuses == [423, 423, 409, 201]
    assert record.outcome is RecordOutcome.SUCCEEDED
    assert node.volume_holder() == node.server_id
    assert mounted_at_attach == [False]
    assert node.mounted()
    failover.close()


@pytest.mark.parametrize("action", ["error", "never"])
def test_accepted_assign_not_done(podman: PodmanService, action: str) -> None:
    # Assign returns 201, but the action ends in error or stays running past the deadline:
    # the step fails, no container starts, the failure is recorded and alerted.
    with failover_node(podman, overrides={"deadlines.cloud_step": 2.0}) as node:
        node.env.fake.inject(operation="floating_ip.assign", action=action)
        failover = node.failover()

        with node.health_driver(), pytest.raises((CloudError, DeadlineExceeded)) as caught:
            failover.promoter.run(master_token())

        if action == "error":
            assert isinstance(caught.value, CloudError)
            assert "ended in error" in str(caught.value)
        else:
            assert isinstance(caught.value, DeadlineExceeded)
            assert "action" in str(caught.value)
        assert_released(node)
        assert node.project.states()["postfix-mailcow"] == "created"
        record = last_promote(node)
        assert record.outcome is RecordOutcome.FAILED
        assert record.failed_step == "floating IPs"
        assert AlertEvent.FAILOVER_FAILED in node.alerter.events()
        assert "floating IPs" in node.alerter.reasons(AlertEvent.FAILOVER_FAILED)[0]
        failover.close()


def test_rate_limit_waited_out(node: FailoverNode) -> None:
    node.env.fake.inject(operation="volume.get", rate_limit_reset_in=1.0)
    mark = node.env.fake.requests.mark()
    failover = node.failover()

    with node.health_driver():
        record = failover.promoter.run(master_token())

    statuses = [item.status for item in node.env.fake.requests.records(mark)]
    assert 429 in statuses
    assert record.outcome is RecordOutcome.SUCCEEDED
    volume_step = next(step for step in record.steps if step.name == "volume attach")
    assert volume_step.seconds >= 0.5
    assert node.volume_holder() == node.server_id
    failover.close()


def test_project_name_drift_rejected(podman: PodmanService) -> None:
    # The volume contains the data of project "mailcow-dockerized" (the old compose name), the node
    # expects another. Promote must stop with an error naming what exists, start nothing, and
    # leave the volume unmounted.
    with failover_node(podman, volume_project="mailcow-dockerized") as node:
        failover = node.failover()

        with pytest.raises(VolumeRejected) as caught:
            failover.promoter.run(master_token())

        message = str(caught.value)
        assert "mailcow-dockerized" in message
        assert node.project.name in message
        assert_released(node)
        assert node.project.states()["dovecot-mailcow"] == "created"
        assert last_promote(node).failed_step == "marker"
        assert last_promote(node).outcome is RecordOutcome.REFUSED
        assert AlertEvent.FAILOVER_FAILED in node.alerter.events()
        failover.close()


def test_missing_marker_rejected(podman: PodmanService) -> None:
    with failover_node(podman, marker=False) as node:
        failover = node.failover()

        with pytest.raises(VolumeRejected, match="no volume marker"):
            failover.promoter.run(master_token())

        assert_released(node)
        assert node.project.states()["nginx-mailcow"] == "created"
        failover.close()


def test_other_cluster_marker_rejected(podman: PodmanService) -> None:
    with failover_node(podman) as node:
        marker_dir = node.volume.workdir / "edit"
        marker_dir.mkdir()
        subprocess.run(["mount", str(node.volume.device), str(marker_dir)], check=True)
        path = marker_dir / ".mailcow-ha" / "volume.json"
        document = json.loads(path.read_text())
        document["cluster"] = "someone-else"
        path.write_text(json.dumps(document))
        subprocess.run(["umount", str(marker_dir)], check=True)
        failover = node.failover()

        with pytest.raises(VolumeRejected, match="someone-else"):
            failover.promoter.run(master_token())

        assert_released(node)
        failover.close()


def test_unformatted_volume_never_formatted(podman: PodmanService) -> None:
    with failover_node(podman, filesystem=None) as node:
        failover = node.failover()

        with pytest.raises(VolumeRejected, match="never formats"):
            failover.promoter.run(master_token())

        assert_released(node)
        probe = subprocess.run(["blkid", "-p", str(node.volume.device)], capture_output=True, check=False)
        assert probe.returncode == 2
        assert probe.stdout == b""
        failover.close()


def test_volume_without_mmp_rejected(podman: PodmanService) -> None:
    with failover_node(podman, mmp=False) as node:
        failover = node.failover()

        with pytest.raises(VolumeRejected, match="multi-mount protection"):
            failover.promoter.run(master_token())

        assert_released(node)
        failover.close()


def test_volume_without_mmp_accepted_when_configured(podman: PodmanService) -> None:
    with failover_node(podman, mmp=False, overrides={"volume.require_mmp": False}) as node:
        failover = node.failover()

        with node.health_driver():
            record = failover.promoter.run(master_token())

        assert record.outcome is RecordOutcome.SUCCEEDED
        assert node.mounted()
        failover.close()


def test_mounted_elsewhere_blocked_by_mmp(node: FailoverNode, tmp_path: Path) -> None:
    # A second loop device on the same image is a second server still using the disk. ext4
    # multi-mount protection makes the kernel reject promote's mount.
    other_host = node.volume.second_device()
    other_mount = tmp_path / "other-host"
    other_mount.mkdir()
    subprocess.run(["mount", "-t", "ext4", str(other_host), str(other_mount)], check=True)
    failover = node.failover()

    with pytest.raises(Exception, match="mounting"):
        failover.promoter.run(master_token())

    assert not node.mounted()
    assert node.project.running() == []
    assert last_promote(node).failed_step == "mount"
    failover.close()


def test_breaker_trips_on_second_failover(node: FailoverNode) -> None:
    failover = node.failover()
    with node.health_driver():
        failover.promoter.run(master_token())
    failover.demoter.run(reason="test: the node lost MASTER")
    node.env.fake.set_volume_server(node.cluster.volume_id, node.other_server_id)
    node.env.fake.set_floating_ip_server(node.cluster.floating_ip_ids[0], node.other_server_id)
    mark = node.env.fake.requests.mark()

    with pytest.raises(Refused, match="circuit breaker open"):
        failover.promoter.run(master_token())

    assert node.env.fake.requests.counts(mark) == {}
    assert node.volume_holder() == node.other_server_id
    assert_released(node)
    assert AlertEvent.BREAKER_TRIPPED in node.alerter.events()
    assert last_promote(node).outcome is RecordOutcome.REFUSED

    failover.breaker.reset()
    with node.health_driver():
        record = failover.promoter.run(master_token())
    assert record.outcome is RecordOutcome.SUCCEEDED
    failover.close()


@pytest.mark.parametrize("damage", ["corrupt", "unreadable"])
def test_damaged_history_fails_open(node: FailoverNode, damage: str) -> None:
    history_path = node.config.paths.state_dir / state.HISTORY_FILE
    history_path.parent.mkdir(parents=True, exist_ok=True)
    if damage == "corrupt":
        history_path.write_bytes(b"\xff{ not json")
    else:
        history_path.mkdir()  # reading a directory fails with EISDIR, as an I/O error would
    failover = node.failover()

    with node.health_driver():
        record = failover.promoter.run(master_token())

    assert record.outcome is RecordOutcome.SUCCEEDED
    assert node.project.running() == ALL_SERVICES
    assert AlertEvent.STATE_CORRUPT in node.alerter.events()
    if damage == "corrupt":
        assert list(history_path.parent.glob("history.json.corrupt-*"))
        assert last_promote(node).id == record.id
    failover.close()


def test_unhealthy_container_fails_promote(podman: PodmanService) -> None:
    with failover_node(
        podman, modes={"rspamd-mailcow": "unhealthy"}, overrides={"deadlines.containers_healthy": 3.0}
    ) as node:
        failover = node.failover()

        with node.health_driver(), pytest.raises(Exception, match="rspamd-mailcow"):
            failover.promoter.run(master_token())

        assert_released(node)
        assert last_promote(node).failed_step == "containers healthy"
        failover.close()


def test_exited_container_fails_fast(podman: PodmanService) -> None:
    with failover_node(podman, modes={"redis-mailcow": "exit"}) as node:
        failover = node.failover()

        with node.health_driver(), pytest.raises(Exception, match="will not restart"):
            failover.promoter.run(master_token())

        assert_released(node)
        containers_step = next(step for step in last_promote(node).steps if step.name == "containers healthy")
        assert containers_step.seconds < node.config.deadlines.containers_healthy
        failover.close()


def test_missing_container_named(node: FailoverNode) -> None:
    node.podman.client.remove_container(node.project.containers.pop("dovecot-mailcow"), force=True)
    failover = node.failover()

    with pytest.raises(Exception, match="dovecot-mailcow"):
        failover.promoter.run(master_token())

    assert_released(node)
    failover.close()


def test_two_floating_ips_and_parallel_moves(podman: PodmanService) -> None:
    with failover_node(podman, floating_ips=2) as node:
        node.env.fake.set_action_latency(None, 0.5)
        failover = node.failover()

        with node.health_driver():
            record = failover.promoter.run(master_token())

        assert node.floating_ip_holders() == [node.server_id, node.server_id]
        steps = {step.name: step.seconds for step in record.steps}
        # Detach and attach take one action each, assign one per address: run in parallel,
        # the cloud step lasts about as long as the slower of the two, not their sum.
        assert steps["cloud"] < steps["floating IPs"] + steps["volume attach"]
        failover.close()


def test_superseded_while_waiting_for_health(node: FailoverNode) -> None:
    failover = node.failover()
    token = master_token()
    errors: list[BaseException] = []

    def promote() -> None:
        try:
            failover.promoter.run(token)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=promote)
    thread.start()
    # No health driver: the containers stay `starting`, and promote waits for them.
    deadline = threading.Event()
    while token.step != "containers healthy" and thread.is_alive():
        deadline.wait(0.05)
    token.cancel("keepalived reported BACKUP")
    thread.join(30)

    assert not thread.is_alive()
    assert len(errors) == 1
    assert type(errors[0]).__name__ == "Superseded"
    assert_released(node)
    assert last_promote(node).outcome is RecordOutcome.SUPERSEDED
    assert last_promote(node).steps[-1].name == "containers healthy"
    assert AlertEvent.FAILOVER_FAILED not in node.alerter.events()
    failover.close()


def test_unmounted_mount_point_rejected(node: FailoverNode) -> None:
    # The mount did not happen, but the bare directory contains what looks like the volume's data
    # (a marker and the project directory on the root disk). It must not be accepted.
    write_marker(node.mount_point, VolumeMarker(node.config.cluster, node.cluster.volume_id, "2026-01-01T00:00:00Z"))
    (node.mount_point / node.project.name).mkdir()
    node.env.fake.set_volume_server(node.cluster.volume_id, node.server_id)
    volume = SharedVolume(node.config)

    with pytest.raises(VolumeRejected, match="is not a mount of the shared volume"):
        volume.check_contents()


def test_copy_on_root_disk_hidden_by_mount(node: FailoverNode, caplog: pytest.LogCaptureFixture) -> None:
    # Files written into the bare mount point by a mount that once silently failed are reported,
    # then hidden by the real mount. Promote checks the real volume's marker.
    (node.mount_point / "stray-mail").mkdir(parents=True)
    failover = node.failover()

    with node.health_driver():
        record = failover.promoter.run(master_token())

    assert record.outcome is RecordOutcome.SUCCEEDED
    assert any("stray-mail" in message and "root disk" in message for message in caplog.messages)
    assert not (node.mount_point / "stray-mail").exists()
    failover.close()


def test_foreign_mount_left_alone(node: FailoverNode) -> None:
    node.mount_point.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "mcha-foreign", str(node.mount_point)], check=True)
    failover = node.failover()
    try:
        with pytest.raises(BlockDeviceError, match="tmpfs"):
            failover.promoter.run(master_token())

        assert node.volume.mount_points() == []
        assert [entry.fstype for entry in blockdev.mounts_at(node.mount_point, blockdev.read_mountinfo())] == ["tmpfs"]
        assert node.project.running() == []
        assert AlertEvent.DEMOTE_FAILED in node.alerter.events()
    finally:
        subprocess.run(["umount", str(node.mount_point)], check=False)
        failover.close()


def test_server_id_looked_up_by_name(podman: PodmanService) -> None:
    # User data cannot contain the server's own id, so the node config may leave it out.
    with failover_node(podman, overrides={"hetzner.server_id": None}) as node:
        mark = node.env.fake.requests.mark()
        failover = node.failover()

        with node.health_driver():
            record = failover.promoter.run(master_token())

        assert record.outcome is RecordOutcome.SUCCEEDED
        assert node.volume_holder() == node.server_id
        assert node.env.fake.requests.counts(mark).get("GET /servers", 0) == 1
        failover.close()


def test_server_id_read_from_members(podman: PodmanService) -> None:
    # The membership sync stored this server's id, so promote needs no API request to learn it.
    with failover_node(podman, overrides={"hetzner.server_id": None}) as node:
        members = (Member(1, node.config.node.name, node.cluster.private_ips[0], node.server_id),)
        state.write_json(
            node.config.paths.state_dir / state.MEMBERS_FILE, Membership(members, node.server_id, "api", 0.0).to_json()
        )
        mark = node.env.fake.requests.mark()
        failover = node.failover()

        with node.health_driver():
            record = failover.promoter.run(master_token())

        assert record.outcome is RecordOutcome.SUCCEEDED
        assert node.volume_holder() == node.server_id
        assert node.env.fake.requests.counts(mark).get("GET /servers", 0) == 0
        failover.close()
