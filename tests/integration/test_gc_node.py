"""Garbage collection on a node built from real parts: loop-device volume, podman containers, fake cloud API.

The node's agent is stood in for by a real StatusApi on a loopback address serving a snapshot
the test sets, so GC learns the node's role exactly as in production.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from harness.failovernode import FailoverNode, failover_node, master_token
from harness.fakecloud.faults import Fault
from harness.podman import MAILCOW_SERVICES, PodmanService
from mailcow_ha.agent.snapshot import NodeSnapshot, TransitionSnapshot
from mailcow_ha.agent.statusapi import StatusApi
from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.failover.history import HistoryStore, RecordKind, RecordOutcome
from mailcow_ha.failover.lock import TransitionLock
from mailcow_ha.ops.gc import ActionKind
from mailcow_ha.ops.gc_run import GarbageCollector, GcReport

pytestmark = pytest.mark.integration

ALL_SERVICES = sorted(MAILCOW_SERVICES)
SECRET = "gc-test-secret"


class AgentStandIn:
    """A real StatusApi on a loopback address that serves `vrrp_state` and `running`."""

    def __init__(self) -> None:
        self.address = f"127.{random.randrange(1, 250)}.{random.randrange(1, 250)}.1"
        self.vrrp_state = "BACKUP"
        self.running: str | None = None
        self.name = "unset"
        self.api = StatusApi(
            address=self.address,
            port=0,
            cluster="unset",
            node="unset",
            secret=SecretStr(SECRET),
            snapshot=self.snapshot,
        )
        self.port = self.api.address[1]

    def snapshot(self) -> NodeSnapshot:
        return NodeSnapshot(
            cluster="c",
            node=self.name,
            node_index=1,
            private_ip=self.address,
            agent_version="stand-in",
            agent_started_at=0.0,
            taken_at=time.time(),
            vrrp_state=self.vrrp_state,
            healthy=True,
            reason="stand-in",
            transition=TransitionSnapshot(running=self.running),
        )


@pytest.fixture
def agent() -> Iterator[AgentStandIn]:
    stand_in = AgentStandIn()
    stand_in.api.start()
    yield stand_in
    stand_in.api.stop()


@pytest.fixture
def node(podman: PodmanService, agent: AgentStandIn, tmp_path: Path) -> Iterator[FailoverNode]:
    overrides = {
        "node.private_ip": agent.address,
        "status_api.port": agent.port,
        "status_api.secret": SECRET,
        "paths.keepalived_pid_file": str(tmp_path / "keepalived.pid"),
        "paths.keepalived_data_file": str(tmp_path / "keepalived.data"),
        "galera.data_dir": str(tmp_path / "mysql"),
    }
    with failover_node(podman, overrides=overrides) as built:
        agent.name = built.config.node.name
        yield built


def promote(node: FailoverNode) -> None:
    failover = node.failover()
    with node.health_driver():
        failover.promoter.run(master_token())
    failover.close()
    assert node.project.running() == ALL_SERVICES


def collect(node: FailoverNode, *, dry_run: bool = False) -> GcReport:
    client = StatusClient.from_config(node.config, timeout=2.0)
    collector = GarbageCollector(node.config, alerter=node.alerter, client=client)
    return collector.run(dry_run=dry_run)


def outcome_kinds(report: GcReport) -> list[tuple[ActionKind, str]]:
    return [(outcome.action.kind, outcome.result) for outcome in report.outcomes]


def test_standby_residues_removed(node: FailoverNode, agent: AgentStandIn) -> None:
    promote(node)
    agent.vrrp_state = "BACKUP"

    report = collect(node)

    assert outcome_kinds(report) == [(ActionKind.DEMOTE_STANDBY, "done")]
    assert node.project.running() == []
    assert not node.mounted()
    assert AlertEvent.GC_REPAIRED in node.alerter.events()
    demote = node.history()[-1]
    assert demote.kind is RecordKind.DEMOTE
    assert demote.reason.startswith("gc: mailcow containers run")


def test_dry_run_changes_nothing(node: FailoverNode, agent: AgentStandIn) -> None:
    promote(node)
    agent.vrrp_state = "FAULT"

    report = collect(node, dry_run=True)

    assert outcome_kinds(report) == [(ActionKind.DEMOTE_STANDBY, "planned")]
    assert node.mounted()
    assert node.project.running() == ALL_SERVICES
    assert AlertEvent.GC_REPAIRED not in node.alerter.events()


def test_transition_lock_stops_gc(node: FailoverNode, agent: AgentStandIn) -> None:
    promote(node)
    agent.vrrp_state = "BACKUP"
    lock = TransitionLock.in_run_dir(node.config.paths.run_dir)
    lock.acquire("promote", 1.0)
    try:
        report = collect(node)
    finally:
        lock.release()

    assert report.outcomes == []
    assert "a transition is running" in report.plan.notes[0]
    assert node.mounted()
    assert node.project.running() == ALL_SERVICES


def test_agent_transition_stops_gc(node: FailoverNode, agent: AgentStandIn) -> None:
    record = HistoryStore(node.config.paths.state_dir).start(RecordKind.FAILOVER, node.config.node.name, "running")
    agent.running = "MASTER"

    report = collect(node)

    assert report.outcomes == []
    assert report.plan.notes == ("nothing done: the agent runs a transition to MASTER",)
    assert node.history()[-1] == record


def test_agent_down_without_keepalived_cleans(node: FailoverNode, agent: AgentStandIn) -> None:
    promote(node)
    agent.api.stop()

    report = collect(node)

    assert outcome_kinds(report) == [(ActionKind.DEMOTE_STANDBY, "done")]
    assert "keepalived is not running" in report.outcomes[0].action.reason
    assert not node.mounted()


def test_master_floating_ip_reassigned(node: FailoverNode, agent: AgentStandIn) -> None:
    promote(node)
    agent.vrrp_state = "MASTER"
    fip = node.cluster.floating_ip_ids[0]
    node.env.fake.set_floating_ip_server(fip, node.other_server_id)

    report = collect(node)

    assert outcome_kinds(report) == [(ActionKind.ASSIGN_FLOATING_IPS, "done")]
    assert node.floating_ip_holders() == [node.server_id]
    assert node.volume_holder() == node.server_id
    assert AlertEvent.GC_REPAIRED in node.alerter.events()


def test_master_takes_volume_back(node: FailoverNode, agent: AgentStandIn) -> None:
    agent.vrrp_state = "MASTER"

    with node.health_driver():
        report = collect(node)

    assert outcome_kinds(report) == [(ActionKind.REPROMOTE, "done")]
    assert node.volume_holder() == node.server_id
    assert node.floating_ip_holders() == [node.server_id]
    assert node.mounted()
    assert node.project.running() == ALL_SERVICES
    record = node.history()[-1]
    assert record.kind is RecordKind.MANUAL_PROMOTE
    assert record.reason.startswith("gc: floating IP")


def test_stale_mount_reported_not_moved(node: FailoverNode, agent: AgentStandIn) -> None:
    promote(node)
    agent.vrrp_state = "MASTER"
    node.env.fake.set_volume_server(node.cluster.volume_id, node.other_server_id)

    report = collect(node)

    assert outcome_kinds(report) == [(ActionKind.REPORT_DRIFT, "done")]
    assert node.volume_holder() == node.other_server_id
    assert node.alerter.reasons(AlertEvent.DRIFT)


def test_files_and_records_cleaned(node: FailoverNode, agent: AgentStandIn) -> None:
    state_dir = node.config.paths.state_dir
    run_dir = node.config.paths.run_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = HistoryStore(state_dir).start(RecordKind.FAILOVER, node.config.node.name, "process died")
    leftover = state_dir / ".history.json.abcd1234"
    leftover.write_text("{")
    old = time.time() - 7200
    os.utime(leftover, (old, old))
    dead = run_dir / ".health.999999999.tmp"
    dead.write_text("0")
    fresh = state_dir / ".breaker.json.zyxw9876"
    fresh.write_text("{")

    report = collect(node)

    assert sorted(kind for kind, _ in outcome_kinds(report)) == sorted(
        [ActionKind.CLOSE_RECORDS, ActionKind.REMOVE_FILE, ActionKind.REMOVE_FILE]
    )
    assert not leftover.exists()
    assert not dead.exists()
    assert fresh.exists()
    closed = next(r for r in node.history() if r.id == record.id)
    assert closed.outcome is RecordOutcome.INTERRUPTED


def _has_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 24))
    return False


@pytest.fixture
def database_volume(node: FailoverNode) -> Iterator[tuple[Path, str]]:
    """An ext4 loop device mounted on galera.data_dir, whose image the test can enlarge."""
    image = node.workdir / f"mysql-{os.getpid()}.img"
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True)
    loop = device.stdout.strip()
    mount_point = node.config.galera.data_dir
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", loop], check=True)
        mount_point.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", loop, str(mount_point)], check=True)
        subprocess.run(["truncate", "-s", "160M", str(image)], check=True)
        subprocess.run(["losetup", "-c", loop], check=True)
        yield image, loop
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)
        subprocess.run(["losetup", "-d", loop], check=False)


@pytest.mark.skipif(not _has_sys_resource(), reason="online ext4 growth needs CAP_SYS_RESOURCE, missing here")
def test_database_volume_grown_online(node: FailoverNode, agent: AgentStandIn, database_volume) -> None:
    report = collect(node)

    assert outcome_kinds(report) == [(ActionKind.GROW_FILESYSTEM, "done")]
    assert "GiB to 0.15 GiB" in report.outcomes[0].detail


@pytest.mark.skipif(_has_sys_resource(), reason="checks the error without CAP_SYS_RESOURCE")
def test_grow_without_capability_fails_clearly(node: FailoverNode, agent: AgentStandIn, database_volume) -> None:
    report = collect(node)

    assert outcome_kinds(report) == [(ActionKind.GROW_FILESYSTEM, "failed")]
    assert "CAP_SYS_RESOURCE" in report.outcomes[0].detail
    assert report.failed
    assert node.alerter.reasons(AlertEvent.DRIFT)


def test_report_json_shape(node: FailoverNode, agent: AgentStandIn) -> None:
    from mailcow_ha.cli.gc import render_report, report_to_json

    node.config.paths.run_dir.mkdir(parents=True, exist_ok=True)
    leftover = node.config.paths.run_dir / ".health.999999999.tmp"
    leftover.write_text("1")

    report = collect(node, dry_run=True)
    document = report_to_json(report)
    text = render_report(report, dry_run=True)

    assert document["actions"] == [
        {
            "kind": "remove-file",
            "subject": str(leftover),
            "reason": "temporary file of pid 999999999, which no longer runs",
            "result": "planned",
            "detail": "",
        }
    ]
    assert text.startswith(f"would   remove-file {leftover}")
    assert leftover.exists()


def test_hung_cloud_api_leaves_lock_free(node: FailoverNode, agent: AgentStandIn) -> None:
    promote(node)
    agent.vrrp_state = "MASTER"
    node.env.fake.faults.add(Fault(operation="*", count=None, hang=1.5))
    reports: list[GcReport] = []
    runner = threading.Thread(target=lambda: reports.append(collect(node)))
    lock = TransitionLock.in_run_dir(node.config.paths.run_dir)

    runner.start()
    time.sleep(0.5)
    started = time.monotonic()
    lock.acquire("demote", 10.0)
    waited = time.monotonic() - started
    runner.join(30)
    lock.release()
    node.env.fake.faults.clear()

    assert waited < 0.5
    assert reports[0].outcomes == []
    assert "a transition is running" in reports[0].plan.notes[0]


def test_dry_run_leaves_lock_free(node: FailoverNode, agent: AgentStandIn) -> None:
    promote(node)
    agent.vrrp_state = "BACKUP"
    lock = TransitionLock.in_run_dir(node.config.paths.run_dir)
    reading = threading.Event()

    def slow_engine() -> tuple[str, ...]:
        reading.set()
        time.sleep(1.5)
        return tuple(node.project.running())

    collector = GarbageCollector(
        node.config,
        alerter=node.alerter,
        client=StatusClient.from_config(node.config, timeout=2.0),
        running_services=slow_engine,
    )
    reports: list[GcReport] = []
    runner = threading.Thread(target=lambda: reports.append(collector.run(dry_run=True)))
    runner.start()
    assert reading.wait(10)
    started = time.monotonic()
    lock.acquire("promote", 10.0)
    waited = time.monotonic() - started
    lock.release()
    runner.join(30)

    assert waited < 0.5
    assert outcome_kinds(reports[0]) == [(ActionKind.DEMOTE_STANDBY, "planned")]
    assert node.mounted()
