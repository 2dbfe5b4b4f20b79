"""The agent process's identity: its kernel name, the single-instance lock and the pid file.

keepalived's `track_process` matches the kernel's process name (`/proc/PID/comm`), so the agent
sets it to `keepalived.agent_process` however it was started. Only one agent may run per node,
because two would both read keepalived's FIFO and run transitions: each takes an exclusive flock
on `<run_dir>/agent.lock`, which the kernel releases when the process dies. The guardian reads
the pid file to find the agent that took over after a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from mailcow_ha.errors import Refused

LOCK_FILE = "agent.lock"
PID_FILE = "agent.pid"


class AgentLock:
    """An exclusive flock held for the agent's lifetime."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_FILE
        self.pid_file = run_dir / PID_FILE
        self._fd: int | None = None

    def acquire(self, timeout: float) -> None:
        """Take the lock, waiting up to `timeout` seconds for an exiting agent; then write the pid file."""
        self.run_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    holder = self._holder()
                    raise Refused(
                        f"another agent is running on this node{holder}; stop it first (lock {self.path})"
                    ) from None
                time.sleep(0.05)
        self._fd = fd
        temporary = self.pid_file.with_name(f".{PID_FILE}.{os.getpid()}")
        temporary.write_text(f"{os.getpid()}\n", encoding="ascii")
        os.replace(temporary, self.pid_file)

    def release(self) -> None:
        """Remove the pid file if it is still ours, then drop the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if int(self.pid_file.read_text(encoding="ascii").strip()) == os.getpid():
                self.pid_file.unlink()
        os.close(self._fd)
        self._fd = None

    def _holder(self) -> str:
        try:
            return f" (pid {int(self.pid_file.read_text(encoding='ascii').strip())})"
        except (OSError, ValueError):
            return ""
