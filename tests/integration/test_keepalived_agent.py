"""Real keepalived in namespaces driven by real agent processes: the verdict, a dead agent and
maintenance mode move (or hold) the master, and a restarted agent re-learns MASTER before acting.

The agents run the real main loop, FIFO reader, track file, guardian and lock
(`harness.agentproc`); only their probes and promote/demote are scripted through files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.agentproc import ALERTS_LOG, TRANSITIONS_LOG
from harness.keepalived import VrrpCluster, VrrpNode, keepalived_available
from harness.nodeconfig import node_config_dict, write_node_config
from mailcow_ha.ops import maintenance

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2]
RESTART_DELAY = 1.0


class AgentNode:
    """One node's agent process with its config and control directory."""

    def __init__(self, node: VrrpNode, cluster: VrrpCluster) -> None:
        self.node = node
        self.control = node.work_dir / "control"
        self.control.mkdir()
        self.state_dir = node.work_dir / "state"
        document = node_config_dict(
            cluster="vrrp-test",
            node={"name": node.name, "index": node.index, "private_ip": node.address, "private_interface": "eth0"},
            peers=[{"name": n.name, "index": n.index, "private_ip": n.address} for n in cluster.nodes],
            paths={
                "state_dir": str(self.state_dir),
                "run_dir": str(node.work_dir / "run"),
                "keepalived_fifo": str(node.fifo),
                "health_file": str(node.health_file),
                "keepalived_pid_file": str(node.daemon.pid_file),
                "keepalived_data_file": str(node.daemon.data_file),
                "keepalived_conf": str(node.daemon.config_path),
            },
            health={
                "interval": 0.1,
                "probe_timeout": 1.0,
                "failures_to_unhealthy": 2,
                "successes_to_healthy": 2,
                "retry_interval": 0.05,
                "galera_interval": 0.2,
                "watchdog_timeout": 3.0,
                "keepalived_check_interval": 0.5,
                "failed_transition_hold": 5.0,
            },
            keepalived={
                "priority": node.inputs().priority,
                "agent_process": None,
                "agent_restart_delay": RESTART_DELAY,
            },
        )
        self.config_path = write_node_config(node.work_dir / "node.yaml", document)
        self.log_path = node.work_dir / "agent.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        environment = {**os.environ, "PYTHONPATH": f"{REPOSITORY / 'tests'}:{REPOSITORY / 'infra'}"}
        with self.log_path.open("ab") as log_stream:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "harness.agentproc",
                    "--config",
                    str(self.config_path),
                    "--control",
                    str(self.control),
                ],
                cwd=REPOSITORY,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log_stream,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def set_probe(self, name: str, text: str) -> None:
        (self.control / name).write_text(text + "\n", encoding="utf-8")

    def transitions(self) -> list[str]:
        path = self.control / TRANSITIONS_LOG
        return path.read_text(encoding="utf-8").split() if path.exists() else []

    def alerts(self) -> str:
        path = self.control / ALERTS_LOG
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def log_tail(self) -> str:
        lines = (
            self.log_path.read_text(encoding="utf-8", errors="replace").splitlines() if self.log_path.exists() else []
        )
        return f"--- {self.log_path} ---\n" + "\n".join(lines[-40:])


class AgentCluster:
    def __init__(self, vrrp: VrrpCluster) -> None:
        self.vrrp = vrrp
        self.agents = [AgentNode(node, vrrp) for node in vrrp.nodes]

    def start(self) -> None:
        self.vrrp.start(healthy=False)
        for agent in self.agents:
            agent.start()

    def master(self, timeout: float, *, exclude: VrrpNode | None = None) -> AgentNode:
        try:
            node = self.vrrp.wait_master(timeout, exclude=exclude)
        except Exception:
            raise AssertionError("no single master\n" + "\n".join(agent.log_tail() for agent in self.agents)) from None
        return self.agents[node.index - 1]

    def close(self) -> None:
        for agent in self.agents:
            if agent.process is not None and agent.process.poll() is None:
                agent.process.terminate()
        for agent in self.agents:
            agent.stop()
        _wait_for_guardians(self.vrrp.base_dir, timeout=RESTART_DELAY + 5)
        self.vrrp.close()


def _guardians_of(directory: Path) -> list[int]:
    """Guardian processes whose command line names a file of this test's directory."""
    found = []
    marker = str(directory).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"mailcow_ha.agent.guardian" in command and marker in command:
            found.append(int(entry.name))
    return found


def _wait_for_guardians(directory: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _guardians_of(directory) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in _guardians_of(directory):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[AgentCluster]:
    reason = keepalived_available()
    if reason is not None:
        pytest.skip(reason)
    vrrp = VrrpCluster(3, tmp_path)
    agents = AgentCluster(vrrp)
    try:
        agents.start()
        yield agents
    finally:
        agents.close()


def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_verdict_moves_master(cluster: AgentCluster) -> None:
    first = cluster.master(timeout=15)
    wait(lambda: first.transitions()[-1:] == ["promote"], 5, "the first master's promote")

    first.set_probe("containers", "postfix-mailcow: exited (exit code 137)")
    second = cluster.master(timeout=10, exclude=first.node)
    first.node.daemon.wait_state("FAULT", timeout=5)

    # Every node starts BACKUP with nopreempt, so the first master is whichever left FAULT
    # first. After it fails, the remaining node with the highest priority (lowest index) wins.
    remaining = [agent.node.index for agent in cluster.agents if agent is not first]
    assert second.node.index == min(remaining)
    wait(lambda: second.transitions()[-1:] == ["promote"], 5, "the second master's promote")
    wait(lambda: first.transitions()[-1:] == ["demote"], 5, "the old master's demote")
    assert "node is unhealthy: containers: postfix-mailcow: exited (exit code 137)" in first.alerts()


def test_killed_agent_moves_master(cluster: AgentCluster) -> None:
    first = cluster.master(timeout=15)
    wait(lambda: first.node.health_file.read_text().strip() == "0", 5, "a healthy master")

    first.kill()
    second = cluster.master(timeout=RESTART_DELAY + 8, exclude=first.node)

    assert second.node is not first.node
    assert first.node.health_file.read_text().strip() == "1"
    first.node.daemon.wait_state("FAULT", timeout=2)


def test_maintenance_holds_master(cluster: AgentCluster) -> None:
    first = cluster.master(timeout=15)
    wait(lambda: first.transitions()[-1:] == ["promote"], 5, "the first master's promote")
    maintenance.switch_on(first.state_dir, duration=600, reason="mailcow update")

    first.set_probe("containers", "postfix-mailcow: exited (exit code 0)")
    first.set_probe("mount", "/srv/mailcow-data is not a mount point")
    time.sleep(3.0)

    assert cluster.vrrp.masters() == [first.node]
    assert first.node.health_file.read_text().strip() == "0"

    first.set_probe("galera", "quorum-lost outside the primary component (cluster status non-Primary)")
    second = cluster.master(timeout=10, exclude=first.node)

    assert second.node is not first.node
    assert "quorum-lost" in [line.split("\t", 1)[0] for line in first.alerts().splitlines()]


def test_restarted_agent_keeps_master(cluster: AgentCluster) -> None:
    first = cluster.master(timeout=15)
    wait(lambda: first.transitions()[-1:] == ["promote"], 5, "the first master's promote")
    promotes = first.transitions().count("promote")

    first.kill()
    first.start()
    wait(lambda: "keepalived is MASTER; checking the service" in first.log_path.read_text(), 10, "the re-learned state")
    time.sleep(RESTART_DELAY + 1.5)

    assert cluster.vrrp.masters() == [first.node]
    assert first.transitions().count("promote") == promotes
    assert first.node.health_file.read_text().strip() == "0"
    assert "agent start: the master's service is complete; nothing to do" in first.log_path.read_text()


def test_quorum_lost_everywhere_no_master(cluster: AgentCluster) -> None:
    first = cluster.master(timeout=15)
    wait(lambda: first.transitions()[-1:] == ["promote"], 5, "the first master's promote")
    promotes = {agent.node.name: agent.transitions().count("promote") for agent in cluster.agents}

    for agent in cluster.agents:
        agent.set_probe("galera", "quorum-lost outside the primary component (cluster status non-Primary)")
    wait(lambda: not cluster.vrrp.masters(), 10, "every node to leave MASTER")
    time.sleep(3.0)

    assert cluster.vrrp.masters() == []
    for agent in cluster.agents:
        agent.node.daemon.wait_state("FAULT", timeout=2)
        assert agent.transitions().count("promote") == promotes[agent.node.name]
        events = [line.split("\t", 1)[0] for line in agent.alerts().splitlines()]
        assert events.count("quorum-lost") == 1


def reload_all(
    cluster: AgentCluster, *, seconds: float, every: float = 0.3, stop: threading.Event | None = None
) -> int:
    """Send SIGHUP to every keepalived every `every` seconds for `seconds`; return the rounds sent."""
    rounds = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (stop is None or not stop.is_set()):
        for agent in cluster.agents:
            agent.node.daemon.reload()
        rounds += 1
        time.sleep(every)
    return rounds


def test_reloads_during_election_lose_no_master(cluster: AgentCluster) -> None:
    # keepalived started before the agents, so it created every FIFO and replaces it at each reload.
    # A handle on each first FIFO shows its removal; inode numbers do not, as a new FIFO may reuse one.
    originals = [os.open(agent.node.fifo, os.O_PATH | os.O_CLOEXEC) for agent in cluster.agents]
    try:
        rounds = reload_all(cluster, seconds=5.0)

        master = cluster.master(timeout=20)
        wait(lambda: master.transitions()[-1:] == ["promote"], 10, f"{master.node.name}'s promote\n{master.log_tail()}")
        time.sleep(1.0)
        removed = [os.fstat(descriptor).st_nlink == 0 for descriptor in originals]
    finally:
        for descriptor in originals:
            os.close(descriptor)

    assert rounds >= 10
    assert all(removed)
    assert cluster.vrrp.masters() == [master.node]
    for agent in cluster.agents:
        if agent is not master:
            assert "promote" not in agent.transitions(), agent.log_tail()


def test_fault_during_reloads_reaches_agent(cluster: AgentCluster) -> None:
    first = cluster.master(timeout=15)
    wait(lambda: first.transitions()[-1:] == ["promote"], 5, "the first master's promote")

    # Reloads every 0.3 s replace the FIFOs about as fast as a reader can follow them, so the FAULT
    # line may land in a FIFO that is gone before anyone reads it. The agent must learn it anyway.
    stop = threading.Event()
    reloader = threading.Thread(target=lambda: reload_all(cluster, seconds=6.0, stop=stop), daemon=True)
    reloader.start()
    time.sleep(1.0)
    first.set_probe("containers", "postfix-mailcow: exited (exit code 137)")
    first.node.daemon.wait_state("FAULT", timeout=5)
    reloader.join(10)
    stop.set()

    second = cluster.master(timeout=20, exclude=first.node)
    wait(lambda: first.transitions()[-1:] == ["demote"], 10, f"the old master's demote\n{first.log_tail()}")
    wait(lambda: second.transitions()[-1:] == ["promote"], 10, f"the new master's promote\n{second.log_tail()}")

    assert cluster.vrrp.masters() == [second.node]
    assert first.transitions().count("promote") == 1


def test_peer_reloads_keep_master(cluster: AgentCluster) -> None:
    first = cluster.master(timeout=15)
    wait(lambda: first.transitions()[-1:] == ["promote"], 5, "the first master's promote")
    before = {agent.node.name: agent.transitions() for agent in cluster.agents}

    # A membership sync after a scale-out: every node learns a new peer and reloads.
    new_peer = f"{cluster.vrrp.subnet_prefix}.99"
    for agent in cluster.agents:
        agent.node.render(peers=[node.address for node in cluster.vrrp.nodes] + [new_peer])
    reload_all(cluster, seconds=3.0)
    time.sleep(2.0)

    assert cluster.vrrp.masters() == [first.node]
    assert {agent.node.name: agent.transitions() for agent in cluster.agents} == before
    assert first.node.health_file.read_text().strip() == "0"
