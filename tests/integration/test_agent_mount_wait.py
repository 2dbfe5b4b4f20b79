"""A promote whose mount waits about 22 s for ext4 multi-mount protection, in the real agent process.

The shared volume is a loop device with MMP whose MMP block was left active, as after an
unclean loss of the node that had it mounted, so the kernel waits two check periods twice
before it mounts. The agent runs as a process with its real guardian, whose watchdog is far
shorter than that wait. The agent must keep beating and acting during the mount, and stop
cleanly on SIGTERM, instead of being killed by its guardian (exit status 137).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.agentproc import TRANSITIONS_LOG
from harness.loopdev import LoopVolume, private_mount_namespace
from harness.nodeconfig import node_config_dict, write_node_config
from mailcow_ha.adapters.keepalived import open_fifo

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2]
WATCHDOG = 3.0
STOP_WAIT = 6.0
"""deadlines.containers_stop: how long a stopping agent waits for the running promote."""
_SUPERBLOCK_OFFSET = 1024
_LOG_BLOCK_SIZE = 0x18
_MMP_BLOCK = 0x168


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def leave_mmp_active(volume: LoopVolume) -> None:
    """Leave the volume's MMP block as a node that lost the volume while mounting it would.

    The volume is mounted until the kernel's MMP thread has written a live sequence number,
    the block is copied, the volume is unmounted (which marks the block clean) and the copy is
    written back over the image.
    """
    mount_point = volume.workdir / "last-holder"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "ext4", str(volume.device), str(mount_point)], check=True, timeout=60)
    time.sleep(2.5)
    with volume.image.open("rb") as image:
        image.seek(_SUPERBLOCK_OFFSET)
        superblock = image.read(1024)
        block_size = 1024 << struct.unpack_from("<I", superblock, _LOG_BLOCK_SIZE)[0]
        offset = struct.unpack_from("<Q", superblock, _MMP_BLOCK)[0] * block_size
        image.seek(offset)
        active = image.read(block_size)
    subprocess.run(["umount", str(mount_point)], check=True, timeout=60)
    descriptor = os.open(volume.image, os.O_WRONLY)
    try:
        os.pwrite(descriptor, active, offset)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass
class MountNode:
    """The agent process, its stand-in keepalived, the FIFO writer and the volume's second device."""

    workdir: Path
    volume: LoopVolume
    device: Path
    config_path: Path
    control: Path
    fifo_writer: int
    keepalived: subprocess.Popen[bytes]
    agent: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    @property
    def mount_point(self) -> Path:
        return self.workdir / "mnt"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def transitions(self) -> list[str]:
        path = self.control / TRANSITIONS_LOG
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

    def say(self, state: str) -> None:
        os.write(self.fifo_writer, f'INSTANCE "mailcow" {state} 250\n'.encode())

    def start_agent(self) -> None:
        environment = {**os.environ, "PYTHONPATH": f"{REPOSITORY / 'tests'}:{REPOSITORY / 'infra'}"}
        with self.log_path.open("ab") as log_stream:
            argv = [sys.executable, "-m", "harness.mountagent", "--config", str(self.config_path)]
            argv.extend(["--control", str(self.control), "--device", str(self.device)])
            self.agent = subprocess.Popen(
                argv,
                cwd=REPOSITORY,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log_stream,
                stderr=subprocess.STDOUT,
            )

    def mounted(self) -> bool:
        return str(self.mount_point) in self.volume.mount_points()


@pytest.fixture
def mount_node(tmp_path: Path) -> Iterator[MountNode]:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices and mounts")
    with private_mount_namespace():
        volume = LoopVolume.create(parent=tmp_path)
        keepalived: subprocess.Popen[bytes] | None = None
        node: MountNode | None = None
        try:
            volume.prepare(cluster="mailcow-ha-test", volume_id=301, project="mailcowdockerized")
            leave_mmp_active(volume)
            node = build_node(tmp_path, volume)
            keepalived = node.keepalived
            yield node
        finally:
            if node is not None:
                stop_agent(node)
                # A mount the agent left behind would still complete after the cleanup below.
                end_left_mount(node)
                os.close(node.fifo_writer)
            if keepalived is not None:
                keepalived.kill()
                keepalived.wait(10)
            volume.close()


def build_node(tmp_path: Path, volume: LoopVolume) -> MountNode:
    control = tmp_path / "control"
    control.mkdir()
    (tmp_path / "mnt").mkdir()
    run_dir = tmp_path / "run"
    # keepalived's stand-in: a process whose kernel name is keepalived, so the agent finds it running.
    stand_in = tmp_path / "bin" / "keepalived"
    stand_in.parent.mkdir()
    shutil.copy("/bin/sleep", stand_in)
    keepalived = subprocess.Popen([str(stand_in), "600"])
    (tmp_path / "keepalived.pid").write_text(f"{keepalived.pid}\n", encoding="ascii")
    document = node_config_dict(
        paths={
            "state_dir": str(tmp_path / "state"),
            "run_dir": str(run_dir),
            "keepalived_fifo": str(run_dir / "keepalived.fifo"),
            "health_file": str(run_dir / "health"),
            "mount_point": str(tmp_path / "mnt"),
            "keepalived_pid_file": str(tmp_path / "keepalived.pid"),
            "keepalived_data_file": str(tmp_path / "keepalived.data"),
        },
        health={
            "interval": 0.1,
            "probe_timeout": 1.0,
            "retry_interval": 0.05,
            "galera_interval": 0.2,
            "watchdog_timeout": WATCHDOG,
            "keepalived_check_interval": 0.5,
            # The stand-in would die of the SIGUSR1 that requests keepalived's data dump.
            "keepalived_state_check_interval": 3600,
        },
        keepalived={"priority": 250, "agent_process": None, "agent_restart_delay": 1.0},
        deadlines={"containers_stop": STOP_WAIT},
    )
    config_path = write_node_config(tmp_path / "node.yaml", document)
    fifo_writer = open_fifo(run_dir / "keepalived.fifo")
    return MountNode(tmp_path, volume, volume.second_device(), config_path, control, fifo_writer, keepalived)


def stop_agent(node: MountNode) -> None:
    agent = node.agent
    if agent is None or agent.poll() is not None:
        return
    agent.terminate()
    try:
        agent.wait(STOP_WAIT + 10)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait(10)


def end_left_mount(node: MountNode, timeout: float = 40.0) -> None:
    """End the `mount` of the node's device that the stopped agent left behind, and wait until it is gone.

    The kernel's MMP wait is interruptible, so SIGKILL ends that mount with a failure instead of
    leaving a mount behind that appears after the test cleaned up.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _is_mount_of(pid, node.device)]
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _is_mount_of(pid: str, device: Path) -> bool:
    argv = _command_line(pid).split()
    return bool(argv) and Path(argv[0]).name == "mount" and str(device) in argv


def _command_line(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_long_mount_keeps_agent_alive_and_stoppable(mount_node: MountNode) -> None:
    node = mount_node
    node.say("BACKUP")
    node.start_agent()
    health = node.workdir / "run" / "health"
    wait_for(lambda: health.exists() and health.read_text().strip() == "0", 20, "a healthy standby")
    assert node.agent is not None
    pid = node.agent.pid

    node.say("MASTER")
    wait_for(lambda: "promote" in node.transitions(), 10, "the promote to start its mount")
    time.sleep(WATCHDOG + 1.5)
    alive_during_mount = node.agent.poll() is None
    mounted_early = node.mounted()

    node.say("BACKUP")
    wait_for(lambda: "BACKUP received while a promote runs" in node.log(), 3, "the agent to take BACKUP")
    stop_sent = time.monotonic()
    node.agent.send_signal(signal.SIGTERM)
    returncode = node.agent.wait(STOP_WAIT + 10)
    stopped_after = time.monotonic() - stop_sent
    log = node.log()

    assert alive_during_mount
    assert not mounted_early, "the MMP block was not active, so the mount did not wait"
    assert node.agent.pid == pid
    assert returncode == 0, f"the agent exited with {returncode}\n{log[-3000:]}"
    assert stopped_after >= STOP_WAIT - 1.0
    assert "made no progress" not in log
    assert "a transition was still running when the agent stopped" in log
