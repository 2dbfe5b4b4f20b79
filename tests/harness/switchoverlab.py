"""Real keepalived elections driven by stand-in agents, for switchover tests and benchmarks.

Each `StandInAgent` does what the node agent does around keepalived, and nothing else. It reads
keepalived's notify FIFO into a real TransitionRunner, writes the track file from its verdict
(with the switchover hold applied on top), and serves a real StatusApi with the switchover
actions on a loopback address. Promote and demote are simulated by sleeps of configurable
length; the moments a node starts and stops "serving" go into a shared timeline, so tests can
check that two nodes never served at once and measure how long nobody served.

    lab = SwitchoverLab(tmp_path, size=3)
    lab.start()
    master = lab.wait_master(10)
    ...
    lab.close()
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from harness.keepalived import VrrpCluster, VrrpNode
from harness.ports import free_port
from mailcow_ha.adapters.keepalived import FifoMessage, FifoReader, HealthFile
from mailcow_ha.agent.snapshot import (
    ContainerSnapshot,
    GaleraSnapshot,
    MaintenanceSnapshot,
    MountSnapshot,
    NodeSnapshot,
    TransitionSnapshot,
)
from mailcow_ha.agent.statusapi import StatusApi
from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.errors import MailcowHaError
from mailcow_ha.failover.lock import TransitionLock
from mailcow_ha.failover.transitions import CancelToken, TransitionRunner
from mailcow_ha.ops.status import Member
from mailcow_ha.ops.switchover_node import SwitchoverParticipant

SECRET = "switchover-lab-secret"
CLUSTER = "switchover-lab"
HEALTH_LOOP = 0.02


@dataclass
class Timeline:
    """Serving intervals and promote kinds of every node, with monotonic times."""

    events: list[tuple[float, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, node: str, event: str) -> None:
        with self.lock:
            self.events.append((time.monotonic(), node, event))

    def since(self, start: float) -> list[tuple[float, str, str]]:
        with self.lock:
            return [event for event in self.events if event[0] >= start]

    def max_serving_at_once(self) -> int:
        """Return the largest number of nodes that served at the same time."""
        serving: set[str] = set()
        maximum = 0
        with self.lock:
            for _, node, event in sorted(self.events):
                if event == "serving":
                    serving.add(node)
                elif event == "stopped":
                    serving.discard(node)
                maximum = max(maximum, len(serving))
        return maximum

    def gap(self, start: float) -> float | None:
        """Return how long no node served, from the first stop after `start` to the next start."""
        stopped_at = None
        for moment, _, event in self.since(start):
            if event == "stopped" and stopped_at is None:
                stopped_at = moment
            elif event == "serving" and stopped_at is not None:
                return moment - stopped_at
        return None


class StandInAgent:
    """One node's stand-in agent (see the module doc)."""

    def __init__(
        self,
        vrrp: VrrpNode,
        *,
        address: str,
        port: int,
        timeline: Timeline,
        promote_seconds: float,
        demote_seconds: float,
    ) -> None:
        self.vrrp = vrrp
        self.name = vrrp.name
        self.address = address
        self.timeline = timeline
        self.promote_seconds = promote_seconds
        self.demote_seconds = demote_seconds
        self.vrrp_state = "UNKNOWN"
        self.failing: str | None = None
        """Set to a reason to make the node unhealthy (a simulated fault)."""
        self.maintenance = False
        self.demote_error: str | None = None
        """Set to make the next demote fail with this message."""
        self.serving = False
        self.promote_kinds: list[str] = []
        self._stop = threading.Event()
        self._health = HealthFile(vrrp.health_file)
        self._lock_file = TransitionLock.in_run_dir(vrrp.work_dir)
        self.participant = SwitchoverParticipant(self.name, snapshot=self.snapshot, demote=self._locked_demote)
        self.runner = TransitionRunner(
            self.participant.wrap_promote(self._promote_automatic, self._promote_planned),
            self._demote,
            lock=self._lock_file,
            lock_timeout=30.0,
        )
        self.fifo = FifoReader(vrrp.fifo, "mailcow", self._on_fifo)
        self.api = StatusApi(
            address=address,
            port=port,
            cluster=CLUSTER,
            node=self.name,
            secret=SecretStr(SECRET),
            snapshot=self.snapshot,
        )
        self.participant.register(self.api, demote_timeout=30.0)
        self._health_thread = threading.Thread(target=self._write_health, name=f"health-{self.name}", daemon=True)

    def start(self) -> None:
        self.fifo.start()
        self.api.start()
        self._health_thread.start()

    def close(self) -> None:
        self._stop.set()
        self.api.stop()
        self.fifo.close()
        self.runner.close(5.0)
        self._health_thread.join(2.0)

    # keepalived side

    def _on_fifo(self, message: FifoMessage) -> None:
        self.vrrp_state = str(message.state)
        self.runner.submit(message.state)

    def verdict(self) -> tuple[bool, str]:
        override = self.participant.health_override()
        if override is not None:
            return override
        if self.failing is not None and not self.maintenance:
            return False, self.failing
        return True, "all probes pass"

    def _write_health(self) -> None:
        while not self._stop.wait(HEALTH_LOOP):
            healthy, _ = self.verdict()
            self._health.ensure(healthy)

    # simulated transitions

    def _promote_automatic(self, token: CancelToken) -> None:
        self._promote(token, "failover")

    def _promote_planned(self, token: CancelToken) -> None:
        self._promote(token, "switchover")

    def _promote(self, token: CancelToken, kind: str) -> None:
        self.promote_kinds.append(kind)
        token.enter_step("simulated promote")
        if token.wait(self.promote_seconds):
            token.check()
        self.serving = True
        self.timeline.add(self.name, "serving")

    def _demote(self, token: CancelToken) -> None:
        self._simulated_demote()

    def _locked_demote(self, reason: str) -> None:
        self._lock_file.acquire("switchover demote", 30.0)
        try:
            self._simulated_demote()
        finally:
            self._lock_file.release()

    def _simulated_demote(self) -> None:
        if self.demote_error is not None:
            raise MailcowHaError(self.demote_error)
        if self.serving:
            self.serving = False
            self.timeline.add(self.name, "stopped")
            time.sleep(self.demote_seconds)

    # what the status API serves

    def snapshot(self) -> NodeSnapshot:
        healthy, reason = self.verdict()
        current = self.runner.current()
        running = current.running
        last = current.last
        transition = TransitionSnapshot(
            running=None if running is None else str(running.state),
            started_at=None if running is None else running.started_at,
            last_state=None if last is None else str(last.state),
            last_outcome=None if last is None else str(last.result),
            last_finished_at=None if last is None else last.finished_at,
            last_error=None if last is None or last.succeeded else last.message,
        )
        status = "running" if self.serving else "exited"
        return NodeSnapshot(
            cluster=CLUSTER,
            node=self.name,
            node_index=self.vrrp.index,
            private_ip=self.address,
            agent_version="stand-in",
            agent_started_at=0.0,
            taken_at=time.time(),
            vrrp_state=self.vrrp_state,
            healthy=healthy,
            reason=reason,
            galera=GaleraSnapshot(True, True, "Primary", "Synced", 3),
            containers=(ContainerSnapshot("postfix-mailcow", "postfix", status),),
            mount=MountSnapshot("/srv/mailcow-data", mounted=self.serving, marker_ok=self.serving),
            maintenance=MaintenanceSnapshot(active=self.maintenance),
            transition=transition,
        )


class SwitchoverLab:
    """A VrrpCluster with a stand-in agent per node and a status client for the coordinator."""

    def __init__(
        self,
        base_dir: Path,
        *,
        size: int = 3,
        advert_int: float = 1.0,
        promote_seconds: float = 0.3,
        demote_seconds: float = 0.2,
    ) -> None:
        self.timeline = Timeline()
        self.cluster = VrrpCluster(size, base_dir, advert_int=advert_int)
        prefix = f"127.{random.randrange(1, 250)}.{random.randrange(1, 250)}"
        self.port = free_port(f"{prefix}.1")
        self.agents: list[StandInAgent] = []
        try:
            for node in self.cluster.nodes:
                self.agents.append(
                    StandInAgent(
                        node,
                        address=f"{prefix}.{node.index}",
                        port=self.port,
                        timeline=self.timeline,
                        promote_seconds=promote_seconds,
                        demote_seconds=demote_seconds,
                    )
                )
        except BaseException:
            self.close()
            raise
        self.client = StatusClient(cluster=CLUSTER, secret=SecretStr(SECRET), port=self.port, timeout=2.0)

    def __iter__(self) -> Iterator[StandInAgent]:
        return iter(self.agents)

    def agent(self, name: str) -> StandInAgent:
        return next(agent for agent in self.agents if agent.name == name)

    def members(self) -> list[Member]:
        return [Member(agent.name, agent.vrrp.index, agent.address) for agent in self.agents]

    def start(self) -> None:
        for agent in self.agents:
            agent.start()
        self.cluster.start(healthy=False)

    def masters(self) -> list[StandInAgent]:
        return [agent for agent in self.agents if agent.vrrp_state == "MASTER"]

    def wait_master(self, timeout: float, *, serving: bool = True) -> StandInAgent:
        """Wait until exactly one node is MASTER (and serves, with `serving`); return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            masters = self.masters()
            if len(masters) == 1 and (masters[0].serving or not serving) and masters[0].runner.current().idle:
                return masters[0]
            time.sleep(0.05)
        states = ", ".join(f"{agent.name}={agent.vrrp_state}/serving={agent.serving}" for agent in self.agents)
        raise AssertionError(f"no single serving master after {timeout:g} s: {states}\n{self.log_tails()}")

    def wait_states(self, expected: dict[str, str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.agent(name).vrrp_state == state for name, state in expected.items()):
                return
            time.sleep(0.05)
        states = ", ".join(f"{agent.name}={agent.vrrp_state}" for agent in self.agents)
        raise AssertionError(f"states {expected} not reached within {timeout:g} s: {states}")

    def log_tails(self) -> str:
        """Return the end of every node's keepalived log, for failure messages."""
        return "\n".join(
            f"--- {agent.name} keepalived log ---\n{agent.vrrp.daemon.log_tail()}" for agent in self.agents
        )

    def close(self) -> None:
        for agent in self.agents:
            agent.close()
        self.cluster.close()
