"""keepalived's notify FIFO: the transitions of the VRRP instance, in the order they happened.

Facts about keepalived 2.2.7 (Debian 12) that this module relies on, each checked against a
running daemon:
- `notify_fifo` lines look like `INSTANCE "mailcow" MASTER 250`, in the order the transitions
  happened. keepalived opens the FIFO read-write, so lines written while no agent reads stay
  buffered in the pipe, and an agent that starts later reads them first.
- keepalived creates the FIFO when it is missing. At every reload (SIGHUP) it closes the FIFO,
  deletes it if it created it itself, and creates and opens a new one. A FIFO that the agent
  created first stays in place. A reload writes no line of its own.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import select
import stat
import struct
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailcow_ha.errors import MailcowHaError
from mailcow_ha.failover.transitions import VrrpState

log = logging.getLogger(__name__)

_FIFO_LINE = re.compile(
    r'^(?P<kind>INSTANCE|GROUP)\s+"(?P<name>[^"]+)"\s+(?P<state>[A-Z_]+)(?:\s+(?P<priority>\d+))?\s*$'
)
_READ_CHUNK = 4096
_MAX_LINE = 1024
PATH_CHECK_INTERVAL = 0.5
"""Seconds between two checks that the FIFO's path still names the FIFO the reader has open (one stat)."""
ERROR_PAUSE = 0.5
"""Seconds the FIFO reader waits after an unexpected error, times the errors in a row."""
MAX_ERROR_PAUSE = 5.0


class KeepalivedError(MailcowHaError):
    """keepalived could not be reached: no pid file, no such process, or an unusable FIFO or dump."""


@dataclass(frozen=True)
class FifoMessage:
    """One line from keepalived's notify FIFO about a VRRP instance or sync group."""

    kind: str
    """INSTANCE or GROUP."""
    name: str
    state: VrrpState
    priority: int | None


def parse_fifo_line(line: str) -> FifoMessage | None:
    """Parse one FIFO line; return None for lines about other things (virtual servers) or unknown states."""
    match = _FIFO_LINE.match(line.strip())
    if match is None:
        return None
    try:
        state = VrrpState(match.group("state"))
    except ValueError:
        # keepalived 2.2 also reports events such as MASTER_RX_LOWER_PRI; they are not states.
        return None
    priority = match.group("priority")
    return FifoMessage(match.group("kind"), match.group("name"), state, int(priority) if priority else None)


class FifoReader:
    """Reads keepalived's notify FIFO on its own thread and passes each message of one instance on.

    The FIFO is opened read-write, so opening never blocks and the reader never sees end of file
    when keepalived restarts. `drain()` returns what was buffered before the agent started, which
    keepalived wrote while no agent read it.

    keepalived 2.2.7 deletes a FIFO that it created itself and creates a new one at every reload
    (SIGHUP). What it writes into the new FIFO is lost if that FIFO is replaced again before
    anyone opened it. So the reader checks the path every PATH_CHECK_INTERVAL seconds, also while
    messages flow, reads what is left in the old FIFO and switches to the new one. Then it calls
    `on_reopen`, because a transition may have been lost in between. An unexpected error in the
    loop is logged, and the reader reopens the FIFO and goes on, so the thread ends only at `close()`.
    """

    def __init__(
        self,
        path: Path,
        instance: str,
        on_message: Callable[[FifoMessage], None],
        *,
        on_reopen: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.instance = instance
        self._on_message = on_message
        self._on_reopen = on_reopen
        self._clock = clock
        self._fd = open_fifo(path)
        self._buffer = b""
        self._stop_read, self._stop_write = os.pipe()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_path_check = 0.0
        self.active_at = clock()
        """Monotonic time of the reader's latest loop iteration (at least every PATH_CHECK_INTERVAL)."""
        self.messages_read = 0
        self.reopens = 0

    def drain(self) -> list[FifoMessage]:
        """Read every line buffered in the FIFO now, without waiting, and return this instance's messages."""
        messages: list[FifoMessage] = []
        while True:
            readable, _, _ = select.select([self._fd], [], [], 0)
            if not readable:
                return messages
            messages.extend(self._read_messages())

    def start(self) -> None:
        self.active_at = self._clock()
        self._thread = threading.Thread(target=self._run, name="mailcow-ha-fifo", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the reader's thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def silent_for(self) -> float:
        """Return the seconds since the reader's latest loop iteration."""
        return self._clock() - self.active_at

    def pending_bytes(self) -> int:
        """Return how many bytes wait in the FIFO unread (0 when the FIFO cannot be asked)."""
        try:
            data = fcntl.ioctl(self._fd, termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return 0
        return int(struct.unpack("i", data)[0])

    def close(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        os.write(self._stop_write, b"x")
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("keepalived's FIFO reader did not stop within %.1f s; its files stay open", timeout)
                return
        for fd in (self._fd, self._stop_read, self._stop_write):
            os.close(fd)

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self._step()
                failures = 0
            except Exception:
                failures += 1
                pause = min(ERROR_PAUSE * failures, MAX_ERROR_PAUSE)
                log.exception(
                    "reading keepalived's FIFO %s failed (%d time(s) in a row); reopening it in %.1f s",
                    self.path,
                    failures,
                    pause,
                )
                if self._stopping.wait(pause):
                    return
                self._reopen("the FIFO reader failed and reopened the FIFO")

    def _step(self) -> None:
        """Wait up to PATH_CHECK_INTERVAL for messages, pass them on, and follow a replaced FIFO."""
        readable, _, _ = select.select([self._fd, self._stop_read], [], [], PATH_CHECK_INTERVAL)
        self.active_at = self._clock()
        if self._stop_read in readable:
            self._stopping.set()
            return
        if readable:
            try:
                messages = self._read_messages()
            except BlockingIOError:
                messages = []
            self._dispatch(messages)
        if self.active_at >= self._next_path_check:
            self._next_path_check = self.active_at + PATH_CHECK_INTERVAL
            self._follow_path()

    def _dispatch(self, messages: list[FifoMessage]) -> None:
        for message in messages:
            self.messages_read += 1
            try:
                self._on_message(message)
            except Exception:
                log.exception("handling keepalived message %s failed", message)

    def _follow_path(self) -> None:
        """Reopen the FIFO when its path now names another file (deleted and created again)."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        except OSError as error:
            log.warning("could not check keepalived's FIFO %s: %s", self.path, error)
            return
        opened = os.fstat(self._fd)
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            return
        # keepalived writes only into the new FIFO from now on; what it wrote before is still here.
        self._dispatch(self.drain())
        self._reopen("keepalived's FIFO was replaced (keepalived recreates a FIFO it created at every reload)")

    def _reopen(self, reason: str) -> None:
        try:
            new_fd = open_fifo(self.path)
        except KeepalivedError as error:
            log.error("%s; the agent keeps reading the old one and tries again", error)
            return
        log.warning("%s: reading %s anew", reason, self.path)
        old_fd, self._fd = self._fd, new_fd
        os.close(old_fd)
        self._buffer = b""
        self.reopens += 1
        if self._on_reopen is not None:
            try:
                self._on_reopen(reason)
            except Exception:
                log.exception("reporting the reopened FIFO %s failed", self.path)

    def _read_messages(self) -> list[FifoMessage]:
        chunk = os.read(self._fd, _READ_CHUNK)
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > _MAX_LINE:
            log.error(
                "keepalived's FIFO %s sent %d bytes without a line break; discarded", self.path, len(self._buffer)
            )
            self._buffer = b""
        messages = []
        for raw in lines:
            text = raw.decode("utf-8", "replace")
            message = parse_fifo_line(text)
            if message is None:
                if text.strip():
                    log.debug("ignored keepalived FIFO line %r", text)
                continue
            if message.kind == "INSTANCE" and message.name == self.instance:
                messages.append(message)
            else:
                log.debug("ignored keepalived FIFO line about %s %s", message.kind, message.name)
        return messages


def open_fifo(path: Path) -> int:
    """Open (creating with mode 0600 if needed) keepalived's notify FIFO read-write and non-blocking."""
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        os.mkfifo(path, 0o600)
    except FileExistsError:
        pass
    except OSError as error:
        raise KeepalivedError(f"could not create keepalived's FIFO {path}: {error.strerror}") from None
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise KeepalivedError(f"could not open keepalived's FIFO {path}: {error.strerror}") from None
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise KeepalivedError(f"{path} is not a FIFO; remove it so the agent can create keepalived's notify FIFO")
    return fd
