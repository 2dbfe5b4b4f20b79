"""Files that garbage collection removes: leftovers of interrupted writes and old corrupt state files.

Nothing here removes a file that a running process may still write. Temporary files are
removed only when the process named in them is gone or when they are an hour old. Corrupt
files moved aside by `state.read_json` are kept 30 days for inspection.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from mailcow_ha import state
from mailcow_ha.errors import MailcowHaError
from mailcow_ha.ops.gc import StaleFile

TEMP_FILE_AGE = 3600.0
"""Seconds after which a leftover temporary file of an atomic write is removed."""
CORRUPT_RETENTION = 30 * 86400.0
"""Seconds a corrupt state file moved aside is kept for inspection."""
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}$")
"""tempfile.mkstemp(prefix=".NAME.") names, as state.write_json and the alert state write them."""
_PID_TEMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)\.tmp$")
"""Temporary files named after the writing process, such as keepalived's health file's."""
_CORRUPT_NAME = re.compile(r"^.+\.corrupt-(?P<moved_at>\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_stale_files(
    directories: list[Path], *, now: float, keep_files: set[str], grace_file: tuple[Path, float] | None
) -> Iterator[StaleFile]:
    """Yield leftover temporary files, corrupt files past retention and an expired failover start file."""
    for directory in directories:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not entry.is_file(follow_symlinks=False) or entry.name in keep_files:
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
            stale = _stale_reason(entry.name, age, now)
            if stale is not None:
                yield StaleFile(Path(entry.path), stale)
    if grace_file is not None:
        path, expires_at = grace_file
        if path.exists() and now > expires_at:
            yield StaleFile(path, "the failover it recorded is older than the grace period and the promote deadline")


def _stale_reason(name: str, age: float, now: float) -> str | None:
    pid_match = _PID_TEMP_NAME.match(name)
    if pid_match is not None and not _pid_alive(int(pid_match.group("pid"))):
        return f"temporary file of pid {pid_match.group('pid')}, which no longer runs"
    temp_match = _TEMP_NAME.match(name)
    if temp_match is not None and not name.endswith(".lock") and age > TEMP_FILE_AGE:
        return f"temporary file of an interrupted write of {temp_match.group('target')}, {age / 3600:.1f} h old"
    corrupt_match = _CORRUPT_NAME.match(name)
    if corrupt_match is not None and now - int(corrupt_match.group("moved_at")) > CORRUPT_RETENTION:
        return f"corrupt state file kept for inspection for more than {CORRUPT_RETENTION / 86400:.0f} days"
    return None


def read_started_at(path: Path, *, move_corrupt: bool = True) -> tuple[float | None, str | None]:
    """Return the start time in the failover start file (None when absent or corrupt) and the file's problem."""
    result = state.read_json(path, None, validate=lambda value: isinstance(value, dict), move_corrupt=move_corrupt)
    started = None if result.value is None else result.value.get("started_at")
    return (float(started) if isinstance(started, int | float) else None), result.problem


def remove_file(path: Path) -> str:
    try:
        path.unlink()
    except FileNotFoundError:
        return "already gone"
    except OSError as error:
        raise MailcowHaError(f"{path} could not be removed: {error.strerror}") from None
    return "removed"
