"""Read-only commands report corrupt state files and leave them byte-identical; the agent moves them aside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.failovernode import RecordingAlerter
from harness.nodeconfig import node_config_dict, write_node_config
from harness.ports import free_port
from mailcow_ha import state
from mailcow_ha.agent.membership import load_membership
from mailcow_ha.agent.statusapi import StatusApi
from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.alert_ratelimit import ALERTS_STATE_FILE
from mailcow_ha.cli import main
from mailcow_ha.config import BreakerSettings, load_config
from mailcow_ha.errors import ExitCode
from mailcow_ha.failover.breaker import CircuitBreaker
from mailcow_ha.failover.history import HistoryStore, RecordKind, read_failover_start
from mailcow_ha.ops.maintenance import MaintenanceWatch

CORRUPT = {
    state.HISTORY_FILE: b'{"format": 1, "records": [{"id": ',
    state.BREAKER_FILE: b"\xff\xfe not utf-8",
    state.MAINTENANCE_FILE: b'{"since": "yesterday"}',
    state.MEMBERS_FILE: b"[1, 2",
    state.FAILOVER_START_FILE: b"{}}",
    ALERTS_STATE_FILE: b"null garbage",
}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    document = node_config_dict(
        paths={
            "state_dir": str(tmp_path / "state"),
            "run_dir": str(tmp_path / "run"),
            "mount_point": str(tmp_path / "mnt"),
            "docker_socket": f"unix://{tmp_path / 'no-engine.sock'}",
            "keepalived_pid_file": str(tmp_path / "keepalived.pid"),
            "keepalived_data_file": str(tmp_path / "keepalived.data"),
            "health_file": str(tmp_path / "run" / "health"),
            "keepalived_fifo": str(tmp_path / "run" / "keepalived.fifo"),
        }
    )
    document["status_api"]["port"] = free_port()
    return write_node_config(tmp_path / "node.yaml", document)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    for name, content in CORRUPT.items():
        (directory / name).write_bytes(content)
    return directory


def assert_untouched(state_dir: Path) -> None:
    for name, content in CORRUPT.items():
        assert (state_dir / name).read_bytes() == content, f"{name} changed"
    assert sorted(path.name for path in state_dir.iterdir()) == sorted(CORRUPT)


def run(config_path: Path, *argv: str) -> int:
    return main(["--config", str(config_path), "--log-level", "ERROR", *argv])


def test_status_reports_and_keeps_files(config_path, state_dir, capsys) -> None:
    code = run(config_path, "status", "--no-cloud", "--json", "--timeout", "0.5")

    assert_untouched(state_dir)
    assert code == ExitCode.DEGRADED
    problems = json.loads(capsys.readouterr().out)["problems"]
    messages = [problem["message"] for problem in problems if problem["subject"] == "mailcow-ha-test-1"]
    assert any("members.json is not valid JSON" in message for message in messages)
    assert any("history.json is not valid JSON" in message and "left in place" in message for message in messages)


def test_status_metrics_keep_files(config_path, state_dir, capsys) -> None:
    run(config_path, "status", "--no-cloud", "--prometheus", "--timeout", "0.5")

    assert_untouched(state_dir)
    assert "mailcow_ha" in capsys.readouterr().out


def test_history_reports_and_keeps_files(config_path, state_dir, capsys) -> None:
    code = run(config_path, "history", "--timeout", "0.5")

    assert_untouched(state_dir)
    assert code == ExitCode.DEGRADED
    output = capsys.readouterr()
    assert "history of mailcow-ha-test-1 incomplete: state file" in output.out
    assert "history.json is not valid JSON" in output.out
    assert "members.json is not valid JSON" in output.err


def test_breaker_status_reports_and_keeps_files(config_path, state_dir, capsys) -> None:
    code = run(config_path, "breaker", "status")

    assert_untouched(state_dir)
    assert code == ExitCode.OK
    output = capsys.readouterr().out
    assert "problem: state file" in output
    assert "history.json is not valid JSON" in output
    assert "breaker.json is not valid UTF-8" in output


def test_maintenance_status_reports_and_keeps_files(config_path, state_dir, capsys) -> None:
    code = run(config_path, "maintenance", "status", "--json")

    assert_untouched(state_dir)
    assert code == ExitCode.DEGRADED
    document = json.loads(capsys.readouterr().out)
    assert document["active"] is False
    assert "maintenance.json is valid JSON of an unexpected shape" in document["problem"]


def test_peers_show_reports_and_keeps_files(config_path, state_dir, capsys) -> None:
    code = run(config_path, "peers", "show")

    assert_untouched(state_dir)
    assert code == ExitCode.OK
    output = capsys.readouterr()
    assert "warning: state file" in output.err
    assert "members.json is not valid JSON" in output.err
    assert "(from config)" in output.out


def test_gc_dry_run_reports_and_keeps_files(config_path, state_dir, capsys) -> None:
    code = run(config_path, "gc", "--dry-run", "--json")

    assert_untouched(state_dir)
    assert code == ExitCode.OK
    notes = json.loads(capsys.readouterr().out)["notes"]
    for name in (state.HISTORY_FILE, state.MAINTENANCE_FILE, state.MEMBERS_FILE, state.FAILOVER_START_FILE):
        assert any(f"{name} is " in note for note in notes), name


def test_status_api_history_keeps_file(config_path, state_dir) -> None:
    config = load_config(config_path)
    api = StatusApi.from_config(config, lambda: pytest.fail("no snapshot expected"))
    try:
        first = api.handle_get("/v1/history")
        second = api.handle_get("/v1/history")
    finally:
        api.stop()

    assert_untouched(state_dir)
    assert first[0] == 200
    assert "history.json is not valid JSON" in first[1]["problem"]
    assert second[1]["problem"] == first[1]["problem"]


def test_gc_run_moves_files_aside(config_path, state_dir, capsys) -> None:
    code = run(config_path, "gc", "--json")

    assert code == ExitCode.OK
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any("history.json is not valid JSON" in note and "moved to" in note for note in notes)
    assert not (state_dir / state.HISTORY_FILE).exists()
    assert len(list(state_dir.glob(f"{state.HISTORY_FILE}.corrupt-*"))) == 1


def test_agent_reads_move_files_aside(config_path, state_dir) -> None:
    config = load_config(config_path)
    alerter = RecordingAlerter()
    history = HistoryStore(state_dir)
    breaker = CircuitBreaker(state_dir, BreakerSettings(), history, alerter)

    decision = breaker.check(already_serving=False)
    window = MaintenanceWatch(state_dir, alerter).current(0.0)
    started = read_failover_start(state_dir)
    membership = load_membership(config)

    assert decision.allowed
    assert window is None
    assert started is None
    assert membership.problem is not None
    assert len(alerter.reasons(AlertEvent.STATE_CORRUPT)) == 3
    for name in (
        state.HISTORY_FILE,
        state.BREAKER_FILE,
        state.MAINTENANCE_FILE,
        state.FAILOVER_START_FILE,
        state.MEMBERS_FILE,
    ):
        assert not (state_dir / name).exists(), name
        assert len(list(state_dir.glob(f"{name}.corrupt-*"))) == 1, name


def test_transition_write_moves_history_aside(state_dir) -> None:
    store = HistoryStore(state_dir)

    record = store.start(RecordKind.FAILOVER, "mailcow-ha-test-1", "test")

    assert store.read(move_corrupt=False).records == [record]
    assert len(list(state_dir.glob(f"{state.HISTORY_FILE}.corrupt-*"))) == 1
