"""The resident node agent: keepalived transitions in, one transition at a time, health verdicts out.

One main loop owns the decisions. Other threads only hand it inputs through a queue: the FIFO
reader (keepalived's transitions), the engine event watcher (container deaths), and the
transition runner (outcomes of promote and demote). Each pass of the loop runs the probes that
are due, derives the node's role, decides the verdict, writes it into keepalived's track file
when the file differs, and publishes a NodeSnapshot for the status API. The loop waits at most
`health.interval` for input between passes, and every pass sends the guardian a heartbeat, so
the guardian notices a loop that stops making progress.

Steady state makes no Hetzner API call: the probes read the engine, Galera, the mount table and
the interface addresses, and only promote, demote and the membership sync talk to the API.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mailcow_ha.adapters.engine import ContainerEvent
from mailcow_ha.adapters.keepalived import FifoMessage, FifoReader, HealthFile, KeepalivedError, KeepalivedProcess
from mailcow_ha.adapters.netif import NetworkInterfaceError, add_address
from mailcow_ha.agent.decisions import (
    KeepalivedWatch,
    derive_role,
    failed_promote,
    gate_promote,
    note_keepalived,
    plan_master_resume,
    plan_resume,
)
from mailcow_ha.agent.events import EventWatcher, StreamConnected
from mailcow_ha.agent.guardian import Guardian
from mailcow_ha.agent.report import AgentView, build_snapshot
from mailcow_ha.agent.snapshot import BreakerSnapshot, NodeSnapshot
from mailcow_ha.alert_events import Alerter, AlertEvent
from mailcow_ha.config import NodeConfig
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import MailcowHaError
from mailcow_ha.failover.history import read_failover_start
from mailcow_ha.failover.transitions import TransitionOutcome, TransitionRunner, TransitionStatus, VrrpState
from mailcow_ha.health.containers import ContainerProbe
from mailcow_ha.health.galera import GaleraProbe
from mailcow_ha.health.monitor import HealthMonitor
from mailcow_ha.health.system import FloatingIpProbe, MountProbe
from mailcow_ha.health.verdict import CONTAINERS, FLOATING_IP, GALERA, Role, Verdict, VerdictInputs, decide_verdict
from mailcow_ha.ops import maintenance as maintenance_mode

log = logging.getLogger(__name__)

RELEARN_INTERVAL = 5.0
"""Seconds between attempts to learn keepalived's state while it is unknown."""
DUMP_TIMEOUT = 3.0
REPAIR_INTERVAL = 10.0
"""Seconds between two attempts to put a missing floating IP back on the public interface."""
BREAKER_REFRESH = 10.0
"""Seconds between two reads of the circuit breaker's state for the snapshot (it reads the history file)."""

HealthOverride = Callable[[], "tuple[bool, str] | None"]


@dataclass
class AgentParts:
    """Everything the agent drives, built by `agent.wiring` from the node config (or by tests)."""

    config: NodeConfig
    monitor: HealthMonitor
    runner_factory: Callable[[Callable[[TransitionOutcome], None]], TransitionRunner]
    """Builds the transition runner around the agent's outcome callback."""
    health_file: HealthFile
    keepalived: KeepalivedProcess
    alerter: Alerter
    galera: GaleraProbe | None = None
    containers: ContainerProbe | None = None
    mount: MountProbe | None = None
    floating_ips: FloatingIpProbe | None = None
    events: Callable[[Callable[[ContainerEvent | StreamConnected], None]], EventWatcher] | None = None
    guardian: Guardian | None = None
    health_override: HealthOverride | None = None
    """A switchover's hold, applied on top of the verdict."""
    breaker_status: Callable[[], BreakerSnapshot] | None = None
    members: Callable[[], tuple[str, ...]] | None = None
    background: list[Callable[[], None]] = field(default_factory=list)
    """Called once at start, for parts with their own threads (membership sync, status API)."""
    closers: list[Callable[[], None]] = field(default_factory=list)


class Agent:
    """The main loop of one node's agent; `run()` returns when `stop()` is called."""

    def __init__(self, parts: AgentParts, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.parts = parts
        self.config = parts.config
        self._clock = clock
        self._inbox: queue.Queue[FifoMessage | ContainerEvent | StreamConnected | TransitionOutcome] = queue.Queue()
        self._stopping = threading.Event()
        self._vrrp_state: VrrpState | None = None
        self._vrrp_since: float | None = None
        self._resumed_master = False
        self._keepalived_watch = KeepalivedWatch()
        self._next_keepalived_check = 0.0
        self._next_relearn = 0.0
        self._next_repair = 0.0
        self._verdict: Verdict | None = None
        self._verdict_since: float | None = None
        self._written: bool | None = None
        self._quorum_alerted = False
        self._grace_start: float | None = None
        self._refused_promote: tuple[str, float] | None = None
        self._write_failing = False
        self._breaker: BreakerSnapshot | None = None
        self._maintenance = maintenance_mode.MaintenanceWatch(self.config.paths.state_dir, parts.alerter)
        self._next_breaker_read = 0.0
        self._snapshot_lock = threading.Lock()
        self._started_at = time.time()
        self._snapshot = build_snapshot(self._view())
        self.runner = parts.runner_factory(self._inbox.put)
        self.fifo = FifoReader(self.config.paths.keepalived_fifo, self.config.keepalived.instance, self._inbox.put)
        self._watcher: EventWatcher | None = None
        self.events_connected = False
        """True once the engine's event stream opened (and stays so: the poll covers a reconnect)."""

    # --- public ---------------------------------------------------------------------------------

    def snapshot(self) -> NodeSnapshot:
        """The node's state after the latest pass of the main loop (thread-safe)."""
        with self._snapshot_lock:
            return self._snapshot

    @property
    def vrrp_state(self) -> VrrpState | None:
        return self._vrrp_state

    def stop(self) -> None:
        """Ask the main loop to finish its pass and return (safe from signal handlers and other threads)."""
        self._stopping.set()

    def run(self) -> None:
        """Re-learn keepalived's state, start the helpers, and loop until `stop()`."""
        if self.parts.guardian is not None:
            self.parts.guardian.start()
        self._resume()
        self.fifo.start()
        if self.parts.events is not None:
            self._watcher = self.parts.events(self._inbox.put)
            self._watcher.start()
        for start in self.parts.background:
            start()
        log.info("agent running for node %s (cluster %s)", self.config.node.name, self.config.cluster)
        try:
            while not self._stopping.is_set():
                self._pass()
        finally:
            self._shutdown()

    # --- the loop ---------------------------------------------------------------------------------

    def _pass(self) -> None:
        timeout = min(self.parts.monitor.seconds_until_due(), self.config.health.interval)
        try:
            self._handle(self._inbox.get(timeout=timeout))
            while True:
                self._handle(self._inbox.get_nowait())
        except queue.Empty:
            pass
        if self.parts.guardian is not None:
            self.parts.guardian.heartbeat()
        self._housekeeping()
        self._evaluate()

    def _handle(self, item: FifoMessage | ContainerEvent | StreamConnected | TransitionOutcome) -> None:
        if isinstance(item, FifoMessage):
            log.info("keepalived reports %s (priority %s)", item.state, item.priority)
            self._set_vrrp(item.state)
            self._submit(item.state)
        elif isinstance(item, ContainerEvent):
            log.debug("container event %s for %s", item.action, item.name or item.container_id[:12])
            if self.parts.containers is not None:
                self.parts.containers.note_event(item)
            self.parts.monitor.request(CONTAINERS)
        elif isinstance(item, StreamConnected):
            self.events_connected = True
            self.parts.monitor.request(CONTAINERS)
        else:
            self._next_breaker_read = 0.0
            if item.state is VrrpState.MASTER:
                self._grace_start = self._read_grace_start()

    def _submit(self, state: VrrpState) -> None:
        """Hand a state to the transition runner; MASTER only after a fresh Galera probe passed."""
        if state is VrrpState.MASTER and GALERA in self.parts.monitor.names:
            self.parts.monitor.request(GALERA)
            self.parts.monitor.run_due()
            allow, reason = gate_promote(self.parts.monitor.records.get(GALERA))
            if not allow:
                log.error("keepalived made this node MASTER, but no promote runs: %s", reason)
                self._refused_promote = (f"rejected, {reason}", time.time())
                return
        self.runner.submit(state)

    def _set_vrrp(self, state: VrrpState | None) -> None:
        if state is not self._vrrp_state:
            self._vrrp_state = state
            self._vrrp_since = time.time()
            self._resumed_master = False

    def _housekeeping(self) -> None:
        now = self._clock()
        if now >= self._next_keepalived_check:
            self._next_keepalived_check = now + self.config.health.keepalived_check_interval
            self._keepalived_watch, vanished = note_keepalived(self._keepalived_watch, self.parts.keepalived.running())
            if vanished and self._vrrp_state is not VrrpState.STOP:
                log.error("keepalived is not running: acting as STOP, so this node demotes and serves nothing")
                self._set_vrrp(VrrpState.STOP)
                self.runner.submit(VrrpState.STOP)
        if self._vrrp_state is None and now >= self._next_relearn:
            self._next_relearn = now + RELEARN_INTERVAL
            self._learn_from_dump()

    def _evaluate(self) -> None:
        status = self.runner.current()
        role = derive_role(self._vrrp_state, status, resumed_master=self._resumed_master)
        monitor = self.parts.monitor
        if monitor.set_role(role) and self.parts.containers is not None:
            self.parts.containers.tracker.set_counting(role is Role.MASTER)
        monitor.run_due()
        records = monitor.records
        now = time.time()
        maintenance = self._maintenance.current(now)
        verdict = decide_verdict(
            VerdictInputs(
                role=role,
                records=records,
                maintenance=None
                if maintenance is None or not maintenance.active(now)
                else maintenance_mode.describe(maintenance, now),
                grace=self._in_grace(role, now),
                failed_transition=self._failed_promote(status, now),
                configured=monitor.names,
            )
        )
        override = self.parts.health_override() if self.parts.health_override is not None else None
        if override is not None:
            verdict = Verdict(override[0], f"switchover hold: {override[1]}", verdict.ignored)
        self._apply(verdict)
        self._alert_quorum()
        if role is Role.MASTER:
            self._repair_floating_ips()
        with self._snapshot_lock:
            self._snapshot = build_snapshot(self._view(role=role, maintenance=maintenance, status=status))

    def _apply(self, verdict: Verdict) -> None:
        previous = self._verdict
        if previous is None or (previous.healthy, previous.reason) != (verdict.healthy, verdict.reason):
            self._verdict_since = time.time()
            word = "healthy" if verdict.healthy else "UNHEALTHY"
            ignored = f" (ignored: {', '.join(verdict.ignored)})" if verdict.ignored else ""
            log.log(
                logging.INFO if verdict.healthy else logging.WARNING, "verdict %s: %s%s", word, verdict.reason, ignored
            )
            if previous is not None and previous.decided and verdict.decided and previous.healthy != verdict.healthy:
                self.parts.alerter.send(AlertEvent.HEALTH_CHANGED, f"node is {word.lower()}: {verdict.reason}")
            elif previous is None and verdict.decided and not verdict.healthy and not verdict.recovering:
                self.parts.alerter.send(AlertEvent.HEALTH_CHANGED, f"node is unhealthy: {verdict.reason}")
        self._verdict = verdict
        if not verdict.decided:
            return
        try:
            wrote = self.parts.health_file.ensure(verdict.healthy)
        except KeepalivedError as error:
            # Logged once per failing stretch: the loop retries on every pass.
            if not self._write_failing:
                log.error("%s; keepalived keeps the previous verdict until a write succeeds", error)
            self._write_failing = True
            return
        if self._write_failing:
            log.info("keepalived's track file is writable again")
            self._write_failing = False
        if wrote and self._written == verdict.healthy:
            log.warning("keepalived's track file was changed from outside (a keepalived restart); rewrote it")
        self._written = verdict.healthy

    # --- restart, grace, maintenance, alerts --------------------------------------------------------

    def _resume(self) -> None:
        buffered = [message.state for message in self.fifo.drain()]
        running = self.parts.keepalived.running()
        dumped = self._dump_state() if running and not buffered else None
        plan = plan_resume(buffered, dumped, keepalived_running=running)
        log.info("agent start: %s", plan.reason)
        self._set_vrrp(plan.state)
        self._grace_start = self._read_grace_start()
        if plan.verify_master:
            self._verify_master()
        elif plan.submit and plan.state is not None:
            self._submit(plan.state)

    def _failed_promote(self, status: TransitionStatus, now: float) -> str | None:
        hold = self.config.health.failed_transition_hold
        failed = failed_promote(status, now=now, hold=hold)
        if failed is None and self._refused_promote is not None and now - self._refused_promote[1] < hold:
            return self._refused_promote[0]
        return failed

    def _verify_master(self) -> None:
        """Run the master's probes once and promote only if the service is incomplete."""
        monitor = self.parts.monitor
        monitor.set_role(Role.MASTER)
        results = monitor.run_due()
        failing = sorted(
            f"{result.name}: {result.detail}" for result in results if not result.ok and result.name != GALERA
        )
        promote, reason = plan_master_resume(failing)
        log.info("agent start: %s", reason)
        if promote:
            self._submit(VrrpState.MASTER)
        else:
            self._resumed_master = True

    def _learn_from_dump(self) -> None:
        state = self._dump_state()
        if state is not None:
            plan = plan_resume([], state, keepalived_running=True)
            log.info("learned keepalived's state: %s", plan.reason)
            self._set_vrrp(state)
            if plan.verify_master:
                self._verify_master()
            elif plan.submit:
                self._submit(state)

    def _dump_state(self) -> VrrpState | None:
        try:
            return self.parts.keepalived.dump_state(
                self.config.keepalived.instance, Deadline.after("keepalived data dump", DUMP_TIMEOUT)
            )
        except KeepalivedError as error:
            log.warning("could not read keepalived's state: %s", error)
            return None

    def _read_grace_start(self) -> float | None:
        try:
            return read_failover_start(self.config.paths.state_dir)
        except MailcowHaError as error:
            log.error("failover start time unreadable, no grace period applies: %s", error)
            return None

    def _in_grace(self, role: Role, now: float) -> bool:
        start = self._grace_start
        if role is not Role.MASTER or start is None or now >= start + self.config.health.grace_period:
            return False
        record = self.parts.monitor.records.get(CONTAINERS)
        if record is not None and record.last.ok and record.last.checked_at >= start:
            # The containers passed once since the failover started: the grace period is over.
            self._grace_start = None
            return False
        return True

    def _alert_quorum(self) -> None:
        record = self.parts.monitor.records.get(GALERA)
        if record is None:
            return
        if record.failing and record.last.quorum_lost and not self._quorum_alerted:
            self._quorum_alerted = True
            self.parts.alerter.send(
                AlertEvent.QUORUM_LOST, f"the local Galera member is {record.last.detail}; this node cannot be master"
            )
        elif not record.failing:
            self._quorum_alerted = False

    def _repair_floating_ips(self) -> None:
        probe = self.parts.floating_ips
        record = self.parts.monitor.records.get(FLOATING_IP)
        if probe is None or record is None or record.last.ok or not probe.missing:
            return
        now = self._clock()
        if now < self._next_repair:
            return
        self._next_repair = now + REPAIR_INTERVAL
        for address in probe.floating_ips:
            if str(address) not in probe.missing:
                continue
            try:
                add_address(probe.interface, address, timeout=self.config.health.probe_timeout)
                log.warning("floating IP %s was missing on %s; added it again", address, probe.interface)
            except NetworkInterfaceError as error:
                log.error("floating IP %s is missing on %s and could not be added: %s", address, probe.interface, error)
        self.parts.monitor.request(FLOATING_IP)

    # --- snapshot and shutdown ---------------------------------------------------------------------

    def _view(
        self,
        *,
        role: Role = Role.UNKNOWN,
        maintenance: maintenance_mode.Maintenance | None = None,
        status: TransitionStatus | None = None,
    ) -> AgentView:
        parts = self.parts
        return AgentView(
            config=self.config,
            started_at=self._started_at,
            vrrp_state=self._vrrp_state,
            vrrp_since=self._vrrp_since,
            role=role,
            verdict=self._verdict,
            verdict_since=self._verdict_since,
            records=parts.monitor.records,
            galera=parts.galera,
            containers=parts.containers,
            mount=parts.mount,
            floating_ips=parts.floating_ips,
            maintenance=maintenance,
            transition=status,
            grace_until=None if self._grace_start is None else self._grace_start + self.config.health.grace_period,
            breaker=self._breaker_snapshot(),
            members=() if parts.members is None else parts.members(),
        )

    def _breaker_snapshot(self) -> BreakerSnapshot | None:
        if self.parts.breaker_status is None:
            return None
        now = self._clock()
        if self._breaker is None or now >= self._next_breaker_read:
            self._next_breaker_read = now + BREAKER_REFRESH
            try:
                self._breaker = self.parts.breaker_status()
            except MailcowHaError as error:
                log.error("circuit breaker state unreadable: %s", error)
        return self._breaker

    def _shutdown(self) -> None:
        log.info("agent stopping")
        for close in self.parts.closers:
            try:
                close()
            except Exception:
                log.exception("closing an agent part failed")
        if self._watcher is not None:
            self._watcher.close()
        self.fifo.close()
        if not self.runner.close(timeout=self.config.deadlines.containers_stop):
            log.error("a transition was still running when the agent stopped")
        self.parts.monitor.close()
        if self.parts.guardian is not None:
            self.parts.guardian.close()
        log.info("agent stopped")
