"""Argument types for the command line: numbers that argparse checks before any handler runs.

A negative or NaN timeout would otherwise reach socket.settimeout and end in a traceback, and a
negative --limit would silently drop the oldest records instead of the newest.
"""

from __future__ import annotations

import argparse
import math


def positive_seconds(text: str) -> float:
    """Parse a duration in seconds that is finite and greater than zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} seconds is out of range; use a number greater than 0")
    return value


def non_negative_int(text: str) -> int:
    """Parse a whole number that is 0 or greater."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid whole number {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is out of range; use 0 or a greater whole number")
    return value
