"""The resident node agent: keepalived transitions in, one transition at a time, health verdicts out.

One main loop owns the decisions. Other threads only hand it inputs through a queue: the FIFO
reader (keepalived's transitions), the engine event watcher (container deaths), the transition
runner (outcomes of promote and demote), the probe workers (a run ended) and the keepalived
link (data dumps). Each pass of the loop starts the probes that are due and records those that
ended. Then it derives the node's role and decides the verdict, writes the verdict into
keepalived's track file when the file differs, and publishes a NodeSnapshot for the status API.

The loop never waits for a probe, keepalived, the cloud or a transition: probes run on their
workers, dumps and floating IP repairs on helper threads, promote and demote on the runner's
thread. A pass therefore takes at most `health.interval` (its wait for input) plus its own
work, and every pass sends the guardian a heartbeat. So a promote whose mount waits 22 s for
ext4 multi-mount protection never starves the heartbeat, and the guardian only fires when the
loop itself stops. A transition that hangs is bounded by its own deadlines.

Steady state makes no Hetzner API call: the probes read the engine, Galera, the mount table and
the interface addresses, and only promote, demote and the membership sync talk to the API.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from mailcow_ha.adapters.engine import ContainerEvent
from mailcow_ha.adapters.keepalived import FifoMessage, KeepalivedError
from mailcow_ha.agent.decisions import failed_promote
from mailcow_ha.agent.events import EventWatcher, StreamConnected
from mailcow_ha.agent.keepalived_link import DumpedState, DumpPurpose, FifoReopened, KeepalivedLink
from mailcow_ha.agent.parts import AgentParts, InboxItem, ResyncRequest, Wakeup
from mailcow_ha.agent.repair import FloatingIpRepair
from mailcow_ha.agent.report import AgentView, build_snapshot
from mailcow_ha.agent.snapshot import BreakerSnapshot, NodeSnapshot
from mailcow_ha.agent.vrrp import VrrpFollower
from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.errors import MailcowHaError
from mailcow_ha.failover.history import read_failover_start
from mailcow_ha.failover.transitions import TransitionOutcome, TransitionStatus, VrrpState
from mailcow_ha.health.verdict import CONTAINERS, FLOATING_IP, GALERA, Role, Verdict, VerdictInputs, decide_verdict
from mailcow_ha.ops import maintenance as maintenance_mode

__all__ = ["MAX_ITEMS_PER_PASS", "Agent", "AgentParts"]

log = logging.getLogger(__name__)

BREAKER_REFRESH = 10.0
"""Seconds between two reads of the circuit breaker's state for the snapshot (it reads the history file)."""
MAX_ITEMS_PER_PASS = 100
"""Inbox items one pass handles at most, so that a burst of events cannot delay the heartbeat."""


class Agent:
    """The main loop of one node's agent; `run()` returns when `stop()` is called."""

    def __init__(self, parts: AgentParts, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.parts = parts
        self.config = parts.config
        self._clock = clock
        self._inbox: queue.Queue[InboxItem] = queue.Queue()
        self._stopping = threading.Event()

        self._verdict: Verdict | None = None
        self._verdict_since: float | None = None
        self._written: bool | None = None
        self._quorum_alerted = False
        self._grace_start: float | None = None
        self._write_failing = False
        self._breaker: BreakerSnapshot | None = None
        self._maintenance = maintenance_mode.MaintenanceWatch(self.config.paths.state_dir, parts.alerter)
        self._next_breaker_read = 0.0
        self._snapshot_lock = threading.Lock()
        self._started_at = time.time()

        self.runner = parts.runner_factory(self._inbox.put)
        self.link = KeepalivedLink(self.config, parts.keepalived, self._inbox.put)
        self.vrrp = VrrpFollower(
            self.config.health,
            monitor=parts.monitor,
            runner=self.runner,
            link=self.link,
            keepalived=parts.keepalived,
            clock=clock,
        )
        self._snapshot = build_snapshot(self._view())

        parts.monitor.notify(self._probe_ended)
        self._repair: FloatingIpRepair | None = None
        if parts.floating_ips is not None:
            self._repair = FloatingIpRepair(
                parts.floating_ips,
                timeout=self.config.health.probe_timeout,
                on_done=self._repair_ended,
                clock=clock,
            )
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
        return self.vrrp.state

    def stop(self) -> None:
        """Ask the main loop to finish its pass and return (safe from signal handlers and other threads)."""
        self._stopping.set()
        self._inbox.put(Wakeup("stop"))

    def request_resync(self, reason: str) -> None:
        """Ask the main loop to compare keepalived's state with its own (safe from any thread)."""
        self._inbox.put(ResyncRequest(reason))

    def run(self) -> None:
        """Re-learn keepalived's state, start the helpers, and loop until `stop()`."""
        if self.parts.guardian is not None:
            self.parts.guardian.start()
        self._grace_start = self._read_grace_start()
        self.vrrp.resume()
        self.link.start()
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
            for _ in range(MAX_ITEMS_PER_PASS - 1):
                self._handle(self._inbox.get_nowait())
        except queue.Empty:
            pass
        self._heartbeat()
        self.vrrp.housekeeping()
        self._evaluate()

    def _handle(self, item: InboxItem) -> None:
        if isinstance(item, FifoMessage):
            self.vrrp.on_message(item)
        elif isinstance(item, ContainerEvent):
            log.debug("container event %s for %s", item.action, item.name or item.container_id[:12])
            if self.parts.containers is not None:
                self.parts.containers.note_event(item)
            self.parts.monitor.request(CONTAINERS)
        elif isinstance(item, StreamConnected):
            self.events_connected = True
            self.parts.monitor.request(CONTAINERS)
        elif isinstance(item, TransitionOutcome):
            self._next_breaker_read = 0.0
            if item.state is VrrpState.MASTER:
                self._grace_start = self._read_grace_start()
        elif isinstance(item, DumpedState):
            self.vrrp.on_dump(item)
        elif isinstance(item, FifoReopened | ResyncRequest):
            self.link.request_dump(DumpPurpose.RESYNC, item.reason)
        elif item.probe is not None:
            self.parts.monitor.request(item.probe)

    def _evaluate(self) -> None:
        status = self.runner.current()
        role = self.vrrp.role(status)
        monitor = self.parts.monitor
        if monitor.set_role(role) and self.parts.containers is not None:
            self.parts.containers.tracker.set_counting(role is Role.MASTER)
        monitor.poll()
        self.vrrp.resolve(role)

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

    def _failed_promote(self, status: TransitionStatus, now: float) -> str | None:
        hold = self.config.health.failed_transition_hold
        failed = failed_promote(status, now=now, hold=hold)
        refused = self.vrrp.refused_promote
        if failed is None and refused is not None and now - refused[1] < hold:
            return refused[0]
        return failed

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
        if self._repair is None or probe is None or record is None or record.last.ok:
            return
        self._repair.start(probe.missing)

    def _repair_ended(self) -> None:
        # Called on the repair's thread; the main loop runs the probe again on its next pass.
        self._inbox.put(Wakeup("floating IP repair ended", FLOATING_IP))

    def _probe_ended(self) -> None:
        self._inbox.put(Wakeup("probe run ended"))

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
            vrrp_state=self.vrrp.state,
            vrrp_since=self.vrrp.since,
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
            self._heartbeat()
        if self._watcher is not None:
            self._watcher.close()
        self.link.close()
        if self._repair is not None:
            self._repair.join(self.config.health.probe_timeout)
        self._stop_runner()
        self.parts.monitor.close()
        if self.parts.guardian is not None:
            self.parts.guardian.close()
        log.info("agent stopped")

    def _stop_runner(self) -> None:
        """Stop the runner, waiting up to `deadlines.containers_stop` for a transition still running.

        The wait is cut into slices with a heartbeat after each, because a transition may be in a
        system call (a mount waiting for multi-mount protection) for longer than the guardian waits.
        """
        deadline = self._clock() + self.config.deadlines.containers_stop
        while not self.runner.close(timeout=min(self.config.health.interval, max(0.0, deadline - self._clock()))):
            self._heartbeat()
            if self._clock() >= deadline:
                log.error("a transition was still running when the agent stopped")
                return

    def _heartbeat(self) -> None:
        if self.parts.guardian is not None:
            self.parts.guardian.heartbeat()
