"""The agent's side of keepalived: the track file, the pid file and the data dump.

The notify FIFO is in `keepalived_fifo`; its names are importable from here as well. Facts
about keepalived 2.2.7 (Debian 12) that this module relies on, each checked against a running
daemon:
- `track_file` is re-read whenever the file changes, including when a new file is renamed over
  it, so an atomic rename never shows keepalived a half-written value. `init_file 1 overwrite`
  makes keepalived write 1 at its start, so the agent rewrites its verdict when it finds the
  file changed.
- SIGUSR1 makes keepalived dump its state to a `.data` file (`State = MASTER` under
  `VRRP Instance = NAME`); the man page warns the format may change between versions, so a
  dump that cannot be parsed yields no state rather than a guess.
- SIGHUP reloads the configuration without leaving MASTER.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import stat
import time
from pathlib import Path

from mailcow_ha.adapters.keepalived_fifo import (
    PATH_CHECK_INTERVAL,
    FifoMessage,
    FifoReader,
    KeepalivedError,
    open_fifo,
    parse_fifo_line,
)
from mailcow_ha.deadline import Deadline
from mailcow_ha.failover.transitions import VrrpState

__all__ = [
    "HEALTHY",
    "PATH_CHECK_INTERVAL",
    "UNHEALTHY",
    "FifoMessage",
    "FifoReader",
    "HealthFile",
    "KeepalivedError",
    "KeepalivedProcess",
    "dump_complete",
    "open_fifo",
    "parse_data_dump",
    "parse_fifo_line",
]

log = logging.getLogger(__name__)

HEALTHY = 0
UNHEALTHY = 1
_DUMP_INSTANCE = re.compile(r"^\s*VRRP Instance = (?P<name>\S+)\s*$")
_DUMP_STATE = re.compile(r"^\s*State = (?P<state>[A-Z]+)\s*$")
_TOPOLOGY_HEADER = "------< VRRP Topology >------"
_SECTION_PREFIX = "------<"


def parse_data_dump(text: str, instance: str) -> VrrpState | None:
    """Return the state of VRRP instance `instance` in a SIGUSR1 data dump, None if it is not there."""
    in_instance = False
    for line in text.splitlines():
        header = _DUMP_INSTANCE.match(line)
        if header is not None:
            in_instance = header.group("name") == instance
            continue
        if in_instance:
            found = _DUMP_STATE.match(line)
            if found is not None:
                try:
                    return VrrpState(found.group("state"))
                except ValueError:
                    # INIT while keepalived starts: not a state the agent acts on.
                    return None
    return None


def dump_complete(text: str) -> bool:
    """Return whether a dump contains its whole VRRP topology section (a later section follows it).

    keepalived writes the file while the agent may already read it, so a partial dump must not
    be mistaken for one without the instance.
    """
    start = text.find(_TOPOLOGY_HEADER)
    return start >= 0 and text.find(_SECTION_PREFIX, start + len(_TOPOLOGY_HEADER)) >= 0


class HealthFile:
    """keepalived's track file: 0 when the node is healthy, 1 otherwise (weight 0 turns 1 into FAULT)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> int | None:
        """Return the value in the file, or None when it is missing or not a number."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        try:
            return int(text)
        except ValueError:
            return None

    def write(self, healthy: bool) -> None:
        """Write 0 or 1 atomically: a new file renamed over the old one."""
        value = HEALTHY if healthy else UNHEALTHY
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, f"{value}\n".encode("ascii"))
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise KeepalivedError(f"could not write keepalived's track file {self.path}: {error.strerror}") from None

    def ensure(self, healthy: bool) -> bool:
        """Write the verdict unless the file already carries it; return whether it wrote."""
        expected = HEALTHY if healthy else UNHEALTHY
        if self.read() == expected:
            return False
        self.write(healthy)
        return True


class KeepalivedProcess:
    """The running keepalived, found through its pid file, and the signals the agent sends it."""

    def __init__(self, pid_file: Path, data_file: Path) -> None:
        self.pid_file = pid_file
        self.data_file = data_file

    def pid(self) -> int | None:
        """Return the pid of the running keepalived parent process, or None when it does not run."""
        try:
            pid = int(self.pid_file.read_text(encoding="ascii").strip())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        try:
            name = Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()
            status = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return None
        if not name.startswith("keepalived") or status == "Z":
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def reload(self) -> None:
        """Send SIGHUP so that keepalived re-reads its configuration."""
        self._signal(signal.SIGHUP, "reload")

    def dump_state(self, instance: str, deadline: Deadline) -> VrrpState | None:
        """Ask keepalived for a data dump (SIGUSR1) and return the instance's state from it.

        Returns None when the dump does not name the instance or its state. Raises
        KeepalivedError when keepalived does not run or writes no dump before `deadline`.
        """
        self._remove_dump()
        self._signal(signal.SIGUSR1, "data dump")
        while True:
            text = self._read_dump()
            if text is not None:
                return parse_data_dump(text, instance)
            if deadline.expired:
                raise KeepalivedError(
                    f"keepalived wrote no data dump to {self.data_file} within {deadline.step}; "
                    "check paths.keepalived_data_file and that keepalived.conf has data_use_instance"
                )
            time.sleep(0.02)

    def _signal(self, signum: signal.Signals, purpose: str) -> None:
        pid = self.pid()
        if pid is None:
            raise KeepalivedError(
                f"keepalived is not running (pid file {self.pid_file}); cannot send the {purpose} signal"
            )
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            raise KeepalivedError(f"keepalived (pid {pid}) exited before the {purpose} signal") from None

    def _remove_dump(self) -> None:
        try:
            self.data_file.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            raise KeepalivedError(f"could not remove the old data dump {self.data_file}: {error.strerror}") from None

    def _read_dump(self) -> str | None:
        """Return the dump once keepalived finished it; None while it is missing or still being written."""
        try:
            fd = os.open(self.data_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise KeepalivedError(f"{self.data_file} is a symbolic link; refusing to read it") from None
            raise KeepalivedError(f"could not read keepalived's data dump {self.data_file}: {error.strerror}") from None
        try:
            info = os.fstat(fd)
            if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise KeepalivedError(
                    f"{self.data_file} is not a keepalived dump: owned by uid {info.st_uid} with mode "
                    f"{stat.S_IMODE(info.st_mode):04o}; remove it"
                )
            with os.fdopen(os.dup(fd), "rb") as stream:
                text = stream.read().decode("utf-8", "replace")
        finally:
            os.close(fd)
        return text if dump_complete(text) else None
