"""The production wiring (`build_agent`) on an idle healthy standby: real Galera, real podman, the
fake Hetzner API. It makes no API call in steady state and serves its snapshot on the status API."""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.fakecloud.testing import FakeCloudEnv, serve_fake
from harness.galera import GaleraCluster
from harness.nodeconfig import node_config_dict
from harness.podman import MailcowProject, PodmanService, wait_for
from harness.ports import free_port
from mailcow_ha.agent.snapshot import NodeSnapshot
from mailcow_ha.agent.wiring import build_agent
from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.config import parse_config

pytestmark = pytest.mark.integration

USER = "mailcow_ha_steady"
PASSWORD = "steady-password-for-tests"


@pytest.fixture
def cloud() -> Iterator[FakeCloudEnv]:
    with serve_fake() as env:
        yield env


class RecordingAlerter:
    def __init__(self) -> None:
        self.sent: list[tuple[AlertEvent, str]] = []

    def send(self, event: AlertEvent, reason: str, details: dict[str, str] | None = None) -> None:
        self.sent.append((event, reason))


def test_idle_standby_makes_no_api_call(
    tmp_path: Path, galera: GaleraCluster, podman: PodmanService, cloud: FakeCloudEnv
) -> None:
    galera.create_user(USER, PASSWORD)
    cluster = cloud.cluster()
    project = MailcowProject.create(podman, f"mcha{secrets.token_hex(4)}")
    port = free_port()
    (tmp_path / "mnt").mkdir()
    document = node_config_dict(
        node={"name": "mailcow-ha-test-1", "index": 1, "private_ip": "127.0.0.1"},
        # No other member: the peers probe would otherwise ask their status APIs off this machine.
        peers=[],
        hetzner=cloud.hetzner_section(cluster, 1),
        galera={"password": PASSWORD, "user": USER, "cluster_name": galera.name, "socket": str(galera.nodes[0].socket)},
        mailcow={"project_name": project.name, "critical_services": sorted(project.containers)},
        status_api={"secret": "steady-state-secret", "port": port},
        paths={
            "state_dir": str(tmp_path / "state"),
            "run_dir": str(tmp_path / "run"),
            "keepalived_fifo": str(tmp_path / "run" / "keepalived.fifo"),
            "health_file": str(tmp_path / "run" / "health"),
            "keepalived_pid_file": str(tmp_path / "run" / "no-keepalived.pid"),
            "mount_point": str(tmp_path / "mnt"),
            "device_dir": str(tmp_path / "dev"),
            "docker_socket": podman.base_url,
        },
        keepalived={"priority": 250, "agent_restart_delay": 0.2},
        # The agent runs inside the test process here, so its guardian would kill pytest on a hang.
        health={"watchdog_timeout": 300},
        membership={"sync_interval": 3600},
    )
    config = parse_config(document)
    alerter = RecordingAlerter()
    agent = build_agent(config, alerter)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: agent.snapshot().reason == "standby: all probes pass", 30, "a healthy standby")
        mark = cloud.fake.requests.mark()
        time.sleep(3.0)
        requests = cloud.fake.requests.counts(mark)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=5) as response:
            served = NodeSnapshot.from_dict(json.loads(response.read()))
        # Read before the agent stops: its guardian then reports the node unhealthy.
        track_file = (tmp_path / "run" / "health").read_text()
    finally:
        agent.stop()
        thread.join(30)
        project.remove()

    assert requests == {}
    assert not thread.is_alive()
    assert served.vrrp_state == "STOP"
    assert served.healthy
    assert served.galera.local_state == "Synced"
    assert served.galera.cluster_size == 3
    assert {probe.name for probe in served.probes} == {"galera", "containers", "mount", "floating-ip", "peers"}
    assert served.breaker is not None
    assert not served.breaker.tripped
    assert track_file == "0\n"
