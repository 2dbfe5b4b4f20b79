"""Argument types for the command line: numbers that argparse checks before any handler runs.

A negative or NaN timeout would otherwise reach socket.settimeout and end in a traceback, and a
negative --limit would silently drop the oldest records instead of the newest.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid whole number {text!r}") from None


def positive_seconds(text: str) -> float:
    """Parse a duration in seconds that is finite and greater than zero."""
    value = _seconds(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} seconds is out of range; use a number greater than 0")
    return value


def non_negative_seconds(text: str) -> float:
    """Parse a duration in seconds that is finite and 0 or greater (0: do not wait)."""
    value = _seconds(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} seconds is out of range; use 0 or a greater number")
    return value


def non_negative_int(text: str) -> int:
    """Parse a whole number that is 0 or greater."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is out of range; use 0 or a greater whole number")
    return value


def positive_int(text: str) -> int:
    """Parse a whole number that is 1 or greater."""
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is out of range; use a whole number of 1 or more")
    return value


def int_between(low: int, high: int) -> Callable[[str], int]:
    """Return a parser of whole numbers from `low` to `high`, both included."""

    def parse(text: str) -> int:
        value = _whole_number(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; use {low} to {high}")
        return value

    parse.__name__ = f"int from {low} to {high}"
    return parse
