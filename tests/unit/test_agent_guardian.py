"""The guardian process: a dead agent leaves FAULT unless a new one takes over; a hung one is killed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from mailcow_ha.agent.guardian import Guardian
from mailcow_ha.config import HealthSettings


def start_guardian(
    tmp_path: Path, agent_pid: int, *, timeout: float = 10.0, delay: float = 0.3
) -> tuple[subprocess.Popen[bytes], int]:
    read_fd, write_fd = os.pipe()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailcow_ha.agent.guardian",
            f"--fd={read_fd}",
            f"--agent-pid={agent_pid}",
            f"--health-file={tmp_path / 'health'}",
            f"--pid-file={tmp_path / 'agent.pid'}",
            f"--timeout={timeout}",
            f"--restart-delay={delay}",
        ],
        pass_fds=(read_fd,),
        stderr=subprocess.PIPE,
    )
    os.close(read_fd)
    return process, write_fd


@pytest.fixture
def fake_agent() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def test_exit_without_successor_reports_unhealthy(tmp_path: Path, fake_agent: subprocess.Popen[bytes]) -> None:
    (tmp_path / "health").write_text("0\n")
    guardian, pipe = start_guardian(tmp_path, fake_agent.pid)
    os.write(pipe, b".")

    os.close(pipe)
    status = guardian.wait(10)

    assert status == 0
    assert (tmp_path / "health").read_text() == "1\n"
    assert fake_agent.poll() is None


def test_exit_with_successor_keeps_verdict(tmp_path: Path, fake_agent: subprocess.Popen[bytes]) -> None:
    (tmp_path / "health").write_text("0\n")
    guardian, pipe = start_guardian(tmp_path, fake_agent.pid, delay=5.0)

    (tmp_path / "agent.pid").write_text(f"{os.getpid()}\n")
    started = time.monotonic()
    os.close(pipe)
    guardian.wait(10)

    assert time.monotonic() - started < 2.0
    assert (tmp_path / "health").read_text() == "0\n"
    assert b"took over" in guardian.stderr.read()  # type: ignore[union-attr]


def test_hang_kills_agent(tmp_path: Path, fake_agent: subprocess.Popen[bytes]) -> None:
    (tmp_path / "health").write_text("0\n")
    guardian, pipe = start_guardian(tmp_path, fake_agent.pid, timeout=0.5)

    fake_agent.wait(10)
    guardian.wait(10)
    os.close(pipe)

    assert fake_agent.returncode == -9
    assert (tmp_path / "health").read_text() == "1\n"


def test_heartbeats_keep_it_quiet(tmp_path: Path, fake_agent: subprocess.Popen[bytes]) -> None:
    (tmp_path / "health").write_text("0\n")
    guardian, pipe = start_guardian(tmp_path, fake_agent.pid, timeout=0.5)

    for _ in range(10):
        os.write(pipe, b".")
        time.sleep(0.1)
    alive = guardian.poll() is None
    os.close(pipe)
    guardian.wait(10)

    assert alive
    assert fake_agent.poll() is None


def test_handle_restarts_dead_guardian(tmp_path: Path) -> None:
    handle = Guardian(health_file=tmp_path / "health", pid_file=tmp_path / "agent.pid", timeout=30, restart_delay=0.2)
    (tmp_path / "agent.pid").write_text(f"{os.getpid()}\n")
    handle.start()
    first = handle.process
    assert first is not None
    first.kill()
    first.wait()

    handle.heartbeat()
    second = handle.process

    assert second is not None
    assert second.pid != first.pid
    handle.close()
    second.wait(10)


def test_clean_stop_logged_as_stop(tmp_path: Path, fake_agent: subprocess.Popen[bytes]) -> None:
    (tmp_path / "health").write_text("0\n")
    guardian, pipe = start_guardian(tmp_path, fake_agent.pid)

    os.write(pipe, b"..S")
    os.close(pipe)
    guardian.wait(10)
    output = guardian.stderr.read().decode()  # type: ignore[union-attr]

    assert "stopped and no agent took over" in output
    assert "ERROR" not in output
    assert (tmp_path / "health").read_text() == "1\n"


def test_watchdog_shorter_than_passes_rejected() -> None:
    with pytest.raises(ValidationError, match="watchdog_timeout \\(3 s\\) must be at least 4 times interval"):
        HealthSettings(interval=1.0, watchdog_timeout=3.0)

    assert HealthSettings(interval=0.5, watchdog_timeout=2.0).watchdog_timeout == 2.0
