"""Atomic state files: round trips, corrupt files moved aside, modes."""

from __future__ import annotations

import stat
from pathlib import Path

from mailcow_ha.state import read_json, write_json


def test_round_trip_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "doc.json"

    write_json(path, {"a": 1})
    result = read_json(path, default=None)

    assert result.value == {"a": 1}
    assert result.problem is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_absent_file_gives_default(tmp_path: Path) -> None:
    result = read_json(tmp_path / "absent.json", default=[])

    assert result.value == []
    assert result.problem is None


def test_corrupt_file_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    path.write_text("{not json", encoding="utf-8")

    result = read_json(path, default=[])

    assert result.value == []
    assert result.problem is not None
    assert "not valid JSON" in result.problem
    assert not path.exists()
    assert len(list(tmp_path.glob("doc.json.corrupt-*"))) == 1


def test_wrong_shape_treated_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    write_json(path, {"unexpected": True})

    result = read_json(path, default=[], validate=lambda value: isinstance(value, list))

    assert result.value == []
    assert result.problem is not None
    assert "unexpected shape" in result.problem
