"""The agent's guardian: a small separate process that reports the node unhealthy when the agent dies or hangs.

keepalived's `track_process` notices a dead agent, but only in the initial network namespace
(it relies on the kernel's process events), and it cannot notice a hung one. The guardian
covers both. The agent writes one byte into a pipe on every pass of its main loop:
- no byte for `timeout` seconds means the agent hangs: the guardian writes 1 into keepalived's
  track file (FAULT), kills the agent with SIGKILL so that systemd restarts it, and exits;
- end of file means the agent exited (a crash, SIGKILL, or a stop it announced with `S`). The
  guardian then waits `restart_delay` seconds for a new agent to write its pid file and writes 1
  if none did. So a quick restart does not move the master, but a dead agent does.

The guardian imports nothing from the runtime but this module's standard-library code, so it
stays small, and runs as `python -m mailcow_ha.agent.guardian`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("mailcow_ha.agent.guardian")

PROCESS_NAME = "mailcow-ha-guard"
STOPPING = b"S"
"""Written by an agent that stops cleanly, before it closes the pipe."""
_PR_SET_NAME = 15


def set_process_name(name: str) -> None:
    """Set this process's kernel name (`/proc/self/comm`, at most 15 bytes), which track_process matches."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode("ascii")[:15]), 0, 0, 0)
    except (OSError, AttributeError) as error:
        log.warning("could not set the process name to %s: %s", name, error)


def write_unhealthy(health_file: Path) -> None:
    """Write 1 into keepalived's track file atomically, as the agent does."""
    temporary = health_file.with_name(f".{health_file.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text("1\n", encoding="ascii")
        os.replace(temporary, health_file)
    except OSError as error:
        log.error("could not write 1 into %s: %s", health_file, error)
        with contextlib.suppress(OSError):
            temporary.unlink()


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text(encoding="ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def watch(fd: int, *, agent_pid: int, health_file: Path, pid_file: Path, timeout: float, restart_delay: float) -> str:
    """Watch the heartbeat pipe until the agent hangs or exits; return what happened."""
    stopping = False
    while True:
        readable, _, _ = select.select([fd], [], [], timeout)
        if not readable:
            log.error(
                "agent (pid %d) made no progress for %.0f s: reporting the node unhealthy and killing the agent",
                agent_pid,
                timeout,
            )
            write_unhealthy(health_file)
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent_pid, signal.SIGKILL)
            return "hung"
        try:
            data = os.read(fd, 4096)
        except InterruptedError:
            continue
        if data:
            stopping = stopping or STOPPING in data
            continue
        return wait_for_successor(
            agent_pid=agent_pid, health_file=health_file, pid_file=pid_file, delay=restart_delay, stopped=stopping
        )


def wait_for_successor(
    *, agent_pid: int, health_file: Path, pid_file: Path, delay: float, stopped: bool = False
) -> str:
    """After the agent exited, wait `delay` seconds for a new one; report unhealthy if none starts.

    `stopped` means the agent announced a clean stop, which is logged as such instead of as a crash.
    """
    deadline = time.monotonic() + delay
    while True:
        successor = read_pid(pid_file)
        if successor is not None and successor != agent_pid and process_alive(successor):
            log.info("agent (pid %d) exited and agent pid %d took over", agent_pid, successor)
            return "replaced"
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    how = "stopped" if stopped else "exited unexpectedly"
    log.log(
        logging.INFO if stopped else logging.ERROR,
        "agent (pid %d) %s and no agent took over within %.1f s: reporting the node unhealthy",
        agent_pid,
        how,
        delay,
    )
    write_unhealthy(health_file)
    return how


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailcow-ha-guardian", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="read end of the agent's heartbeat pipe")
    parser.add_argument("--agent-pid", type=int, required=True)
    parser.add_argument("--health-file", type=Path, required=True)
    parser.add_argument("--pid-file", type=Path, required=True, help="the agent's pid file in the run directory")
    parser.add_argument("--timeout", type=float, required=True, help="seconds without a heartbeat that mean a hang")
    parser.add_argument("--restart-delay", type=float, required=True, help="seconds a new agent has to take over")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_process_name(PROCESS_NAME)
    # systemd stops the agent's whole cgroup with SIGTERM; the guardian then still waits for a successor.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    outcome = watch(
        args.fd,
        agent_pid=args.agent_pid,
        health_file=args.health_file,
        pid_file=args.pid_file,
        timeout=args.timeout,
        restart_delay=args.restart_delay,
    )
    log.info("guardian of agent pid %d exits: the agent %s", args.agent_pid, outcome)
    return 0


class Guardian:
    """The agent's handle on its guardian process: start it, send heartbeats, and restart it if it died."""

    def __init__(self, *, health_file: Path, pid_file: Path, timeout: float, restart_delay: float) -> None:
        self.health_file = health_file
        self.pid_file = pid_file
        self.timeout = timeout
        self.restart_delay = restart_delay
        self._write_fd: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mailcow_ha.agent.guardian",
                    f"--fd={read_fd}",
                    f"--agent-pid={os.getpid()}",
                    f"--health-file={self.health_file}",
                    f"--pid-file={self.pid_file}",
                    f"--timeout={self.timeout}",
                    f"--restart-delay={self.restart_delay}",
                ],
                pass_fds=(read_fd,),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            os.close(read_fd)
        self._write_fd = write_fd
        log.info("guardian started (pid %d): unhealthy after %.0f s without progress", self.process.pid, self.timeout)

    def heartbeat(self) -> None:
        """Tell the guardian the main loop made progress; restart the guardian if it is gone."""
        if self._write_fd is None:
            return
        try:
            os.write(self._write_fd, b".")
        except BlockingIOError:
            pass
        except BrokenPipeError:
            log.error("the guardian process exited; starting a new one")
            os.close(self._write_fd)
            self._write_fd = None
            if self.process is not None:
                try:
                    self.process.wait(1)
                except subprocess.TimeoutExpired:
                    log.error("the old guardian (pid %d) closed its pipe but still runs", self.process.pid)
            self.start()

    def close(self) -> None:
        """Announce a clean stop and close the pipe.

        The guardian then waits for a successor and reports unhealthy if none comes.
        """
        if self._write_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._write_fd, STOPPING)
            os.close(self._write_fd)
            self._write_fd = None


if __name__ == "__main__":
    sys.exit(main())
