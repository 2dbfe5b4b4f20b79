"""The transition lock: one file in the run directory, held with flock while a transition runs.

The agent's TransitionRunner, the manual `mailcow-ha promote` / `demote` commands and garbage
collection all take this lock, so no two of them change the node at the same time. The kernel
releases a flock when its holder exits, so a crashed holder never leaves the lock taken. The
holder writes its pid and action into the file so that a waiting command can name it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from mailcow_ha.deadline import Clock, Deadline
from mailcow_ha.errors import MailcowHaError

log = logging.getLogger(__name__)

LOCK_FILE = "transition.lock"
"""File name of the lock inside `paths.run_dir`."""

_POLL_INTERVAL = 0.05


class LockTimeout(MailcowHaError):
    """Another process held the transition lock for longer than the caller would wait."""


@dataclass(frozen=True)
class LockHolder:
    """The record the current holder wrote into the lock file; `pid` is 0 when the file was unreadable."""

    pid: int
    action: str
    since: float

    def describe(self) -> str:
        if self.pid == 0:
            return "an unknown process"
        return f"pid {self.pid} ({self.action} since {time.strftime('%H:%M:%S', time.localtime(self.since))})"


class TransitionLock:
    """An exclusive flock on `<run_dir>/transition.lock`, usable as a context manager once acquired."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @classmethod
    def in_run_dir(cls, run_dir: Path) -> TransitionLock:
        return cls(run_dir / LOCK_FILE)

    def acquire(
        self,
        action: str,
        timeout: float,
        *,
        cancelled: Callable[[], None] | None = None,
        sleep: Callable[[float], object] = time.sleep,
        clock: Clock = time.time,
    ) -> None:
        """Take the lock, polling for up to `timeout` seconds; raise LockTimeout naming the holder if it stays taken.

        `cancelled` is called between polls and may raise (a TransitionRunner passes its cancel
        token's check, so a newer keepalived state stops the wait).
        """
        if self._fd is not None:
            raise MailcowHaError(f"transition lock {self.path} is already held by this process")
        deadline = Deadline.after("waiting for the transition lock", timeout)
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
                if cancelled is not None:
                    cancelled()
                if deadline.expired:
                    holder = read_holder(self.path)
                    raise LockTimeout(
                        f"transition lock {self.path} is still held by {holder.describe()} after {timeout:g} s; "
                        "wait for that transition to finish, then retry"
                    )
                sleep(min(_POLL_INTERVAL, deadline.remaining()))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        record = json.dumps({"pid": os.getpid(), "action": action, "since": clock()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        log.debug("transition lock %s taken for %s", self.path, action)

    def release(self) -> None:
        """Release the lock; does nothing when it is not held."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError as error:
            log.warning("transition lock %s could not be cleared: %s", self.path, error.strerror)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> TransitionLock:
        if self._fd is None:
            raise MailcowHaError(f"transition lock {self.path} must be acquired before entering its context")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def read_holder(path: Path) -> LockHolder:
    """Read what the holder of the lock wrote; an empty or unreadable file gives pid 0."""
    try:
        data = json.loads(path.read_bytes() or b"{}")
        return LockHolder(int(data["pid"]), str(data["action"]), float(data["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return LockHolder(0, "unknown", 0.0)


def current_holder(path: Path) -> LockHolder | None:
    """Return the holder when another process holds the lock, or None when it is free.

    Probes with a non-blocking shared lock, which fails while an exclusive lock is held. A
    transition that tries to start during the probe retries at its next poll (50 ms later).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_holder(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
