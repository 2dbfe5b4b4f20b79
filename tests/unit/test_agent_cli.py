"""The agent's commands: `maintenance on|off|status`, `peers show`, and the agent's start checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from harness.nodeconfig import node_config_dict, write_node_config
from harness.ports import free_port
from mailcow_ha.agent.process import AgentLock
from mailcow_ha.agent.snapshot import NodeSnapshot
from mailcow_ha.agent.statusapi import StatusApi
from mailcow_ha.cli import main
from mailcow_ha.cli.agent import main as agent_main
from mailcow_ha.errors import ExitCode
from mailcow_ha.ops.maintenance import ACTION, action_handler, read_maintenance


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    document = node_config_dict(paths={"state_dir": str(tmp_path / "state"), "run_dir": str(tmp_path / "run")})
    return write_node_config(tmp_path / "node.yaml", document)


def test_maintenance_round_trip(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    on = main(
        ["--config", str(config_path), "maintenance", "on", "--local", "--for", "30m", "--reason", "mailcow update"]
    )
    status_on = main(["--config", str(config_path), "maintenance", "status", "--json"])
    document = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    off = main(["--config", str(config_path), "maintenance", "off", "--local"])
    status_off = main(["--config", str(config_path), "maintenance", "status"])
    output = capsys.readouterr().out

    assert on == ExitCode.OK
    assert status_on == ExitCode.OK
    assert document["active"] is True
    assert document["window"]["reason"] == "mailcow update"
    assert document["window"]["expires_at"] - document["window"]["since"] == 1800
    assert off == ExitCode.OK
    assert status_off == ExitCode.DEGRADED
    assert "maintenance mode on mailcow-ha-test-1: off" in output


def test_maintenance_rejects_bad_duration(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config_path), "maintenance", "on", "--for", "soon"])

    assert exit_info.value.code == ExitCode.USAGE
    assert "duration 'soon' is invalid" in capsys.readouterr().err


def test_peers_show_from_config(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--config", str(config_path), "peers", "show", "--json"])
    document = json.loads(capsys.readouterr().out)

    assert code == ExitCode.OK
    assert document["source"] == "config"
    assert [member["name"] for member in document["members"]] == [f"mailcow-ha-test-{i}" for i in (1, 2, 3)]


def test_agent_rejects_invalid_config(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("cluster: [not valid\n")
    path.chmod(0o600)

    assert agent_main(["--config", str(path)]) == ExitCode.CONFIG


def test_second_agent_rejected(config_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mailcow_ha.cli.agent.LOCK_TIMEOUT", 0.2)
    lock = AgentLock(tmp_path / "run")
    lock.acquire(1.0)
    try:
        code = agent_main(["--config", str(config_path)])
    finally:
        lock.release()

    assert code == ExitCode.REFUSED
    assert not (tmp_path / "run" / "agent.pid").exists()


def test_maintenance_reaches_other_members(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    members = [
        {"name": "mailcow-ha-test-1", "index": 1, "private_ip": "127.0.0.1"},
        {"name": "mailcow-ha-test-2", "index": 2, "private_ip": "127.0.0.2"},
        {"name": "mailcow-ha-test-3", "index": 3, "private_ip": "127.0.0.3"},
    ]
    document = node_config_dict(
        node={"name": "mailcow-ha-test-1", "index": 1, "private_ip": "127.0.0.1"},
        peers=members,
        status_api={"secret": "cli-test-secret", "port": port},
        paths={"state_dir": str(tmp_path / "state-1"), "run_dir": str(tmp_path / "run")},
    )
    config_path = write_node_config(tmp_path / "node.yaml", document)
    peer_state = tmp_path / "state-2"
    snapshot = NodeSnapshot("mailcow-ha-test", "mailcow-ha-test-2", 2, "127.0.0.2", "0", 0.0, 0.0)
    api = StatusApi(
        address="127.0.0.2",
        port=port,
        cluster="mailcow-ha-test",
        node="mailcow-ha-test-2",
        secret=SecretStr("cli-test-secret"),
        snapshot=lambda: snapshot,
    )
    api.register_action(ACTION, action_handler(peer_state, "mailcow-ha-test-2"), summary="test", timeout=5.0)
    api.start()
    try:
        on = main(["--config", str(config_path), "maintenance", "on", "--for", "1h", "--reason", "update"])
        peer_window, _ = read_maintenance(peer_state)
        off = main(["--config", str(config_path), "maintenance", "off"])
        peer_after, _ = read_maintenance(peer_state)
        output = capsys.readouterr()
        main(["--config", str(config_path), "maintenance", "off"])
        second_off = capsys.readouterr().out
    finally:
        api.stop()
    assert "maintenance mode on mailcow-ha-test-1: was already off" in second_off
    assert "maintenance mode on mailcow-ha-test-2: was already off" in second_off

    assert on == ExitCode.DEGRADED
    assert peer_window is not None
    assert peer_window.reason == "update"
    assert peer_window.expires_at is not None
    assert peer_window.expires_at - peer_window.since == 3600
    assert off == ExitCode.DEGRADED
    assert peer_after is None
    assert "maintenance mode on mailcow-ha-test-2: on until" in output.out
    assert "maintenance mode on mailcow-ha-test-3: NOT changed" in output.err
    assert "was not changed on mailcow-ha-test-3" in output.err
