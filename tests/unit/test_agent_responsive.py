"""The agent's main loop keeps beating and acting while probes hang, transitions block and readers fail.

The guardian is replaced by one that records when each heartbeat came. Promote blocks in a real
system call (a read from a pipe that the test writes to), as a mount waiting for ext4
multi-mount protection does.
"""

from __future__ import annotations

import itertools
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.nodeconfig import node_config_dict
from mailcow_ha.adapters.keepalived import HealthFile, open_fifo
from mailcow_ha.agent import keepalived_link
from mailcow_ha.agent.keepalived_link import AgentFailure
from mailcow_ha.agent.main import Agent, AgentParts
from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.config import NodeConfig, parse_config
from mailcow_ha.deadline import Deadline
from mailcow_ha.failover.transitions import CancelToken, TransitionOutcome, TransitionRunner, VrrpState
from mailcow_ha.health.monitor import HealthMonitor
from mailcow_ha.health.verdict import CONTAINERS, FLOATING_IP, GALERA, MOUNT, ProbeResult, Role

HUNG_PROBE_TIMEOUT = 20.0
"""Far longer than any wait below, so a loop that waited for a hung probe would fail the test."""


class GateProbe:
    """A probe that passes, or hangs while `hang` is set until `release` is set."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.interval = 0.05
        self.hang = threading.Event()
        self.release = threading.Event()

    def check(self, role: Role, deadline: Deadline) -> ProbeResult:
        if self.hang.is_set():
            self.release.wait(30)
        return ProbeResult(self.name, True, "fine", time.time(), 0.0)


class RecordingGuardian:
    def __init__(self) -> None:
        self.beats: list[float] = []
        self.closed_at: float | None = None

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def start(self) -> None:
        self.beats.append(time.monotonic())

    def heartbeat(self) -> None:
        self.beats.append(time.monotonic())

    def close(self) -> None:
        self.closed_at = time.monotonic()

    def longest_gap(self, since: float) -> float:
        """Return the longest time without a heartbeat from `since` to the close (or to now)."""
        end = self.closed_at if self.closed_at is not None else time.monotonic()
        times = [since, *(beat for beat in self.beats if since < beat < end), end]
        return max(later - earlier for earlier, later in itertools.pairwise(times))


class FakeKeepalived:
    def __init__(self, state: VrrpState | None) -> None:
        self.state = state
        self.dumps = 0

    def running(self) -> bool:
        return True

    def dump_state(self, instance: str, deadline: Deadline) -> VrrpState | None:
        self.dumps += 1
        return self.state


class BlockingPromote:
    """Promote blocks in os.read on a pipe until the test calls `finish`; demote returns at once."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self.started = threading.Event()
        self.tokens: list[CancelToken] = []
        self.runs: list[str] = []

    def promote(self, token: CancelToken) -> None:
        self.runs.append("promote")
        self.tokens.append(token)
        self.started.set()
        os.read(self._read, 1)
        token.check("after the blocking step")

    def demote(self, token: CancelToken) -> None:
        self.runs.append("demote")

    def finish(self) -> None:
        os.write(self._write, b"x")

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


class Node:
    def __init__(self, tmp_path: Path, dumped: VrrpState | None, **health: Any) -> None:
        document = node_config_dict(
            paths={
                "state_dir": str(tmp_path / "state"),
                "run_dir": str(tmp_path / "run"),
                "keepalived_fifo": str(tmp_path / "run" / "keepalived.fifo"),
                "health_file": str(tmp_path / "run" / "health"),
            },
            health={
                "interval": 0.05,
                "probe_timeout": HUNG_PROBE_TIMEOUT,
                "failures_to_unhealthy": 3,
                "successes_to_healthy": 2,
                "retry_interval": 0.01,
                "keepalived_check_interval": 0.2,
                **health,
            },
            deadlines={"containers_stop": 3.0},
        )
        self.config: NodeConfig = parse_config(document)
        (tmp_path / "run").mkdir(parents=True)
        self.fifo_writer = open_fifo(self.config.paths.keepalived_fifo)
        self.probes = {name: GateProbe(name) for name in (GALERA, CONTAINERS, MOUNT, FLOATING_IP)}
        self.keepalived = FakeKeepalived(dumped)
        self.guardian = RecordingGuardian()
        self.transitions = BlockingPromote()
        self.health = HealthFile(self.config.paths.health_file)
        self.agent: Agent | None = None
        self.thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    def start(self) -> Agent:
        def runner_factory(on_outcome: Callable[[TransitionOutcome], None]) -> TransitionRunner:
            return TransitionRunner(self.transitions.promote, self.transitions.demote, on_outcome=on_outcome)

        parts = AgentParts(
            config=self.config,
            monitor=HealthMonitor(list(self.probes.values()), self.config.health),
            runner_factory=runner_factory,
            health_file=self.health,
            keepalived=self.keepalived,  # type: ignore[arg-type]
            alerter=Alerts(),
            guardian=self.guardian,  # type: ignore[arg-type]
        )
        agent = Agent(parts)
        self.agent = agent

        def run() -> None:
            try:
                agent.run()
            except BaseException as error:
                self.failure = error

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return agent

    def say(self, state: str) -> None:
        os.write(self.fifo_writer, f'INSTANCE "mailcow" {state} 250\n'.encode())

    def wait(self, condition: Callable[[], bool], timeout: float = 5.0, what: str = "the condition") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)

    def close(self) -> None:
        for probe in self.probes.values():
            probe.release.set()
        self.transitions.finish()
        if self.agent is not None and self.thread is not None:
            self.agent.stop()
            self.thread.join(10)
        os.close(self.fifo_writer)
        self.transitions.close()


class Alerts:
    def send(self, event: AlertEvent, reason: str, details: dict[str, str] | None = None) -> None:
        pass


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(dumped: VrrpState | None = VrrpState.BACKUP, **health: Any) -> Node:
        node = Node(tmp_path / f"node{len(nodes)}", dumped, **health)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()


def test_hung_probe_leaves_loop_acting(make_node: Callable[..., Node]) -> None:
    node = make_node()
    agent = node.start()
    node.wait(lambda: node.health.read() == 0, what="a healthy standby")

    node.probes[MOUNT].hang.set()
    time.sleep(0.3)
    hung_at = time.monotonic()
    node.say("MASTER")
    node.wait(node.transitions.started.is_set, what="the promote, while the mount probe hangs")
    node.say("BACKUP")
    node.wait(lambda: node.transitions.tokens[0].cancelled, what="BACKUP to stop the blocked promote")

    assert agent.vrrp_state is VrrpState.BACKUP
    assert node.guardian.longest_gap(hung_at) < HUNG_PROBE_TIMEOUT / 4


def test_blocked_promote_keeps_heartbeat(make_node: Callable[..., Node]) -> None:
    node = make_node()
    agent = node.start()
    node.wait(lambda: node.health.read() == 0, what="a healthy standby")

    node.say("MASTER")
    node.wait(node.transitions.started.is_set, what="the promote")
    blocked_at = time.monotonic()
    time.sleep(1.5)
    snapshot = agent.snapshot()
    node.transitions.finish()
    node.wait(lambda: agent.snapshot().reason == "master: all probes pass", what="the promote to end")

    assert node.guardian.longest_gap(blocked_at) < 1.0
    assert snapshot.transition is not None
    assert snapshot.transition.running == "MASTER"
    assert snapshot.taken_at > time.time() - 1.5


def test_stop_during_blocked_promote_keeps_heartbeat(make_node: Callable[..., Node]) -> None:
    node = make_node()
    agent = node.start()
    node.wait(lambda: node.health.read() == 0, what="a healthy standby")
    node.say("MASTER")
    node.wait(node.transitions.started.is_set, what="the promote")
    assert node.thread is not None

    stopped_at = time.monotonic()
    agent.stop()
    node.thread.join(10)

    # The runner waits deadlines.containers_stop (3 s) for the blocked promote, beating meanwhile.
    assert not node.thread.is_alive()
    assert time.monotonic() - stopped_at >= 2.5
    assert node.guardian.longest_gap(stopped_at) < 1.0
    assert node.guardian.closed
    assert node.transitions.tokens[0].cancelled


def test_galera_gate_waits_without_blocking(make_node: Callable[..., Node]) -> None:
    node = make_node(probe_timeout=1.0)
    agent = node.start()
    node.wait(lambda: node.health.read() == 0, what="a healthy standby")

    node.probes[GALERA].hang.set()
    gated_at = time.monotonic()
    node.say("MASTER")
    node.wait(lambda: not agent.snapshot().healthy, timeout=5, what="the rejected promote")

    assert node.transitions.runs == ["demote"]
    assert agent.snapshot().reason.startswith("promote failed: rejected, the local Galera member is not usable")
    assert node.guardian.longest_gap(gated_at) < 0.5


def test_state_check_finds_missed_master(make_node: Callable[..., Node]) -> None:
    node = make_node(VrrpState.BACKUP, keepalived_state_check_interval=0.3)
    agent = node.start()
    node.wait(lambda: node.transitions.runs == ["demote"], what="the first demote")

    # keepalived became MASTER, but its FIFO line never reached the agent.
    node.keepalived.state = VrrpState.MASTER
    node.wait(node.transitions.started.is_set, what="the promote after the state check")

    assert agent.vrrp_state is VrrpState.MASTER
    assert node.transitions.runs == ["demote", "promote"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dead_fifo_reader_replaced(make_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch) -> None:
    node = make_node()
    agent = node.start()
    node.wait(lambda: node.health.read() == 0, what="a healthy standby")
    first_reader = agent.link.fifo
    dumps_before = node.keepalived.dumps
    real_select = select.select

    def select_ending_reader(*args: Any) -> Any:
        if threading.current_thread().name == "mailcow-ha-fifo" and agent.link.fifo is first_reader:
            raise SystemExit("the reader's thread ends")
        return real_select(*args)

    monkeypatch.setattr(select, "select", select_ending_reader)
    node.wait(lambda: agent.link.fifo is not first_reader, what="a new FIFO reader")
    node.keepalived.state = VrrpState.MASTER
    node.say("MASTER")
    node.wait(node.transitions.started.is_set, what="the promote through the new reader")

    assert not first_reader.alive
    assert agent.link.replaced_readers == 1
    assert node.keepalived.dumps > dumps_before


def test_hung_fifo_reader_fails_agent(make_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keepalived_link, "FIFO_STUCK_AFTER", 0.5)
    node = make_node()
    agent = node.start()
    node.wait(lambda: node.health.read() == 0, what="a healthy standby")
    release = threading.Event()
    real_select = select.select

    def select_hanging_reader(*args: Any) -> Any:
        if threading.current_thread().name == "mailcow-ha-fifo":
            release.wait(10)
        return real_select(*args)

    monkeypatch.setattr(select, "select", select_hanging_reader)
    assert node.thread is not None
    node.thread.join(10)
    release.set()

    assert isinstance(node.failure, AgentFailure)
    assert "FIFO reader" in str(node.failure)
    assert node.guardian.closed
    assert agent.vrrp_state is VrrpState.BACKUP
