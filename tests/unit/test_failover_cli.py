"""`mailcow-ha breaker status|reset` and the promote/demote parsers, without root."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness.nodeconfig import node_config_dict, write_node_config
from mailcow_ha.alert_events import NoAlerter
from mailcow_ha.cli import build_parser, main
from mailcow_ha.config import load_config
from mailcow_ha.errors import ExitCode
from mailcow_ha.failover.breaker import CircuitBreaker
from mailcow_ha.failover.history import HistoryStore, RecordKind, RecordOutcome


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    document = node_config_dict(
        paths={
            "state_dir": str(tmp_path / "state"),
            "run_dir": str(tmp_path / "run"),
            "mount_point": str(tmp_path / "mnt"),
        }
    )
    return write_node_config(tmp_path / "node.yaml", document)


def test_status_closed_without_history(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--config", str(config_path), "breaker", "status"])

    assert code == ExitCode.OK
    assert "circuit breaker: closed" in capsys.readouterr().out


def test_status_open_after_failover(config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = HistoryStore(tmp_path / "state")
    store.finish(store.start(RecordKind.FAILOVER, "mailcow-ha-test-1", "test"), RecordOutcome.SUCCEEDED, ())

    code = main(["--config", str(config_path), "breaker", "status", "--json"])

    # Open after one failover is the breaker doing its job, not a problem to act on.
    assert code == ExitCode.OK
    status = json.loads(capsys.readouterr().out)
    assert status["open"] is True
    assert status["tripped"] is False
    assert status["closes_at"] == pytest.approx(time.time() + 3600, abs=60)
    assert len(status["counted"]) == 1


def test_status_tripped_after_refused_failover(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(config_path)
    store = HistoryStore(config.paths.state_dir)
    store.finish(store.start(RecordKind.FAILOVER, "mailcow-ha-test-1", "test"), RecordOutcome.SUCCEEDED, ())
    breaker = CircuitBreaker(config.paths.state_dir, config.breaker, store, NoAlerter())
    assert not breaker.check(already_serving=False).allowed

    code = main(["--config", str(config_path), "breaker", "status"])

    assert code == ExitCode.DEGRADED
    output = capsys.readouterr().out
    assert "circuit breaker: tripped" in output
    assert "last tripped" in output


def test_reset_closes_breaker(config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = HistoryStore(tmp_path / "state")
    store.finish(store.start(RecordKind.FAILOVER, "mailcow-ha-test-1", "test"), RecordOutcome.SUCCEEDED, ())
    time.sleep(0.01)

    reset_code = main(["--config", str(config_path), "breaker", "reset"])
    status_code = main(["--config", str(config_path), "breaker", "status"])

    assert reset_code == ExitCode.OK
    assert status_code == ExitCode.OK
    output = capsys.readouterr().out
    assert "reset" in output
    assert "last reset" in output


def test_promote_parser_options() -> None:
    args = build_parser().parse_args(["promote", "--ignore-breaker", "--lock-timeout", "2.5"])

    assert args.ignore_breaker is True
    assert args.lock_timeout == 2.5


def test_breaker_needs_action() -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["breaker"])

    assert caught.value.code == 2
