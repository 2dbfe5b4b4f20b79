"""Numeric options of the operator commands are checked by argparse, before any handler runs."""

from __future__ import annotations

import pytest

from mailcow_ha.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--timeout", "-1"],
        ["status", "--timeout", "nan"],
        ["status", "--timeout", "0"],
        ["switchover", "--timeout", "inf"],
        ["history", "--timeout", "-2"],
        ["history", "--limit", "-3"],
        ["kuma", "sync", "--outputs", "outputs.json", "--timeout", "0"],
        ["upgrade", "runtime", "--ref", "abc", "--version", "1", "--node-timeout", "-600"],
        ["galera", "first-boot", "--wait", "nan"],
    ],
)
def test_out_of_range_number_is_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--config", "/nonexistent/node.yaml", *argv])

    assert exited.value.code == 2
    assert "out of range" in capsys.readouterr().err


def test_text_for_number_is_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--config", "/nonexistent/node.yaml", "status", "--timeout", "soon"])

    assert exited.value.code == 2
    assert "invalid number of seconds 'soon'" in capsys.readouterr().err
