"""The agent's view of keepalived's VRRP state, and how each state reaches the transition runner.

keepalived reports transitions through the FIFO. A data dump shows the state when the agent does
not know it or suspects that it missed a transition. Every state goes to the runner through
`submit`: MASTER first waits for a Galera probe run that started after it arrived, because a
node outside the primary component must not promote. A restarted agent that finds keepalived
MASTER checks the master's probes first and promotes only when the service is incomplete. None
of this waits: the probes run on their workers, and `resolve` hands on what became due at the
main loop's next pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mailcow_ha.adapters.keepalived import FifoMessage, KeepalivedProcess
from mailcow_ha.agent.decisions import (
    KeepalivedWatch,
    derive_role,
    gate_promote,
    note_keepalived,
    plan_master_resume,
    plan_resume,
    plan_resync,
)
from mailcow_ha.agent.keepalived_link import DumpedState, DumpPurpose, KeepalivedLink
from mailcow_ha.config import HealthSettings
from mailcow_ha.failover.transitions import TransitionRunner, TransitionStatus, VrrpState
from mailcow_ha.health.monitor import HealthMonitor
from mailcow_ha.health.verdict import GALERA, Role, probe_counts

log = logging.getLogger(__name__)

RELEARN_INTERVAL = 5.0
"""Seconds between attempts to learn keepalived's state while it is unknown."""


class VrrpFollower:
    """keepalived's state as the agent acts on it; used from the agent's main loop only."""

    def __init__(
        self,
        settings: HealthSettings,
        *,
        monitor: HealthMonitor,
        runner: TransitionRunner,
        link: KeepalivedLink,
        keepalived: KeepalivedProcess,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.monitor = monitor
        self.runner = runner
        self.link = link
        self.keepalived = keepalived
        self._clock = clock
        self.state: VrrpState | None = None
        self.since: float | None = None
        """Wall-clock time of the latest change of `state`."""
        self.resumed_master = False
        """A restarted agent found the master's service complete, so it runs without a promote."""
        self.verifying_master = False
        self.refused_promote: tuple[str, float] | None = None
        """Why MASTER ran no promote (Galera not usable), and when (wall clock)."""
        self._gate: int | None = None
        """While MASTER waits for a fresh Galera probe: the count of Galera results that brings it."""
        self._watch = KeepalivedWatch()
        self._next_keepalived_check = 0.0
        self._next_relearn = 0.0
        self._next_state_check = clock() + settings.keepalived_state_check_interval

    def role(self, status: TransitionStatus) -> Role:
        return derive_role(
            self.state, status, resumed_master=self.resumed_master, verifying_master=self.verifying_master
        )

    def set_state(self, state: VrrpState | None) -> None:
        if state is not self.state:
            self.state = state
            self.since = time.time()
            self.resumed_master = False
            self.verifying_master = False

    def on_message(self, message: FifoMessage) -> None:
        log.info("keepalived reports %s (priority %s)", message.state, message.priority)
        self.set_state(message.state)
        self.submit(message.state)

    def submit(self, state: VrrpState) -> None:
        """Hand a state to the transition runner; MASTER only after a fresh Galera probe passed."""
        if state is VrrpState.MASTER and GALERA in self.monitor.names:
            if self._gate is None:
                self._gate = self.monitor.request_fresh(GALERA)
                log.info("keepalived made this node MASTER; the promote waits for a fresh Galera probe")
            return
        if self._gate is not None:
            log.info("the promote waiting for a fresh Galera probe is dropped: keepalived reported %s", state)
            self._gate = None
        self.runner.submit(state)

    def resume(self) -> None:
        """Act on transitions that waited in the FIFO, or ask keepalived for its state; never wait for it."""
        buffered = [message.state for message in self.link.drain()]
        running = self.keepalived.running()
        if running and not buffered:
            log.info("agent start: asking keepalived for its state")
            self._next_relearn = self._clock() + RELEARN_INTERVAL
            self.link.request_dump(DumpPurpose.LEARN, "the agent started")
            return
        plan = plan_resume(buffered, None, keepalived_running=running)
        log.info("agent start: %s", plan.reason)
        self.set_state(plan.state)
        if plan.submit and plan.state is not None:
            self.submit(plan.state)

    def on_dump(self, dumped: DumpedState) -> None:
        """Learn the state from a data dump, or act on it when it shows a missed transition."""
        if self.state is None:
            if dumped.state is None:
                return
            plan = plan_resume([], dumped.state, keepalived_running=True)
            log.info("learned keepalived's state (%s): %s", dumped.reason, plan.reason)
            self.set_state(dumped.state)
            if plan.verify_master:
                self.verifying_master = True
            elif plan.submit:
                self.submit(dumped.state)
            return
        if dumped.purpose is DumpPurpose.LEARN and dumped.state is None:
            return
        resync = plan_resync(self.state, dumped.state, fifo_quiet=self.link.fifo_quiet_since(dumped.messages_before))
        if resync.retry:
            self.link.request_dump(DumpPurpose.RESYNC, dumped.reason)
        elif resync.act and dumped.state is not None:
            log.warning("%s (checked because %s)", resync.reason, dumped.reason)
            self.set_state(dumped.state)
            self.submit(dumped.state)
        else:
            log.debug("keepalived state check (%s): %s", dumped.reason, resync.reason)

    def housekeeping(self) -> None:
        """Watch the FIFO reader and keepalived's process, and ask for the dumps that are due."""
        self.link.supervise()
        now = self._clock()
        if now >= self._next_keepalived_check:
            self._next_keepalived_check = now + self.settings.keepalived_check_interval
            self._watch, vanished = note_keepalived(self._watch, self.keepalived.running())
            if vanished and self.state is not VrrpState.STOP:
                log.error("keepalived is not running: acting as STOP, so this node demotes and serves nothing")
                self.set_state(VrrpState.STOP)
                self.submit(VrrpState.STOP)
        if self.state is None and now >= self._next_relearn:
            self._next_relearn = now + RELEARN_INTERVAL
            self.link.request_dump(DumpPurpose.LEARN, "keepalived's state is unknown")
        elif self.state is not None and now >= self._next_state_check:
            self._next_state_check = now + self.settings.keepalived_state_check_interval
            self.link.request_dump(DumpPurpose.RESYNC, "the periodic check")

    def resolve(self, role: Role) -> None:
        """Hand on a MASTER whose Galera probe ran, and finish a restarted master's check."""
        self._resolve_gate()
        self._resolve_verify(role)

    def _resolve_gate(self) -> None:
        if self._gate is None or self.monitor.completed(GALERA) < self._gate:
            return
        self._gate = None
        allow, reason = gate_promote(self.monitor.records.get(GALERA))
        if not allow:
            log.error("keepalived made this node MASTER, but no promote runs: %s", reason)
            self.refused_promote = (f"rejected, {reason}", time.time())
            return
        self.runner.submit(VrrpState.MASTER)

    def _resolve_verify(self, role: Role) -> None:
        if not self.verifying_master or role is not Role.MASTER:
            return
        records = self.monitor.records
        expected = [name for name in self.monitor.names if name != GALERA and probe_counts(name, Role.MASTER)]
        if any(name not in records for name in expected):
            return
        self.verifying_master = False
        failing = sorted(f"{name}: {records[name].last.detail}" for name in expected if not records[name].last.ok)
        promote, reason = plan_master_resume(failing)
        log.info("agent start: %s", reason)
        if promote:
            self.submit(VrrpState.MASTER)
        else:
            self.resumed_master = True
