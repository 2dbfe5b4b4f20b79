"""The fake Hetzner Cloud API run as a process and steered through its control API, as the lab does."""

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hcloud
import pytest
import requests
from hcloud.servers import Server
from hcloud.volumes import Volume

from harness.fakecloud.testing import unretried_client

pytestmark = pytest.mark.integration

TESTS_DIR = Path(__file__).resolve().parents[1]


class FakeProcess:
    def __init__(self, directory: Path, token: str) -> None:
        self.directory = directory
        self.token = token
        self.state_file = directory / "state.json"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        token_file = self.directory / "token"
        token_file.write_text(self.token + "\n")
        ready = self.directory / "ready"
        ready.unlink(missing_ok=True)
        command = [sys.executable, "-m", "harness.fakecloud", "--listen", "127.0.0.1:0"]
        command += ["--token-file", str(token_file), "--state-file", str(self.state_file), "--ready-file", str(ready)]
        environment = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
        self.process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not ready.exists() or not ready.read_text().strip():
            assert self.process.poll() is None, "the fake cloud process exited during start"
            assert time.monotonic() < deadline, "the fake cloud process did not start within 15 s"
            time.sleep(0.05)
        self.url = ready.read_text().strip()

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=5)

    def control(self, method: str, path: str, body: object = None, **params: str | float) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        base = self.url.removesuffix("/v1")
        return requests.request(method, f"{base}/_fake/{path}", json=body, params=params, headers=headers, timeout=40)


@pytest.fixture
def fake_process(tmp_path):
    process = FakeProcess(tmp_path, f"fake-{secrets.token_hex(8)}")
    process.start()
    yield process
    process.stop()


def create(fake_process: FakeProcess, kind: str, **fields: Any) -> dict[str, Any]:
    response = fake_process.control("POST", kind, fields)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def test_control_creates_resources(fake_process):
    network = create(fake_process, "networks", name="lab-net")
    node = create(
        fake_process,
        "servers",
        name="lab-1",
        labels={"cluster": "lab"},
        network_id=network["id"],
        private_ip="10.0.1.11",
    )
    volume = create(fake_process, "volumes", name="lab-data", size=10, server_id=node["id"])
    fip = create(fake_process, "floating_ips", name="lab-ip", server_id=node["id"])
    client = hcloud.Client(fake_process.token, api_endpoint=fake_process.url, timeout=5)

    server = client.servers.get_all(label_selector="cluster=lab")[0]

    assert server.private_net is not None
    assert server.private_net[0].ip == "10.0.1.11"
    assert [entry.id for entry in server.volumes or []] == [volume["id"]]
    assert server.public_net is not None
    assert [entry.id for entry in server.public_net.floating_ips] == [fip["id"]]


def test_control_rejects_bad_input(fake_process):
    unknown = fake_process.control("POST", "servers", {"name": "x", "colour": "red"})
    bad_fault = fake_process.control("POST", "faults", {"operation": "volume.attach"})
    no_route = fake_process.control("GET", "nothing")
    wrong_token = requests.get(f"{fake_process.url.removesuffix('/v1')}/_fake/state", timeout=5)

    assert unknown.status_code == 422
    assert "colour" in unknown.text
    assert bad_fault.status_code == 422
    assert "needs an effect" in bad_fault.json()["error"]["message"]
    assert no_route.status_code == 404
    assert wrong_token.status_code == 401


def test_faults_latency_events_and_counts(fake_process):
    node_a = create(fake_process, "servers", name="a")
    node_b = create(fake_process, "servers", name="b")
    volume = create(fake_process, "volumes", name="data", server_id=node_a["id"])
    assert fake_process.control("PUT", "latency", {"volume.detach": 0.2}).status_code == 200
    fault = fake_process.control("POST", "faults", {"operation": "volume.detach", "code": "locked", "count": 1})
    assert fault.status_code == 201
    events_before = fake_process.control("GET", "events").json()["last"]
    mark = fake_process.control("POST", "mark").json()["mark"]
    client = unretried_client(fake_process.token, fake_process.url, poll_interval=0.05)

    with pytest.raises(hcloud.APIException) as locked:
        client.volumes.detach(Volume(id=volume["id"]))
    client.volumes.detach(Volume(id=volume["id"])).wait_until_finished(max_retries=100)
    client.volumes.attach(Volume(id=volume["id"]), Server(id=node_b["id"]))
    events = fake_process.control("GET", "events", since=events_before, wait=5).json()["events"]
    counts = fake_process.control("GET", "requests", since=mark).json()["counts"]

    assert locked.value.code == "locked"
    kinds = [event["kind"] for event in events if event["kind"].startswith("volume.")]
    assert kinds == ["volume.detached", "volume.attached"]
    assert counts["POST /volumes/{id}/actions/detach"] == 2
    assert counts["POST /volumes/{id}/actions/attach"] == 1


def test_events_long_poll_waits(fake_process):
    node = create(fake_process, "servers", name="a")
    last = fake_process.control("GET", "events").json()["last"]

    started = time.monotonic()
    empty = fake_process.control("GET", "events", since=last, wait=0.5).json()
    waited = time.monotonic() - started
    fake_process.control("PUT", f"servers/{node['id']}/status", {"status": "off"})
    changed = fake_process.control("GET", "events", since=last, wait=5).json()

    assert empty["events"] == []
    assert waited >= 0.4
    assert changed["events"][0]["kind"] == "server.status_changed"
    assert changed["events"][0]["status"] == "off"


def test_never_ending_action_finished_by_control(fake_process):
    node_a = create(fake_process, "servers", name="a")
    node_b = create(fake_process, "servers", name="b")
    fip = create(fake_process, "floating_ips", name="ip", server_id=node_a["id"])
    fake_process.control("POST", "faults", {"operation": "floating_ip.assign", "action": "never"})
    client = hcloud.Client(fake_process.token, api_endpoint=fake_process.url, timeout=5)
    action = client.floating_ips.get_by_id(fip["id"]).assign(Server(id=node_b["id"]))

    finished = fake_process.control("POST", f"actions/{action.id}/finish", {"outcome": "error"})

    holder = client.floating_ips.get_by_id(fip["id"]).server
    assert finished.json()["status"] == "error"
    assert holder is not None
    assert holder.id == node_a["id"]


def test_state_file_survives_restart(fake_process):
    node = create(fake_process, "servers", name="keep", labels={"cluster": "lab"})
    volume = create(fake_process, "volumes", name="keep-data")
    fake_process.control("PUT", f"volumes/{volume['id']}/server", {"server": node["id"]})

    assert fake_process.stop() == 0
    saved = json.loads(fake_process.state_file.read_text())
    fake_process.start()
    client = hcloud.Client(fake_process.token, api_endpoint=fake_process.url, timeout=5)

    holder = client.volumes.get_by_id(volume["id"]).server
    assert [server["name"] for server in saved["servers"]] == ["keep"]
    assert holder is not None
    assert holder.id == node["id"]
    assert create(fake_process, "servers", name="next")["id"] > node["id"]
