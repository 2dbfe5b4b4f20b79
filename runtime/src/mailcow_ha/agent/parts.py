"""The agent's parts (`AgentParts`) and the items its main loop reads from its inbox."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mailcow_ha.adapters.engine import ContainerEvent
from mailcow_ha.adapters.keepalived import FifoMessage, HealthFile, KeepalivedProcess
from mailcow_ha.agent.events import EventWatcher, StreamConnected
from mailcow_ha.agent.guardian import Guardian
from mailcow_ha.agent.keepalived_link import DumpedState, FifoReopened
from mailcow_ha.agent.snapshot import BreakerSnapshot
from mailcow_ha.agent.statusapi import StatusApi
from mailcow_ha.alert_events import Alerter
from mailcow_ha.config import NodeConfig
from mailcow_ha.failover.transitions import TransitionOutcome, TransitionRunner
from mailcow_ha.health.containers import ContainerProbe
from mailcow_ha.health.galera import GaleraProbe
from mailcow_ha.health.monitor import HealthMonitor
from mailcow_ha.health.system import FloatingIpProbe, MountProbe

HealthOverride = Callable[[], "tuple[bool, str] | None"]


@dataclass(frozen=True)
class Wakeup:
    """Wakes the main loop: a probe run or a floating IP repair ended."""

    reason: str
    probe: str | None = None
    """A probe to make due now."""


@dataclass(frozen=True)
class ResyncRequest:
    """Asks the main loop to compare keepalived's state with its own (for example after a reload)."""

    reason: str


InboxItem = (
    FifoMessage
    | ContainerEvent
    | StreamConnected
    | TransitionOutcome
    | DumpedState
    | FifoReopened
    | Wakeup
    | ResyncRequest
)


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
    status_api: StatusApi | None = None
    """The node's status API, whose actions the operator commands call."""
