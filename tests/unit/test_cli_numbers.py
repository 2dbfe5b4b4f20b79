"""Every numeric option of every command rejects negative, NaN and infinite values before a handler runs."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from mailcow_ha.cli import build_parser, main
from mailcow_ha.cli.argtypes import int_between, non_negative_seconds, positive_int

NOT_NUMERIC = (str, None)


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.Action]]:
    """Yield (subcommand path, option) for every option of every subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from walk(subparser, (*path, name))
        elif action.option_strings:
            yield path, action


def numeric_options() -> list[tuple[tuple[str, ...], str]]:
    found = []
    for path, action in walk(build_parser()):
        type_name = getattr(action.type, "__module__", "")
        if action.type in (int, float) or type_name.startswith("mailcow_ha.cli"):
            found.append((path, action.option_strings[-1]))
    return found


NUMERIC_OPTIONS = numeric_options()


def test_every_numeric_option_found() -> None:
    names = {(" ".join(path), option) for path, option in NUMERIC_OPTIONS}

    for expected in [
        ("status", "--timeout"),
        ("history", "--limit"),
        ("promote", "--lock-timeout"),
        ("demote", "--lock-timeout"),
        ("peers sync", "--timeout"),
        ("init-data", "--mmp-interval"),
        ("render", "--node-count"),
        ("kuma plan", "--interval"),
        ("maintenance on", "--for"),
    ]:
        assert expected in names


def test_no_option_uses_bare_int_or_float() -> None:
    bare = [(path, action.option_strings) for path, action in walk(build_parser()) if action.type in (int, float)]

    assert bare == []


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
@pytest.mark.parametrize(
    ("path", "option"), [pytest.param(path, option, id=" ".join((*path, option))) for path, option in NUMERIC_OPTIONS]
)
def test_option_rejects_value(path, option, value, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--config", "/nonexistent/node.yaml", *path, f"{option}={value}"])

    assert exited.value.code == 2
    assert f"argument {option}:" in capsys.readouterr().err


def test_lock_timeout_accepts_zero() -> None:
    args = build_parser().parse_args(["demote", "--lock-timeout", "0"])

    assert args.lock_timeout == 0.0


@pytest.mark.parametrize(
    ("parse", "text", "expected"),
    [
        (non_negative_seconds, "0", 0.0),
        (non_negative_seconds, "2.5", 2.5),
        (positive_int, "3", 3),
        (int_between(20, 86400), "20", 20),
        (int_between(20, 86400), "86400", 86400),
    ],
)
def test_types_accept_bounds(parse, text, expected) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (non_negative_seconds, "-0.1"),
        (non_negative_seconds, "soon"),
        (positive_int, "0"),
        (positive_int, "1.5"),
        (int_between(20, 86400), "19"),
        (int_between(20, 86400), "86401"),
    ],
)
def test_types_reject_out_of_range(parse, text) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse(text)
