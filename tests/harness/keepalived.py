"""Real keepalived daemons, one per network namespace, for integration and lab tests.

keepalived runs in the foreground (`-n`) inside its namespace (`-s NS`), logs to a file, and
keeps its pid files in the test's own directory. Its VRRP state is read back from its log
(the `Entering MASTER STATE` lines), which needs no help from the daemon, or from the data dump
that SIGUSR1 triggers, as the agent does.

Facts about keepalived 2.2.7 that these helpers rely on, measured on Debian 12:
- With `-s NS`, keepalived joins the namespace itself. With `data_use_instance` in global_defs,
  its SIGUSR1 dump goes to /tmp/keepalived.NS.data instead of the shared /tmp/keepalived.data.
- `track_process` depends on the kernel's proc connector, which works only in the initial
  network namespace, so configs for namespaces leave it out (render with `agent_process=None`).
- The parent forks a VRRP child; SIGKILL of the parent alone leaves the child running, so
  `kill()` kills the child first, as a crash of the whole daemon would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from harness.netns import Namespace, Topology, run
from mailcow_ha.render.keepalived import (
    DEFAULT_MARKER_ADDRESS,
    KeepalivedInputs,
    priority_for_index,
    render_keepalived_conf,
)

log = logging.getLogger(__name__)

KEEPALIVED = "/usr/sbin/keepalived"
_STATE_LINE = re.compile(r"\((?P<instance>[^)]+)\):? [Ee]ntering (?P<state>MASTER|BACKUP|FAULT) [Ss][Tt][Aa][Tt][Ee]")


class KeepalivedHarnessError(RuntimeError):
    """keepalived did not start, stop or reach a state in time; the message has its log tail."""


def keepalived_available() -> str | None:
    """Return why keepalived cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root to run keepalived in network namespaces"
    if shutil.which(KEEPALIVED) is None:
        return f"{KEEPALIVED} is missing; run scripts/install-system-packages"
    return None


class KeepalivedDaemon:
    """One keepalived in one namespace, with its config, pid files and log under `work_dir`."""

    def __init__(self, namespace: Namespace, work_dir: Path, *, instance: str = "mailcow") -> None:
        self.namespace = namespace
        self.work_dir = work_dir
        self.instance = instance
        self.config_path = work_dir / "keepalived.conf"
        self.pid_file = work_dir / "keepalived.pid"
        self.vrrp_pid_file = work_dir / "keepalived-vrrp.pid"
        self.log_path = work_dir / "keepalived.log"
        self.data_file = Path(f"/tmp/keepalived.{namespace.name}.data")
        """Where the SIGUSR1 dump lands when the config has `data_use_instance`."""
        self.process: subprocess.Popen[bytes] | None = None
        work_dir.mkdir(parents=True, exist_ok=True)

    def write_config(self, text: str) -> None:
        self.config_path.write_text(text, encoding="utf-8")

    def check_config(self) -> subprocess.CompletedProcess[str]:
        """Run `keepalived -t` on the config inside the namespace, where its interfaces exist."""
        return self.namespace.run([KEEPALIVED, "-t", "-e", "-f", str(self.config_path)], check=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise KeepalivedHarnessError(f"keepalived in {self.namespace.name} was never started")
        return self.process.pid

    def vrrp_pid(self) -> int | None:
        """Return the VRRP child's pid, or None before it wrote its pid file."""
        try:
            return int(self.vrrp_pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def start(self, timeout: float = 10.0) -> None:
        """Start keepalived in the namespace and wait until its VRRP child reported startup."""
        if self.running:
            raise KeepalivedHarnessError(f"keepalived in {self.namespace.name} is already running (pid {self.pid})")
        for path in (self.pid_file, self.vrrp_pid_file, self.data_file):
            path.unlink(missing_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log_stream:
            self.process = subprocess.Popen(
                [
                    KEEPALIVED,
                    "--dont-fork",
                    "--log-console",
                    "--log-detail",
                    "--no-syslog",
                    "--vrrp",
                    f"--namespace={self.namespace.name}",
                    f"--use-file={self.config_path}",
                    f"--pid={self.pid_file}",
                    f"--vrrp_pid={self.vrrp_pid_file}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_stream,
                stderr=subprocess.STDOUT,
            )
        self._wait(lambda: "Startup complete" in self.log_text(offset), timeout, "startup")

    def reload(self) -> None:
        """Send SIGHUP, which makes keepalived re-read its config."""
        os.kill(self.pid, signal.SIGHUP)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop keepalived with SIGTERM (it sends priority 0 adverts as master) and wait for it."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise KeepalivedHarnessError(
                f"keepalived in {self.namespace.name} ignored SIGTERM for {timeout:g} s"
            ) from None

    def kill(self) -> None:
        """Kill the VRRP child and the parent with SIGKILL: no priority 0 advert, no cleanup."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        child = self.vrrp_pid()
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        process.kill()
        process.wait(10)

    def log_text(self, offset: int = 0) -> str:
        try:
            with self.log_path.open("rb") as stream:
                stream.seek(offset)
                return stream.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def state(self) -> str | None:
        """Return the instance's latest state from the log (MASTER, BACKUP, FAULT), None if none yet."""
        found = None
        for match in _STATE_LINE.finditer(self.log_text()):
            if match.group("instance") == self.instance:
                found = match.group("state")
        return found

    def wait_state(self, state: str, timeout: float) -> float:
        """Wait until the log shows `state`; return the seconds waited."""
        started = time.monotonic()
        self._wait(lambda: self.state() == state, timeout, f"state {state}")
        return time.monotonic() - started

    def holds_address(self, address: str, interface: str = "lo") -> bool:
        """Return whether `interface` in the namespace carries `address` (keepalived's virtual address)."""
        return any(item.split("/")[0] == address for item in self.namespace.addresses(interface))

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.process is not None and self.process.poll() is not None:
                raise KeepalivedHarnessError(
                    f"keepalived in {self.namespace.name} exited with status {self.process.returncode} "
                    f"while waiting for {what}\n{self.log_tail()}"
                )
            time.sleep(0.05)
        raise KeepalivedHarnessError(
            f"keepalived in {self.namespace.name}: no {what} after {timeout:g} s "
            f"(state {self.state()})\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 25) -> str:
        content = self.log_text().splitlines()
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(content[-lines:])

    def close(self) -> None:
        """Stop the daemon (SIGKILL if SIGTERM is ignored) and remove its dump files in /tmp."""
        try:
            self.stop()
        except KeepalivedHarnessError as error:
            log.error("%s", error)
        for path in (self.data_file, Path(f"/tmp/keepalived_parent.{self.namespace.name}.data")):
            path.unlink(missing_ok=True)


def check_config_in(namespace: Namespace, path: Path) -> subprocess.CompletedProcess[str]:
    """Run `keepalived -t -e -f PATH` inside `namespace`; exit 0 means valid."""
    return run(namespace.exec_argv([KEEPALIVED, "-t", "-e", "-f", str(path)]), check=False)


class VrrpNode:
    """One node of a VrrpCluster: its namespace, private address, keepalived and agent files."""

    def __init__(self, cluster: VrrpCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"node{index}"
        self.address = f"{cluster.subnet_prefix}.{10 + index}"
        self.work_dir = cluster.base_dir / self.name
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.fifo = self.work_dir / "keepalived.fifo"
        self.health_file = self.work_dir / "health"
        self.namespace = cluster.topology.add_namespace(self.name)
        cluster.bridge.attach(self.namespace, "eth0", f"{self.address}/24")
        self.daemon = KeepalivedDaemon(self.namespace, self.work_dir)

    def inputs(self, **overrides: object) -> KeepalivedInputs:
        """Return renderer inputs for this node: the cluster's peers, no track_process (see module doc)."""
        values: dict[str, object] = {
            "router_id": self.name,
            "interface": "eth0",
            "unicast_src_ip": self.address,
            "peers": [node.address for node in self.cluster.nodes],
            "priority": priority_for_index(self.index),
            "notify_fifo": self.fifo,
            "health_file": self.health_file,
            "advert_int": self.cluster.advert_int,
            "script_user": "nobody",
            "script_group": "nogroup",
            "agent_process": None,
        }
        values.update(overrides)
        return KeepalivedInputs(**values)  # type: ignore[arg-type]

    def render(self, **overrides: object) -> None:
        self.daemon.write_config(render_keepalived_conf(self.inputs(**overrides)))

    def set_health(self, value: int) -> None:
        """Write keepalived's track file the way the agent does (a rename, so it is never half-written)."""
        temporary = self.health_file.with_name(f".{self.health_file.name}.tmp")
        temporary.write_text(f"{value}\n", encoding="utf-8")
        temporary.replace(self.health_file)

    def is_master(self) -> bool:
        """Return whether keepalived made this node master, from the marker address it adds on `lo`."""
        return self.daemon.holds_address(DEFAULT_MARKER_ADDRESS)


class VrrpCluster:
    """Nodes on one private bridge, each with keepalived rendered by `render.keepalived`.

    `start()` writes 0 (healthy) into every health file once keepalived runs, as if each node's
    agent had reported so. Tests that run the real agent pass `healthy=False` and let it write them.
    """

    def __init__(self, size: int, base_dir: Path, *, advert_int: float = 1.0) -> None:
        self.base_dir = base_dir
        self.advert_int = advert_int
        self.topology = Topology()
        self.subnet_prefix = f"10.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
        self.nodes: list[VrrpNode] = []
        try:
            self.bridge = self.topology.add_bridge("priv")
            for index in range(1, size + 1):
                self.nodes.append(VrrpNode(self, index))
        except BaseException:
            self.topology.close()
            raise

    def start(self, *, healthy: bool = True) -> None:
        for node in self.nodes:
            node.render()
            node.daemon.start()
            # `init_file 1 overwrite` makes keepalived write 1 (FAULT) at start, so report
            # health only once it runs, as the agent does when it finds the file changed.
            if healthy:
                node.set_health(0)

    def masters(self) -> list[VrrpNode]:
        return [node for node in self.nodes if node.daemon.running and node.is_master()]

    def wait_master(self, timeout: float, *, exclude: VrrpNode | None = None) -> VrrpNode:
        """Wait until exactly one node (other than `exclude`) carries the master's marker address."""
        deadline = time.monotonic() + timeout
        masters: list[VrrpNode] = []
        while time.monotonic() < deadline:
            masters = [node for node in self.masters() if node is not exclude]
            if len(masters) == 1 and (exclude is None or not exclude.is_master()):
                return masters[0]
            time.sleep(0.05)
        states = ", ".join(f"{node.name}={node.daemon.state()}" for node in self.nodes)
        raise KeepalivedHarnessError(
            f"no single master after {timeout:g} s (masters: {[node.name for node in masters]}; {states})"
        )

    def close(self) -> None:
        """Stop every keepalived (all at once, then wait for each), then delete the namespaces."""
        for node in self.nodes:
            if node.daemon.running and node.daemon.process is not None:
                node.daemon.process.terminate()
        for node in self.nodes:
            node.daemon.close()
        self.topology.close()
