"""Small JSON documents in the state directory, written atomically and read defensively.

A crash never leaves a half-written file: each write goes to a temporary file in the same
directory, is fsync'd, then renamed over the old one, and the directory is fsync'd. A file that
cannot be parsed is reported to the caller, which decides whether to alert and which safe default
to use. The agent and the transitions also move it aside (kept for inspection as
`NAME.corrupt-<unix time>`), so that their next write starts a fresh file. Read-only commands
(`status`, `history`, `gc --dry-run`, ...) leave it where it is, so that an operator finds it
unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailcow_ha.errors import StateError

log = logging.getLogger(__name__)

# File names inside the state directory; every module that persists something is listed here.
HISTORY_FILE = "history.json"
"""Failovers and switchovers of this node, newest last (the breaker and `history` read it)."""
BREAKER_FILE = "breaker.json"
"""When the breaker was last reset, and when it tripped."""
MAINTENANCE_FILE = "maintenance.json"
"""Maintenance mode: when it was switched on and when it expires."""
FAILOVER_START_FILE = "failover-start.json"
"""When the current promote started; the health check's grace period counts from it."""
MEMBERS_FILE = "members.json"
"""The cluster's members and this server's id, as the last membership sync learned them from the API."""


@dataclass(frozen=True)
class ReadResult:
    """A document read from the state directory.

    `problem` is None when the file was absent or valid. Otherwise it says what was wrong and
    whether the unreadable file was moved aside, and `value` is the caller's default.
    """

    value: Any
    problem: str | None = None


def read_json(
    path: Path,
    default: Any,
    *,
    validate: Callable[[Any], bool] | None = None,
    move_corrupt: bool = True,
) -> ReadResult:
    """Read a JSON document, returning `default` when absent or corrupt.

    `validate` may reject a document that parses but has the wrong shape; it is treated as
    corrupt. A corrupt file is moved aside when `move_corrupt` is true, and left untouched
    otherwise; either way the problem is returned. Permission and I/O errors other than a
    missing file raise StateError, because silently using a default there could hide a real fault.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ReadResult(default)
    except OSError as error:
        raise StateError(f"state file {path} could not be read: {error.strerror}; check its permissions") from None

    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        reason = "not valid UTF-8"
    except json.JSONDecodeError as error:
        reason = f"not valid JSON ({error.msg} at line {error.lineno})"
    else:
        if validate is None or validate(value):
            return ReadResult(value)
        reason = "valid JSON of an unexpected shape"

    if not move_corrupt:
        problem = f"state file {path} is {reason}; it was left in place and a default is used"
        log.warning("%s", problem)
        return ReadResult(default, problem)
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    try:
        path.rename(aside)
        moved = f"moved to {aside}"
    except OSError as error:
        moved = f"could not be moved aside: {error.strerror}"
    problem = f"state file {path} is {reason}; it was {moved} and a default is used"
    log.error("%s", problem)
    return ReadResult(default, problem)


def write_json(path: Path, value: Any) -> None:
    """Write a JSON document atomically with mode 0600, creating the directory (0700) if needed."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                json.dump(value, stream, indent=2, sort_keys=True)
                stream.write("\n")
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as error:
        raise StateError(f"state file {path} could not be written: {error.strerror}") from None


def remove(path: Path) -> bool:
    """Delete a state file; return whether it existed."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as error:
        raise StateError(f"state file {path} could not be removed: {error.strerror}") from None
    return True
