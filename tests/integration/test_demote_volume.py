"""Demote against real parts: containers in podman, processes holding a real ext4 mount, unmount checks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.failovernode import FailoverNode, failover_node, master_token
from harness.podman import MAILCOW_SERVICES, PodmanService
from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.config import parse_config
from mailcow_ha.errors import ExitCode
from mailcow_ha.failover.demote import DemoteFailed
from mailcow_ha.failover.history import RecordKind, RecordOutcome
from mailcow_ha.failover.wiring import build_failover

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop devices, mounts, mount namespaces and podman"),
]

ALL_SERVICES = sorted(MAILCOW_SERVICES)


@pytest.fixture
def master(podman: PodmanService) -> Iterator[FailoverNode]:
    """A node that promote made master: volume mounted, every container running and healthy."""
    with failover_node(podman) as node:
        failover = node.failover()
        with node.health_driver():
            failover.promoter.run(master_token())
        failover.close()
        assert node.project.running() == ALL_SERVICES
        yield node


@pytest.fixture
def holders(master: FailoverNode) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two processes keeping the mount busy: one stops on SIGTERM, one ignores it."""
    data = master.mount_point / master.project.name
    started = [
        subprocess.Popen(["sleep", "600"], cwd=data),
        # An ignored signal stays ignored across exec, so this sleep needs SIGKILL.
        subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 600"], cwd=data),
    ]
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_demote_releases_everything(master: FailoverNode, holders: list[subprocess.Popen[bytes]]) -> None:
    failover = master.failover()

    done = failover.demoter.run(reason="keepalived reported BACKUP")

    assert master.project.running() == []
    assert not master.mounted()
    assert master.volume.mount_points() == []
    assert [process.wait(5) for process in holders] == [-15, -9]
    assert any(entry.startswith("unmounted") for entry in done)
    assert sum(entry.startswith("stopped ") for entry in done) == len(ALL_SERVICES)
    record = master.history()[-1]
    assert record.kind is RecordKind.DEMOTE
    assert record.outcome is RecordOutcome.SUCCEEDED
    assert [step.name for step in record.steps] == ["containers stop", "volume release"]
    failover.close()


def test_demote_twice_is_noop(master: FailoverNode) -> None:
    failover = master.failover()
    failover.demoter.run()
    records_before = len(master.history())

    done = failover.demoter.run()

    assert done == []
    assert len(master.history()) == records_before
    assert master.alerter.reasons(AlertEvent.DEMOTE_FAILED) == []
    failover.close()


def test_demote_on_standby_noop(podman: PodmanService) -> None:
    with failover_node(podman) as node:
        failover = node.failover()

        assert failover.demoter.run() == []
        assert node.history() == []
        failover.close()


def test_busy_submount_fails_loudly(master: FailoverNode) -> None:
    # Something mounted inside the volume keeps it busy without any process using it: the
    # unmount fails with "target is busy", and demote reports it, alerts and raises.
    submount = master.mount_point / master.project.name / "submount"
    submount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "mcha-test", str(submount)], check=True)
    failover = master.failover()
    try:
        with pytest.raises(DemoteFailed) as caught:
            failover.demoter.run()

        assert "busy" in str(caught.value)
        assert "mailcow-ha demote" in str(caught.value)
        assert master.mounted()
        assert master.project.running() == []
        assert AlertEvent.DEMOTE_FAILED in master.alerter.events()
        assert master.history()[-1].outcome is RecordOutcome.FAILED

        command = subprocess.run(
            [str(Path(sys.executable).parent / "mailcow-ha"), "--config", str(master.config_path), "demote"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert command.returncode == ExitCode.FAILED
        assert "busy" in command.stderr
    finally:
        subprocess.run(["umount", str(submount)], check=False)
        failover.close()

    assert failover.demoter.run() != []
    assert not master.mounted()


def test_engine_down_fails_loudly(master: FailoverNode) -> None:
    # The Docker API does not respond, so the containers keep running with the volume's file
    # system bind-mounted in their own mount namespaces. Demote unmounts it here, but reports
    # that the file system stays active in those namespaces, naming the processes, and fails.
    document = master.config.model_dump(mode="json")
    document["hetzner"]["token"] = master.config.hetzner.token.get_secret_value()
    document["galera"]["password"] = master.config.galera.password.get_secret_value()
    document["status_api"]["secret"] = master.config.status_api.secret.get_secret_value()
    document["paths"]["docker_socket"] = f"unix://{master.workdir / 'no-engine.sock'}"
    broken = build_failover(parse_config(document), master.alerter)

    with pytest.raises(DemoteFailed) as caught:
        broken.demoter.run()

    message = str(caught.value)
    assert "containers:" in message
    assert "still in use after unmounting" in message
    assert "mounted in its mount namespace" in message
    assert not master.mounted()
    assert master.volume.mount_points() == []
    assert master.project.running() == ALL_SERVICES
    assert AlertEvent.DEMOTE_FAILED in master.alerter.events()
    broken.close()

    working = master.failover()
    assert any(entry.startswith("stopped") for entry in working.demoter.run())
    assert master.project.running() == []
    working.close()
