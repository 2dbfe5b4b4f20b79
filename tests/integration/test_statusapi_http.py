"""The status API's HTTP server and client on loopback: reads, signed actions, rejections."""

from __future__ import annotations

import http.client
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from harness.nodeconfig import deep_update, node_config_dict, write_node_config
from mailcow_ha.agent.apiauth import signed_headers
from mailcow_ha.agent.snapshot import GaleraSnapshot, NodeSnapshot
from mailcow_ha.agent.statusapi import ActionInputError, StatusApi
from mailcow_ha.agent.statusclient import StatusApiError, StatusClient
from mailcow_ha.cli import main
from mailcow_ha.config import parse_config
from mailcow_ha.errors import ConfigError, DatabaseError, ExitCode, Refused
from mailcow_ha.failover.history import HistoryStore, RecordKind, RecordOutcome

pytestmark = pytest.mark.integration

SECRET = "status-api-test-secret"


def make_snapshot(vrrp_state: str = "MASTER", healthy: bool = True) -> NodeSnapshot:
    return NodeSnapshot(
        cluster="prod",
        node="node-a",
        node_index=1,
        private_ip="127.0.0.1",
        agent_version="test",
        agent_started_at=1.0,
        taken_at=2.0,
        vrrp_state=vrrp_state,
        healthy=healthy,
        reason="all probes pass" if healthy else "galera: non-Primary",
        galera=GaleraSnapshot(reachable=True, ready=True, cluster_status="Primary", local_state="Synced"),
    )


class Node:
    """A status API on 127.0.0.1 with an ephemeral port, and a client for it."""

    def __init__(self, **kwargs: Any) -> None:
        self.snapshot = make_snapshot()
        self.calls: list[dict[str, Any]] = []
        self.api = StatusApi(
            address="127.0.0.1",
            port=0,
            cluster="prod",
            node="node-a",
            secret=SecretStr(SECRET),
            snapshot=lambda: self.snapshot,
            **kwargs,
        )
        self.port = self.api.address[1]
        self.client = StatusClient(cluster="prod", secret=SecretStr(SECRET), port=self.port, timeout=2.0)

    def raw(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), json.loads(response.read() or b"{}")
        finally:
            connection.close()


@pytest.fixture
def node() -> Iterator[Node]:
    running = Node()

    def echo(params):
        running.calls.append(dict(params))
        return {"echo": params}

    def reject(params):
        raise Refused("node-b is not in the primary component")

    def bad_input(params):
        raise ActionInputError("parameter 'target' is missing")

    def crash(params):
        raise RuntimeError(f"boom with {SECRET}")

    def database(params):
        raise DatabaseError("query on /run/mysqld/mysqld.sock timed out")

    def slow(params):
        time.sleep(float(params.get("seconds", 1)))
        return {}

    for name, handler in [
        ("echo", echo),
        ("refuse", reject),
        ("bad-input", bad_input),
        ("crash", crash),
        ("database", database),
        ("slow", slow),
    ]:
        running.api.register_action(name, handler, summary=f"test action {name}", timeout=0.5)
    running.api.start()
    yield running
    running.api.stop()


def test_status_round_trip(node):
    snapshot = node.client.status("127.0.0.1", node="node-a")

    assert snapshot == node.snapshot


def test_health_and_master_paths(node):
    assert node.raw("GET", "/v1/health")[0] == 200
    assert node.raw("GET", "/v1/master")[0] == 200

    node.snapshot = make_snapshot(vrrp_state="BACKUP", healthy=False)

    status, _, body = node.raw("GET", "/v1/health")
    assert status == 503
    assert body["reason"] == "galera: non-Primary"
    assert node.raw("GET", "/v1/master")[0] == 503


def test_unknown_path_is_404(node):
    status, _, body = node.raw("GET", "/v1/nothing")

    assert status == 404
    assert "/v1/status" in body["error"]


def test_actions_are_listed(node):
    status, _, body = node.raw("GET", "/v1/actions")

    assert status == 200
    assert [action["name"] for action in body["actions"]][:2] == ["bad-input", "crash"]
    assert body["actions"][0]["timeout"] == 0.5


def test_signed_action_runs(node):
    result = node.client.call("127.0.0.1", "echo", {"target": "node-b"}, timeout=1)

    assert result == {"echo": {"target": "node-b"}}
    assert node.calls == [{"target": "node-b"}]


def test_unsigned_action_rejected(node):
    status, headers, body = node.raw(
        "POST", "/v1/actions/echo", b"{}", {"Content-Type": "application/json", "Content-Length": "2"}
    )

    assert status == 401
    assert headers["WWW-Authenticate"] == "MailcowHA-HMAC-SHA256"
    assert "missing" in body["error"]
    assert node.calls == []


def test_wrong_secret_rejected(node):
    intruder = StatusClient(cluster="prod", secret=SecretStr("guessed"), port=node.port)

    with pytest.raises(StatusApiError) as caught:
        intruder.call("127.0.0.1", "echo", {}, timeout=1)

    assert caught.value.status == 401
    assert "invalid signature" in str(caught.value)
    assert node.calls == []


def test_replayed_request_rejected(node):
    body = b"{}"
    headers = signed_headers(
        SECRET.encode(), "prod", method="POST", path="/v1/actions/echo", body=body, now=time.time()
    )
    headers["Content-Length"] = "2"

    first = node.raw("POST", "/v1/actions/echo", body, headers)
    second = node.raw("POST", "/v1/actions/echo", body, headers)

    assert first[0] == 200
    assert second[0] == 401
    assert "replayed" in second[2]["error"]
    assert len(node.calls) == 1


def test_foreign_address_forbidden():
    node = Node(allowed_clients=lambda: {"10.0.1.11", "10.0.1.12"})
    node.api.register_action("echo", lambda params: {}, summary="echo", timeout=1)
    node.api.start()
    try:
        with pytest.raises(StatusApiError) as caught:
            node.client.call("127.0.0.1", "echo", {}, timeout=1)
        assert caught.value.status == 403
        assert "127.0.0.1 is not the private address" in str(caught.value)
    finally:
        node.api.stop()


def test_refused_action_is_409(node):
    with pytest.raises(Refused) as caught:
        node.client.call("127.0.0.1", "refuse", {}, timeout=1, node="node-a")

    assert "HTTP 409" in str(caught.value)
    assert "node-b is not in the primary component" in str(caught.value)
    assert "node-a (127.0.0.1:" in str(caught.value)


def test_invalid_input_is_400(node):
    with pytest.raises(StatusApiError) as caught:
        node.client.call("127.0.0.1", "bad-input", {}, timeout=1)

    assert caught.value.status == 400
    assert "'target' is missing" in str(caught.value)


def test_project_error_is_500_with_message(node):
    with pytest.raises(StatusApiError) as caught:
        node.client.call("127.0.0.1", "database", {}, timeout=1)

    assert caught.value.status == 500
    assert "mysqld.sock timed out" in str(caught.value)


def test_unexpected_error_hides_details(node, caplog):
    with pytest.raises(StatusApiError) as caught:
        node.client.call("127.0.0.1", "crash", {}, timeout=1)

    assert caught.value.status == 500
    assert "RuntimeError" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_unknown_action_is_404(node):
    with pytest.raises(StatusApiError) as caught:
        node.client.call("127.0.0.1", "nothing", {}, timeout=1)

    assert caught.value.status == 404
    assert "registered: bad-input, crash" in str(caught.value)


def test_non_object_body_is_400(node):
    body = b"[1, 2]"
    headers = signed_headers(
        SECRET.encode(), "prod", method="POST", path="/v1/actions/echo", body=body, now=time.time()
    )
    headers["Content-Length"] = str(len(body))

    status, _, response = node.raw("POST", "/v1/actions/echo", body, headers)

    assert status == 400
    assert response["error"] == "body must be a JSON object"


def test_oversized_body_is_413(node):
    status, _, _ = node.raw("POST", "/v1/actions/echo", b"x" * 70000, {"Content-Length": "70000"})

    assert status == 413


def test_slow_action_times_out_at_client(node, monkeypatch):
    monkeypatch.setattr("mailcow_ha.agent.statusclient.ACTION_MARGIN", 0.2)

    with pytest.raises(StatusApiError) as caught:
        node.client.call("127.0.0.1", "slow", {"seconds": 2}, timeout=0.3)

    assert "timed out" in str(caught.value)


def test_snapshot_failure_is_503():
    node = Node()

    def broken() -> NodeSnapshot:
        raise OSError("probe thread died")

    node.api._snapshot = broken
    node.api.start()
    try:
        with pytest.raises(StatusApiError) as caught:
            node.client.status("127.0.0.1")
        assert caught.value.status == 503
        assert "snapshot unavailable: OSError" in str(caught.value)
    finally:
        node.api.stop()


def test_stopped_api_refuses_connections():
    node = Node()
    node.api.start()
    node.api.stop()

    with pytest.raises(StatusApiError) as caught:
        node.client.status("127.0.0.1")

    assert "refused the connection" in str(caught.value)


def test_silent_peer_times_out():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = StatusClient(cluster="prod", secret=SecretStr(SECRET), port=listener.getsockname()[1], timeout=0.3)

        with pytest.raises(StatusApiError) as caught:
            client.status("127.0.0.1", node="node-c")

    assert "node-c (127.0.0.1:" in str(caught.value)
    assert "timed out" in str(caught.value)


def test_wildcard_address_rejected():
    with pytest.raises(ConfigError) as caught:
        StatusApi(
            address="0.0.0.0",
            port=0,
            cluster="prod",
            node="node-a",
            secret=SecretStr(SECRET),
            snapshot=make_snapshot,
        )

    assert "every interface" in str(caught.value)


def test_port_in_use_is_config_error(node):
    with pytest.raises(ConfigError) as caught:
        StatusApi(
            address="127.0.0.1",
            port=node.port,
            cluster="prod",
            node="node-a",
            secret=SecretStr(SECRET),
            snapshot=make_snapshot,
        )

    assert f"127.0.0.1:{node.port}" in str(caught.value)


def test_secret_never_logged(node, caplog):
    intruder = StatusClient(cluster="prod", secret=SecretStr("guessed-secret"), port=node.port)

    with caplog.at_level(logging.DEBUG):
        node.client.call("127.0.0.1", "echo", {"x": 1}, timeout=1)
        with pytest.raises(StatusApiError):
            intruder.call("127.0.0.1", "echo", {}, timeout=1)

    assert SECRET not in caplog.text
    assert "guessed-secret" not in caplog.text
    assert "rejected /v1/actions/echo from 127.0.0.1" in caplog.text


def test_concurrent_reads(node):
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(10):
                node.client.status("127.0.0.1")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert errors == []


def test_history_served_from_state_dir(tmp_path):
    address = f"127.{random.randrange(1, 250)}.{random.randrange(1, 250)}.1"
    with socket.socket() as probe:
        probe.bind((address, 0))
        port = probe.getsockname()[1]
    document = deep_update(node_config_dict(), "node.private_ip", address)
    document = deep_update(document, "status_api.port", port)
    document = deep_update(document, "paths.state_dir", str(tmp_path / "state"))
    config = parse_config(document)
    store = HistoryStore(config.paths.state_dir)
    record = store.finish(
        store.start(RecordKind.SWITCHOVER, "mailcow-ha-test-1", "switchover from node-2"), RecordOutcome.SUCCEEDED, ()
    )
    api = StatusApi.from_config(config, make_snapshot)
    api.start()
    try:
        client = StatusClient.from_config(config)

        assert client.history(address) == [record]
        (tmp_path / "state" / "history.json").write_text("{broken")
        with pytest.raises(StatusApiError) as caught:
            client.history(address)
        assert "is lost: state file" in str(caught.value)
        assert "history.json is not valid JSON" in str(caught.value)
        assert (tmp_path / "state" / "history.json").read_text() == "{broken"
        assert not list((tmp_path / "state").glob("history.json.corrupt-*"))
        with pytest.raises(StatusApiError, match="is lost: state file"):
            client.history(address)
    finally:
        api.stop()


def test_corrupt_history_makes_history_degraded(tmp_path, capsys):
    address = f"127.{random.randrange(1, 250)}.{random.randrange(1, 250)}.1"
    with socket.socket() as probe:
        probe.bind((address, 0))
        port = probe.getsockname()[1]
    document = node_config_dict(
        node={"name": "mailcow-ha-test-1", "index": 1, "private_ip": address},
        peers=[{"name": "mailcow-ha-test-1", "index": 1, "private_ip": address}],
    )
    document = deep_update(document, "status_api.port", port)
    document = deep_update(document, "paths.state_dir", str(tmp_path / "state"))
    config_file = write_node_config(tmp_path / "node.yaml", document)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "history.json").write_text('{"format": 1, "records": [{"id": ')
    api = StatusApi.from_config(parse_config(document), make_snapshot)
    api.start()
    try:
        code = main(["--config", str(config_file), "history"])
    finally:
        api.stop()

    output = capsys.readouterr().out
    assert code == ExitCode.DEGRADED
    assert "history of mailcow-ha-test-1 incomplete: history of mailcow-ha-test-1" in output
    assert "is lost: state file" in output


def open_slow_post(port: int) -> socket.socket:
    """Start a POST whose body never completes, as a slow or hostile client would."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=5)
    connection.sendall(b"POST /v1/actions/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n{")
    return connection


def closed_by_server(connection: socket.socket, within: float) -> bool:
    """Return whether the server closed `connection` within `within` seconds (sending nothing)."""
    connection.settimeout(within)
    try:
        return connection.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_slow_bodies_leave_reads_served(node):
    slow = [open_slow_post(node.port) for _ in range(20)]
    try:
        time.sleep(0.2)
        snapshot = node.client.status("127.0.0.1")
    finally:
        for connection in slow:
            connection.close()

    assert snapshot.node == "node-a"


def test_trickling_request_closed_at_deadline():
    node = Node(request_timeout=0.5)
    node.api.start()
    connection = socket.create_connection(("127.0.0.1", node.port), timeout=5)
    try:
        started = time.monotonic()
        closed = False
        for byte in b"GET /v1/status HTTP/1.1\r\nHost: a\r\nX-Padding: " + b"x" * 100:
            try:
                connection.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if closed_by_server(connection, 0.05):
                closed = True
                break
        elapsed = time.monotonic() - started
    finally:
        connection.close()
        node.api.stop()

    assert closed
    assert elapsed < 2.0


def test_connections_beyond_limit_closed():
    node = Node(max_connections=4, request_timeout=1.0)
    node.api.start()
    idle = [socket.create_connection(("127.0.0.1", node.port), timeout=5) for _ in range(4)]
    try:
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", node.port), timeout=5)
        with extra:
            assert closed_by_server(extra, 2.0)

        for connection in idle:
            assert closed_by_server(connection, 3.0)
        assert node.client.status("127.0.0.1").node == "node-a"
    finally:
        for connection in idle:
            connection.close()
        node.api.stop()


def test_deeply_nested_body_is_400(node):
    body = b"[" * 60000
    headers = signed_headers(
        SECRET.encode(), "prod", method="POST", path="/v1/actions/echo", body=body, now=time.time()
    )
    headers["Content-Length"] = str(len(body))

    status, _, response = node.raw("POST", "/v1/actions/echo", body, headers)

    assert status == 400
    assert response["error"] == "body must be a JSON object"
