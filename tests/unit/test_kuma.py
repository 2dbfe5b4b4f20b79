"""Uptime Kuma: the monitor plan, the sync's decisions and the client's errors.

The wrong-password case runs against a minimal Socket.IO server on loopback that replies to
the `login` event the way Uptime Kuma does. A live sync runs only when MAILCOW_HA_TEST_KUMA_URL
names a real Uptime Kuma.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import socketio  # type: ignore[import-untyped]

from mailcow_ha.cli import main
from mailcow_ha.errors import ConfigError, ExitCode
from mailcow_ha.mailcow import kuma, kuma_client
from mailcow_ha.mailcow.kuma import ChangeKind


def stack_outputs(nodes: int = 3) -> dict[str, Any]:
    """Return outputs shaped like `pulumi stack output --json` of a mailcow-ha stack."""
    return {
        "mailHostname": "mail.example.org",
        "floatingIpv4": "203.0.113.10",
        "floatingIpv6": "2001:db8:1::1",
        "sharedVolumeId": "301",
        "nodes": [
            {
                "name": f"mx-{index}",
                "index": index,
                "serverId": str(100 + index),
                "publicIpv4": f"198.51.100.{index}",
                "publicIpv6": f"2001:db8:2::{index}",
                "privateIp": f"10.0.1.{10 + index}",
                "dbVolumeId": str(400 + index),
            }
            for index in range(nodes, 0, -1)
        ],
    }


class FakeKuma:
    """Uptime Kuma's monitor and notification lists in memory, with the library's call shapes."""

    def __init__(self) -> None:
        self.monitors: dict[int, dict[str, Any]] = {}
        self.notifications: dict[int, dict[str, Any]] = {}
        self.calls: list[str] = []
        self._next = 1

    def _id(self) -> int:
        self._next += 1
        return self._next

    def get_monitors(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(monitor) for monitor in self.monitors.values()]

    def add_monitor(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(f"add {kwargs['name']}")
        monitor_id = self._id()
        self.monitors[monitor_id] = {"id": monitor_id, **kwargs}
        return {"msg": "Added Successfully.", "monitorID": monitor_id}

    def edit_monitor(self, id_: int, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(f"edit {kwargs['name']}")
        self.monitors[id_].update(kwargs)
        return {"msg": "Saved Successfully.", "monitorID": id_}

    def delete_monitor(self, id_: int) -> dict[str, Any]:
        self.calls.append(f"delete {self.monitors[id_]['name']}")
        del self.monitors[id_]
        return {"msg": "Deleted Successfully."}

    def get_notifications(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(item) for item in self.notifications.values()]

    def add_notification(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(f"add notification {kwargs['name']}")
        notification_id = self._id()
        self.notifications[notification_id] = {"id": notification_id, **kwargs}
        return {"msg": "Saved", "id": notification_id}

    def edit_notification(self, id_: int, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(f"edit notification {kwargs['name']}")
        self.notifications[id_].update(kwargs)
        return {"msg": "Saved", "id": id_}


@pytest.mark.parametrize("nodes", [3, 5])
def test_plan_covers_web_mail_and_nodes(nodes):
    outputs = kuma.parse_outputs(stack_outputs(nodes))

    plan = kuma.plan_monitors(outputs)

    names = [spec.name for spec in plan]
    assert len(plan) == 1 + 4 + nodes
    assert names[0] == "mailcow-ha mail.example.org HTTPS"
    assert plan[0].url == "https://mail.example.org/"
    ports = [(spec.hostname, spec.port) for spec in plan if spec.type == "port"]
    assert ports == [("203.0.113.10", 25), ("203.0.113.10", 465), ("203.0.113.10", 587), ("203.0.113.10", 993)]
    pings = [(spec.name, spec.hostname) for spec in plan if spec.type == "ping"]
    assert pings == [(f"mailcow-ha mail.example.org ping mx-{i}", f"198.51.100.{i}") for i in range(1, nodes + 1)]
    assert len(set(names)) == len(names)


def test_missing_outputs_file(tmp_path):
    with pytest.raises(ConfigError, match=r"not found; write it with `pulumi stack output --json"):
        kuma.load_outputs(tmp_path / "outputs.json")


def test_outputs_file_not_json(tmp_path):
    path = tmp_path / "outputs.json"
    path.write_text("Current stack outputs (2):\n    OUTPUT  VALUE\n")

    with pytest.raises(ConfigError, match="is not JSON"):
        kuma.load_outputs(path)


def test_outputs_of_other_project(tmp_path):
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({"bucketName": "logs-1234", "websiteUrl": "http://example.com"}))

    with pytest.raises(ConfigError) as rejected:
        kuma.load_outputs(path)

    assert "not the output of a mailcow-ha stack" in str(rejected.value)
    assert "bucketName" in str(rejected.value)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("floatingIpv4", "not-an-ip", "floatingIpv4 'not-an-ip' is not an IPv4 address"),
        ("mailHostname", "localhost", "is not a host name"),
        ("nodes", [], "nodes must be a non-empty list"),
        ("nodes", [{"index": 1}], "nodes[0] has no name"),
        ("mailHostname", "mail example.org", "is not a host name"),
        ("mailHostname", "mail..example.org", "is not a host name"),
        ("mailHostname", "-mail.example.org", "is not a host name"),
        ("nodes", [{"name": "mx-1", "index": "one", "publicIpv4": "198.51.100.1"}], "index 'one' is not a node"),
        ("nodes", [{"name": "mx-1", "index": None, "publicIpv4": "198.51.100.1"}], "index None is not a node"),
        ("nodes", [{"name": "mx-1", "index": 0, "publicIpv4": "198.51.100.1"}], "index 0 is not a node"),
        (
            "nodes",
            [
                {"name": "mx-1", "index": 1, "publicIpv4": "198.51.100.1"},
                {"name": "mx-1", "index": 2, "publicIpv4": "198.51.100.2"},
            ],
            "nodes share the name (mx-1)",
        ),
        (
            "nodes",
            [
                {"name": "mx-1", "index": 1, "publicIpv4": "198.51.100.1"},
                {"name": "mx-2", "index": 1, "publicIpv4": "198.51.100.2"},
            ],
            "nodes share the index (1)",
        ),
    ],
)
def test_invalid_output_values(key, value, fragment):
    data = stack_outputs()
    data[key] = value

    with pytest.raises(ConfigError) as rejected:
        kuma.parse_outputs(data)

    assert fragment in str(rejected.value)


def test_diff_against_empty_kuma_creates_all():
    plan = kuma.plan_monitors(kuma.parse_outputs(stack_outputs()))

    changes = kuma.diff_monitors(plan, [], "mailcow-ha mail.example.org")

    assert {change.kind for change in changes} == {ChangeKind.CREATE}


def test_diff_detects_changed_address_and_stale_node():
    outputs = kuma.parse_outputs(stack_outputs(3))
    prefix = kuma.monitor_prefix(outputs)
    existing = [{"id": 7, **spec.fields()} for spec in kuma.plan_monitors(kuma.parse_outputs(stack_outputs(4)))]
    existing[5]["hostname"] = "198.51.100.99"
    existing.append({"id": 99, "name": "someone else's monitor", "type": "http", "url": "https://x.test/"})

    changes = {change.name: change for change in kuma.diff_monitors(kuma.plan_monitors(outputs), existing, prefix)}

    assert changes[f"{prefix} ping mx-1"].kind is ChangeKind.UPDATE
    assert changes[f"{prefix} ping mx-1"].differences == ("hostname",)
    assert changes[f"{prefix} ping mx-4"].kind is ChangeKind.STALE
    assert changes[f"{prefix} HTTPS"].kind is ChangeKind.UNCHANGED
    assert "someone else's monitor" not in changes


def test_diff_rejects_duplicate_planned_name():
    plan = kuma.plan_monitors(kuma.parse_outputs(stack_outputs()))
    existing = [{"id": 1, **plan[0].fields()}, {"id": 2, **plan[0].fields()}]

    with pytest.raises(kuma.KumaError, match="two monitors named"):
        kuma.diff_monitors(plan, existing, "mailcow-ha mail.example.org")


def test_sync_twice_changes_nothing_the_second_time():
    api = FakeKuma()
    outputs = kuma.parse_outputs(stack_outputs(5))
    plan = kuma.plan_monitors(outputs)
    notification = kuma.NotificationSpec("admins", "smtp", {"smtpHost": "127.0.0.1", "smtpPort": 25})

    first = kuma.sync(api, plan, kuma.monitor_prefix(outputs), notification=notification)
    api.calls.clear()
    second = kuma.sync(api, plan, kuma.monitor_prefix(outputs), notification=notification)

    assert first.count(ChangeKind.CREATE) == 10
    assert second.count(ChangeKind.UNCHANGED) == 10
    assert api.calls == ["edit notification admins"]
    assert len(api.monitors) == 10
    assert len(api.notifications) == 1
    assert all(monitor["notificationIDList"] == [first.notification_id] for monitor in api.monitors.values())


def test_sync_attaches_new_notification_to_existing_monitors():
    api = FakeKuma()
    outputs = kuma.parse_outputs(stack_outputs())
    plan = kuma.plan_monitors(outputs)
    kuma.sync(api, plan, kuma.monitor_prefix(outputs))

    report = kuma.sync(api, plan, kuma.monitor_prefix(outputs), notification=kuma.NotificationSpec("ops", "webhook"))

    assert report.count(ChangeKind.UPDATE) == len(plan)
    assert all(monitor["notificationIDList"] == [report.notification_id] for monitor in api.monitors.values())


def test_sync_prunes_only_when_asked():
    api = FakeKuma()
    big = kuma.parse_outputs(stack_outputs(5))
    small = kuma.parse_outputs(stack_outputs(3))
    kuma.sync(api, kuma.plan_monitors(big), kuma.monitor_prefix(big))

    kept = kuma.sync(api, kuma.plan_monitors(small), kuma.monitor_prefix(small))
    assert kept.count(ChangeKind.STALE) == 2
    assert len(api.monitors) == 10

    pruned = kuma.sync(api, kuma.plan_monitors(small), kuma.monitor_prefix(small), prune=True)
    assert pruned.pruned == ("mailcow-ha mail.example.org ping mx-4", "mailcow-ha mail.example.org ping mx-5")
    assert len(api.monitors) == 8


def test_notification_file_validated(tmp_path):
    path = tmp_path / "notification.json"
    path.write_text(json.dumps({"type": "smtp"}))

    with pytest.raises(ConfigError, match="string keys name and type"):
        kuma.load_notification(path)


USERNAME = "admin"
PASSWORD = "correct horse"
LIVE_URL_ENV = "MAILCOW_HA_TEST_KUMA_URL"


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_kuma() -> Iterator[str]:
    """Serve Socket.IO on a free loopback port; `login` accepts only USERNAME/PASSWORD."""
    server = socketio.Server(async_mode="threading")

    def connect(sid: str, environ: dict[str, Any]) -> None:
        server.emit("info", {"version": "1.23.13", "primaryBaseURL": None}, to=sid)

    def login(sid: str, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("username") == USERNAME and data.get("password") == PASSWORD:
            return {"ok": True, "token": "fake-token"}
        return {"ok": False, "msg": "Incorrect username or password."}

    server.on("connect", connect)
    server.on("login", login)

    httpd = make_server("127.0.0.1", 0, socketio.WSGIApp(server), _ThreadingServer, _QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def closed_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unreachable_url_fails_fast():
    url = f"http://127.0.0.1:{closed_loopback_port()}"
    started = time.monotonic()

    with pytest.raises(kuma.KumaError) as failed, kuma_client.connect(url, USERNAME, PASSWORD, timeout=3):
        pass

    assert f"could not connect to Uptime Kuma at {url}" in str(failed.value)
    assert time.monotonic() - started < 10


def test_invalid_url_rejected():
    with pytest.raises(kuma.KumaError, match="is invalid"), kuma_client.connect("ftp://kuma", USERNAME, PASSWORD):
        pass


def test_wrong_password_rejected(fake_kuma):
    with pytest.raises(kuma.KumaError) as failed, kuma_client.connect(fake_kuma, USERNAME, "wrong", timeout=5):
        pass

    message = str(failed.value)
    assert "login to Uptime Kuma" in message
    assert "Incorrect username or password" in message
    assert "wrong" not in message.replace("wrong password", "")


def test_right_password_logs_in(fake_kuma):
    with kuma_client.connect(fake_kuma, USERNAME, PASSWORD, timeout=5) as api:
        assert api is not None


def write_outputs(tmp_path, data: Any) -> str:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_cli_sync_without_url(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KUMA_URL", raising=False)
    outputs = write_outputs(tmp_path, stack_outputs())

    code = main(["kuma", "sync", "--outputs", outputs])

    assert code == ExitCode.CONFIG
    assert "no Uptime Kuma URL" in capsys.readouterr().err


def test_cli_sync_without_password(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KUMA_PASSWORD", raising=False)
    outputs = write_outputs(tmp_path, stack_outputs())

    code = main(["kuma", "sync", "--outputs", outputs, "--url", "http://127.0.0.1:9"])

    assert code == ExitCode.CONFIG
    assert "no Uptime Kuma password" in capsys.readouterr().err


def test_cli_sync_wrong_password(tmp_path, monkeypatch, capsys, fake_kuma):
    monkeypatch.setenv("KUMA_PASSWORD", "not-the-password")
    outputs = write_outputs(tmp_path, stack_outputs())

    code = main(["kuma", "sync", "--outputs", outputs, "--url", fake_kuma, "--timeout", "5"])

    assert code == ExitCode.FAILED
    error = capsys.readouterr().err
    assert "login to Uptime Kuma" in error
    assert "not-the-password" not in error


def test_cli_plan_of_foreign_outputs(tmp_path, capsys):
    outputs = write_outputs(tmp_path, {"vpcId": "vpc-1"})

    assert main(["kuma", "plan", "--outputs", outputs]) == ExitCode.CONFIG
    assert "not the output of a mailcow-ha stack" in capsys.readouterr().err


def test_cli_plan_prints_monitors(tmp_path, capsys):
    outputs = write_outputs(tmp_path, stack_outputs(3))

    assert main(["kuma", "plan", "--outputs", outputs]) == ExitCode.OK
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8
    assert lines[1] == "mailcow-ha mail.example.org SMTP 25: port 203.0.113.10:25 every 60 s"


@pytest.mark.skipif(
    not os.environ.get(LIVE_URL_ENV),
    reason=f"no live Uptime Kuma: set {LIVE_URL_ENV}, MAILCOW_HA_TEST_KUMA_USERNAME and _PASSWORD to run it",
)
def test_live_sync_is_idempotent():
    url = os.environ[LIVE_URL_ENV]
    username = os.environ.get("MAILCOW_HA_TEST_KUMA_USERNAME", "admin")
    password = os.environ.get("MAILCOW_HA_TEST_KUMA_PASSWORD", "")
    data = stack_outputs(3)
    data["mailHostname"] = f"live-{os.getpid()}.mailcow-ha.test"
    outputs = kuma.parse_outputs(data)
    plan = kuma.plan_monitors(outputs)
    prefix = kuma.monitor_prefix(outputs)

    with kuma_client.connect(url, username, password) as api:
        try:
            first = kuma.sync(api, plan, prefix)
            second = kuma.sync(api, plan, prefix)
        finally:
            for monitor in api.get_monitors():
                if str(monitor.get("name", "")).startswith(prefix):
                    api.delete_monitor(int(monitor["id"]))

    assert first.count(kuma.ChangeKind.CREATE) == len(plan)
    assert second.count(kuma.ChangeKind.UNCHANGED) == len(plan)
