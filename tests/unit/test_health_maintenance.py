"""Maintenance mode: durations, switching on and off, expiry, and damaged state files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mailcow_ha import state
from mailcow_ha.cli import build_parser
from mailcow_ha.ops.maintenance import (
    MaintenanceInputError,
    describe,
    mark_expiry_alerted,
    parse_duration,
    read_maintenance,
    switch_off,
    switch_on,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        (" 1.5h ", 5400.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("30x", "invalid"),
        ("m30", "invalid"),
        ("1h 30m", "invalid"),
        ("0", "more than zero"),
        ("-5m", "invalid"),
        ("8d", "maximum of 7 days"),
        ("nan", "more than zero"),
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(MaintenanceInputError, match=message):
        parse_duration(text)


def test_switch_on_and_off(tmp_path: Path) -> None:
    window = switch_on(tmp_path, duration=600, reason="mailcow update", now=1000.0)
    stored, problem = read_maintenance(tmp_path)

    assert stored == window
    assert problem is None
    assert stored is not None
    assert stored.active(1599.0)
    assert not stored.active(1600.0)
    assert switch_off(tmp_path)
    assert not switch_off(tmp_path)
    assert read_maintenance(tmp_path) == (None, None)


def test_until_switched_off(tmp_path: Path) -> None:
    window = switch_on(tmp_path, duration=None, now=1000.0)

    assert window.active(10**10)
    assert describe(window, 2000.0).startswith("on since ")


def test_switch_on_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailcow_ha.ops.maintenance")

    switch_on(tmp_path, duration=600, now=0.0)

    assert caplog.messages == ["maintenance mode switched on until 1970-01-01 00:10:00 UTC (10 min left)"]


def test_command_help_names_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    help_text = build_parser().format_help()
    [line] = [line for line in help_text.splitlines() if line.strip().startswith("maintenance ")]

    assert "cluster" in line
    assert "this node" not in line


def test_describe_states() -> None:
    assert describe(None, 0) == "off"


def test_expiry_alert_recorded_once(tmp_path: Path) -> None:
    window = switch_on(tmp_path, duration=60, now=1000.0)

    updated = mark_expiry_alerted(tmp_path, window)
    stored, _ = read_maintenance(tmp_path)

    assert updated.expiry_alerted
    assert stored is not None
    assert stored.expiry_alerted
    assert "expired at" in describe(stored, 2000.0)


def test_expiry_mark_skips_replaced_window(tmp_path: Path) -> None:
    old = switch_on(tmp_path, duration=60, now=1000.0)
    switch_on(tmp_path, duration=60, now=5000.0)

    mark_expiry_alerted(tmp_path, old)
    stored, _ = read_maintenance(tmp_path)

    assert stored is not None
    assert not stored.expiry_alerted


def test_corrupt_file_counts_as_off(tmp_path: Path) -> None:
    (tmp_path / state.MAINTENANCE_FILE).write_text("{broken")

    window, problem = read_maintenance(tmp_path)

    assert window is None
    assert problem is not None
    assert "not valid JSON" in problem


def test_reason_must_be_one_line(tmp_path: Path) -> None:
    with pytest.raises(MaintenanceInputError, match="one line"):
        switch_on(tmp_path, duration=60, reason="two\nlines")


def test_action_switches_and_validates(tmp_path: Path) -> None:
    from mailcow_ha.agent.statusapi import ActionInputError
    from mailcow_ha.ops.maintenance import action_handler

    handle = action_handler(tmp_path, "node-2")

    switched_on = handle({"on": True, "seconds": 600, "reason": "update"})
    switched_off = handle({"on": False})

    assert switched_on["node"] == "node-2"
    assert switched_on["maintenance"].startswith("on until")
    assert switched_off == {"node": "node-2", "maintenance": "off", "changed": True}
    for bad in (
        {},
        {"on": "yes"},
        {"on": True, "seconds": 0},
        {"on": True, "seconds": True},
        {"on": True, "reason": 5},
    ):
        with pytest.raises(ActionInputError):
            handle(bad)
