"""One lab node as a machine: power, commands and processes inside it, and its view of mounts.

A powered-on node is a network namespace plus the PID, mount and UTS namespaces of its init
(see lab.nodeinit). Commands enter all four with nsenter, so they see the node's /proc, /run and
mounts. Power off is SIGKILL of the init; the lab also takes the node's bridge ports down, so
the node stops answering on the network at once, as a server that lost power does.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from lab.manifest import Manifest, process_alive
from lab.shell import LabError, run

log = logging.getLogger(__name__)

_TESTS_DIR = Path(__file__).resolve().parent.parent
REPOSITORY = _TESTS_DIR.parent
"""The checkout the lab runs from: its venv, runtime and tests must be visible inside every node."""


class NodeMachine:
    """A lab node's namespaces and the processes started in them."""

    def __init__(self, name: str, index: int, netns: str, node_dir: Path, manifest: Manifest) -> None:
        self.name = name
        self.index = index
        self.netns = netns
        self.node_dir = node_dir
        self.lab_dir = node_dir.parent.parent
        """The lab directory (`<lab>/nodes/<name>` is the node's directory)."""
        self.log_dir = node_dir / "log"
        self.manifest = manifest
        self._init: tuple[int, int] | None = None
        self._pid_namespace: str | None = None

    @property
    def pid_file(self) -> Path:
        return self.node_dir / "init.pid"

    @property
    def init_pid(self) -> int:
        if self._init is None:
            raise LabError(f"node {self.name} is powered off; power it on first")
        return self._init[0]

    @property
    def powered(self) -> bool:
        return self._init is not None and process_alive(*self._init)

    def power_on(self, timeout: float = 10.0) -> None:
        """Start the node's init and wait until it runs in its namespaces."""
        if self.powered:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pid_file.unlink(missing_ok=True)
        self.manifest.record("node", self.name, pid_file=str(self.pid_file))
        with open(self.log_dir / "init.log", "ab") as log_file:
            subprocess.Popen(
                [sys.executable, "-m", "lab.nodeinit", "--netns", self.netns, "--hostname", self.name,
                 "--pid-file", str(self.pid_file), "--etc-dir", str(self.node_dir / "etc"),
                 "--log-dir", str(self.log_dir), "--keep", str(REPOSITORY), "--keep", str(self.lab_dir)],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(_TESTS_DIR)}, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.pid_file.exists():
            if time.monotonic() > deadline:
                raise LabError(f"node {self.name} init did not start within {timeout:g} s; see {self.log_dir}/init.log")
            time.sleep(0.02)
        pid, start_time = (int(part) for part in self.pid_file.read_text().split())
        self._init = (pid, start_time)
        self._pid_namespace = os.readlink(f"/proc/{pid}/ns/pid")
        # The init mounts its own /proc; wait until a command entering the node sees it.
        while self.run(["cat", "/proc/1/comm"], check=False).stdout.strip() not in ("python", "python3"):
            if time.monotonic() > deadline:
                raise LabError(f"node {self.name} init did not mount its /proc within {timeout:g} s")
            time.sleep(0.02)
        log.info("node %s powered on (init pid %d)", self.name, pid)

    def adopt(self) -> None:
        """Find the init of a node that an earlier process powered on, from its pid file."""
        try:
            pid, start_time = (int(part) for part in self.pid_file.read_text().split())
        except (FileNotFoundError, ValueError):
            return
        if process_alive(pid, start_time):
            self._init = (pid, start_time)
            self._pid_namespace = os.readlink(f"/proc/{pid}/ns/pid")

    def power_off(self) -> None:
        """Kill the node's init, which ends every process in the node and drops its mounts."""
        if self._init is None:
            return
        pid, start_time = self._init
        if process_alive(pid, start_time):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while process_alive(pid, start_time) or self.processes():
            if time.monotonic() > deadline:
                raise LabError(f"node {self.name} still has processes 10 s after its init was killed")
            time.sleep(0.02)
        self._init = None
        log.info("node %s powered off", self.name)

    @property
    def pid_namespace(self) -> str | None:
        """The `pid:[inode]` link of the node's PID namespace while it is powered on."""
        return self._pid_namespace if self._init is not None else None

    def command(self, argv: Sequence[str]) -> list[str]:
        """Return `argv` wrapped to run inside the node's namespaces."""
        return ["nsenter", f"--target={self.init_pid}", "--mount", "--uts", "--net", "--pid", "--wd=/", *argv]

    def run(
        self, argv: Sequence[str], *, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the node to completion."""
        return run(self.command(argv), timeout=timeout, check=check)

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a long-running process inside the node, its output appended to log/NAME.log."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log_file:
            process = subprocess.Popen(
                self.command(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        log.info("node %s: started %s (nsenter pid %d)", self.name, name, process.pid)
        return process

    def processes(self, comm: str | None = None) -> list[int]:
        """Return the host pids of the node's processes, optionally only those named `comm`."""
        if self._pid_namespace is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "ns" / "pid") != self._pid_namespace:
                    continue
                if comm is not None and (entry / "comm").read_text().strip() != comm:
                    continue
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            if state != "Z":
                found.append(int(entry.name))
        return found

    def signal_processes(self, comm: str, signum: int) -> list[int]:
        """Send `signum` to every process named `comm` in the node and return their host pids."""
        pids = self.processes(comm)
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                continue
        return pids

    def mountinfo(self) -> str:
        """Return the mount table of the node's mount namespace; empty when powered off."""
        if self._init is None:
            return ""
        try:
            return Path(f"/proc/{self._init[0]}/mountinfo").read_text()
        except OSError:
            # Gone, or dying (EINVAL while the kernel tears the mount namespace down).
            return ""

    def path(self, inside: str | Path) -> Path:
        """Return a host path that reaches `inside` through the node's mount namespace."""
        return Path(f"/proc/{self.init_pid}/root") / str(inside).lstrip("/")
