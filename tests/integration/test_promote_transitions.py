"""Transitions against real parts: overlapping keepalived states, crashes half-way, the commands' exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.failovernode import FailoverNode, failover_node, master_token
from harness.podman import MAILCOW_SERVICES, PodmanService, wait_for
from mailcow_ha.errors import ExitCode
from mailcow_ha.failover.history import RecordKind, RecordOutcome
from mailcow_ha.failover.lock import TransitionLock
from mailcow_ha.failover.transitions import TransitionAction, TransitionOutcome, TransitionResult, VrrpState
from mailcow_ha.failover.wiring import build_runner

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop devices, mounts, mount namespaces and podman"),
]

ALL_SERVICES = sorted(MAILCOW_SERVICES)
REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture
def node(podman: PodmanService) -> Iterator[FailoverNode]:
    with failover_node(podman) as built:
        yield built


def assert_released(node: FailoverNode) -> None:
    assert node.project.running() == []
    assert not node.mounted()
    assert node.volume.mount_points() == []


def subprocess_environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY / "tests"), str(REPOSITORY / "infra")])
    return environment


def mailcow_ha(node: FailoverNode, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "mailcow-ha"), "--config", str(node.config_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_environment(),
        check=False,
    )


def test_master_then_backup_ends_demoted(node: FailoverNode) -> None:
    # keepalived reports MASTER, then BACKUP 300 ms later. The promote stops at its next step,
    # the demote runs after it, no promote step starts after the demote began, and the node
    # ends demoted.
    node.env.fake.set_action_latency(None, 1.0)
    outcomes: list[TransitionOutcome] = []
    failover = node.failover()
    runner = build_runner(node.config, failover, on_outcome=outcomes.append)

    with node.health_driver():
        runner.submit(VrrpState.MASTER)
        time.sleep(0.3)
        runner.submit(VrrpState.BACKUP)
        assert runner.wait_idle(60)

    assert [outcome.action for outcome in outcomes] == [TransitionAction.PROMOTE, TransitionAction.DEMOTE]
    assert outcomes[0].result is TransitionResult.SUPERSEDED
    assert outcomes[0].exit_code is ExitCode.SUPERSEDED
    assert outcomes[1].result is TransitionResult.SUCCEEDED
    assert_released(node)
    promote = next(record for record in node.history() if record.kind is RecordKind.FAILOVER)
    assert promote.outcome is RecordOutcome.SUPERSEDED
    assert promote.finished_at is not None
    assert promote.finished_at <= outcomes[1].started_at
    assert "mount" not in [step.name for step in promote.steps]
    assert runner.close(10)
    failover.close()


def test_hung_cloud_call_ends_at_deadline(podman: PodmanService) -> None:
    # The detach request hangs; a BACKUP arrives meanwhile. The request ends at its timeout,
    # the step at its deadline, and then the demote runs.
    with failover_node(podman, overrides={"deadlines.cloud_step": 3.0}) as node:
        node.env.fake.inject(operation="volume.detach", hang=30.0, count=None)
        outcomes: list[TransitionOutcome] = []
        failover = node.failover()
        runner = build_runner(node.config, failover, on_outcome=outcomes.append)

        runner.submit(VrrpState.MASTER)
        time.sleep(0.3)
        runner.submit(VrrpState.FAULT)

        assert runner.wait_idle(30)
        assert [outcome.action for outcome in outcomes] == [TransitionAction.PROMOTE, TransitionAction.DEMOTE]
        assert outcomes[0].result in (TransitionResult.SUPERSEDED, TransitionResult.FAILED)
        assert outcomes[0].finished_at - outcomes[0].started_at < 15
        assert outcomes[1].result is TransitionResult.SUCCEEDED
        assert node.volume_holder() == node.other_server_id
        assert_released(node)
        assert runner.close(10)
        failover.close()


def test_backup_stops_never_ending_action(podman: PodmanService) -> None:
    # The attach action stays running for ever. A BACKUP that arrives meanwhile stops the promote
    # at the next poll of the action, long before the cloud step's deadline, and the demote runs.
    with failover_node(podman, overrides={"deadlines.cloud_step": 60.0}) as node:
        node.env.fake.inject(operation="volume.attach", action="never")
        outcomes: list[TransitionOutcome] = []
        failover = node.failover()
        runner = build_runner(node.config, failover, on_outcome=outcomes.append)
        mark = node.env.fake.requests.mark()

        def attach_running() -> bool:
            return node.env.fake.requests.counts(mark).get("POST /volumes/{id}/actions/attach", 0) == 1

        runner.submit(VrrpState.MASTER)
        wait_for(attach_running, 30, "the attach request")
        runner.submit(VrrpState.BACKUP)

        assert runner.wait_idle(15)
        assert [outcome.result for outcome in outcomes] == [TransitionResult.SUPERSEDED, TransitionResult.SUCCEEDED]
        promote = next(record for record in node.history() if record.kind is RecordKind.FAILOVER)
        attach = next(step for step in promote.steps if step.name == "volume attach")
        assert attach.outcome == "superseded"
        assert_released(node)
        assert runner.close(10)
        failover.close()


def test_backup_during_health_wait(node: FailoverNode) -> None:
    outcomes: list[TransitionOutcome] = []
    failover = node.failover()
    runner = build_runner(node.config, failover, on_outcome=outcomes.append)

    def waiting_for_health() -> bool:
        running = runner.current().running
        return running is not None and running.step == "containers healthy"

    runner.submit(VrrpState.MASTER)
    wait_for(waiting_for_health, 30, "promote waiting for healthy containers")
    assert node.mounted()
    runner.submit(VrrpState.BACKUP)

    assert runner.wait_idle(30)
    assert [outcome.result for outcome in outcomes] == [TransitionResult.SUPERSEDED, TransitionResult.SUCCEEDED]
    assert_released(node)
    assert node.volume_holder() == node.server_id
    assert runner.close(10)
    failover.close()


def test_crash_after_mount_then_retry(node: FailoverNode) -> None:
    # The promote process dies while it waits for healthy containers (the mount and the
    # containers are up). A new promote converges: no second mount, containers healthy, the
    # dead promote's record marked interrupted, and the breaker does not count the retry twice.
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.failovernode", "promote", str(node.config_path)],
        env=subprocess_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: node.project.running() == ALL_SERVICES, 60, "containers started by the first promote")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert node.history()[-1].outcome is RecordOutcome.RUNNING
    assert node.mounted()
    failover = node.failover()

    with node.health_driver():
        record = failover.promoter.run(master_token())

    records = node.history()
    assert records[0].outcome is RecordOutcome.INTERRUPTED
    assert record.outcome is RecordOutcome.SUCCEEDED
    assert record.kind is RecordKind.RESUME
    assert len(node.volume.mount_points()) == 1
    assert node.project.running() == ALL_SERVICES
    failover.close()


def test_crash_during_cloud_step_then_retry(node: FailoverNode) -> None:
    # The promote process dies while the attach action runs. The retry waits out the lock the
    # running action holds, and the breaker lets it retry the interrupted failover.
    node.env.fake.set_action_latency("volume.attach", 2.0)
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.failovernode", "promote", str(node.config_path)],
        env=subprocess_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: node.env.fake.requests.counts().get("POST /volumes/{id}/actions/attach"),
            60,
            "the first promote's attach request",
        )
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert not node.mounted()
    failover = node.failover()

    with node.health_driver():
        record = failover.promoter.run(master_token())

    records = node.history()
    assert records[0].outcome is RecordOutcome.INTERRUPTED
    assert record.outcome is RecordOutcome.SUCCEEDED
    assert node.volume_holder() == node.server_id
    assert node.mounted()
    failover.close()


def test_cli_promote_and_demote(node: FailoverNode) -> None:
    with node.health_driver():
        promoted = mailcow_ha(node, "promote")

    assert promoted.returncode == 0, promoted.stderr
    assert "promote of" in promoted.stdout
    assert node.project.running() == ALL_SERVICES
    assert node.history()[-1].kind is RecordKind.MANUAL_PROMOTE

    demoted = mailcow_ha(node, "demote")

    assert demoted.returncode == 0, demoted.stderr
    assert_released(node)


def test_cli_promote_failure_exit_code(podman: PodmanService) -> None:
    with failover_node(podman, marker=False) as node:
        result = mailcow_ha(node, "promote")

        assert result.returncode == ExitCode.REFUSED
        assert "no volume marker" in result.stderr
        assert_released(node)


def test_cli_waits_for_lock(node: FailoverNode) -> None:
    lock = TransitionLock.in_run_dir(node.config.paths.run_dir)
    lock.acquire("promote", 1.0)
    try:
        result = mailcow_ha(node, "demote", "--lock-timeout", "0.5")
    finally:
        lock.release()

    assert result.returncode == ExitCode.FAILED
    assert "transition lock" in result.stderr
    assert f"pid {os.getpid()}" in result.stderr
