"""Turn the agent's live state into the immutable NodeSnapshot that the status API serves."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailcow_ha import __version__
from mailcow_ha.agent.snapshot import (
    BreakerSnapshot,
    ContainerSnapshot,
    GaleraSnapshot,
    MaintenanceSnapshot,
    MountSnapshot,
    NodeSnapshot,
    ProbeSnapshot,
    TransitionSnapshot,
)
from mailcow_ha.config import NodeConfig
from mailcow_ha.failover.transitions import TransitionResult, TransitionStatus, VrrpState
from mailcow_ha.health.verdict import MOUNT, ProbeRecord, Role, Verdict, probe_counts
from mailcow_ha.ops.maintenance import Maintenance

if TYPE_CHECKING:
    from mailcow_ha.health.containers import ContainerProbe
    from mailcow_ha.health.galera import GaleraProbe
    from mailcow_ha.health.system import FloatingIpProbe, MountProbe

_OUTCOME_WORDS = {
    TransitionResult.SUCCEEDED: "ok",
    TransitionResult.FAILED: "failed",
    TransitionResult.REFUSED: "failed",
    TransitionResult.SUPERSEDED: "superseded",
}


@dataclass(frozen=True)
class AgentView:
    """The agent's state after one pass of its loop."""

    config: NodeConfig
    started_at: float
    vrrp_state: VrrpState | None
    vrrp_since: float | None
    role: Role
    verdict: Verdict | None
    verdict_since: float | None
    records: Mapping[str, ProbeRecord]
    galera: GaleraProbe | None = None
    containers: ContainerProbe | None = None
    mount: MountProbe | None = None
    floating_ips: FloatingIpProbe | None = None
    maintenance: Maintenance | None = None
    transition: TransitionStatus | None = None
    grace_until: float | None = None
    breaker: BreakerSnapshot | None = None
    members: tuple[str, ...] = ()
    now: Callable[[], float] = time.time


def build_snapshot(view: AgentView) -> NodeSnapshot:
    now = view.now()
    config = view.config
    verdict = view.verdict
    return NodeSnapshot(
        cluster=config.cluster,
        node=config.node.name,
        node_index=config.node.index,
        private_ip=str(config.node.private_ip),
        agent_version=__version__,
        agent_started_at=view.started_at,
        taken_at=now,
        vrrp_state="UNKNOWN" if view.vrrp_state is None else str(view.vrrp_state),
        vrrp_state_since=view.vrrp_since,
        healthy=verdict is not None and verdict.decided and verdict.healthy,
        reason="agent starting" if verdict is None else verdict.reason,
        verdict_since=view.verdict_since,
        grace_until=view.grace_until if view.grace_until is not None and view.grace_until > now else None,
        probes=tuple(_probe(name, record, view.role) for name, record in sorted(view.records.items())),
        galera=_galera(view.galera),
        containers=_containers(view.containers),
        mount=_mount(view),
        floating_ips_expected=tuple(str(address) for address in config.hetzner.floating_ips),
        floating_ips_on_interface=() if view.floating_ips is None else view.floating_ips.present,
        maintenance=_maintenance(view.maintenance, now),
        breaker=view.breaker,
        transition=_transition(view.transition),
        members=view.members,
    )


def _probe(name: str, record: ProbeRecord, role: Role) -> ProbeSnapshot:
    return ProbeSnapshot(
        name=name,
        ok=record.last.ok,
        detail=record.last.detail,
        counted=probe_counts(name, role),
        consecutive_failures=record.failures,
        consecutive_successes=record.successes,
        duration=round(record.last.duration, 4),
        checked_at=record.last.checked_at,
    )


def _galera(probe: GaleraProbe | None) -> GaleraSnapshot:
    if probe is None:
        return GaleraSnapshot(error="not probed")
    status = probe.last_status
    if status is None:
        return GaleraSnapshot(error=probe.last_error or "not probed yet")
    return GaleraSnapshot(
        reachable=True,
        ready=status.ready,
        cluster_status=status.cluster_status,
        local_state=status.local_state,
        cluster_size=status.cluster_size,
        cluster_uuid=status.cluster_uuid,
        last_committed=status.last_committed,
    )


def _containers(probe: ContainerProbe | None) -> tuple[ContainerSnapshot, ...]:
    if probe is None:
        return ()
    restarts = {state.service: state.restarts for state in probe.last_states}
    return tuple(
        ContainerSnapshot(
            service=container.service,
            name=container.name,
            status=container.status,
            health=container.health,
            restarts_in_window=restarts.get(container.service, 0),
        )
        for container in probe.last_containers
    )


def _mount(view: AgentView) -> MountSnapshot | None:
    if view.mount is None:
        return None
    record = view.records.get(MOUNT)
    marker_ok = view.role is Role.MASTER and record is not None and record.last.ok
    detail = "" if record is None else record.last.detail
    return MountSnapshot(str(view.mount.mount_point), view.mount.mounted, marker_ok, detail)


def _maintenance(maintenance: Maintenance | None, now: float) -> MaintenanceSnapshot:
    if maintenance is None:
        return MaintenanceSnapshot()
    active = maintenance.active(now)
    return MaintenanceSnapshot(
        active=active,
        since=maintenance.since,
        expires_at=maintenance.expires_at,
        reason=maintenance.reason,
        expired_unnoticed=not active,
    )


def _transition(status: TransitionStatus | None) -> TransitionSnapshot | None:
    if status is None:
        return None
    running = status.running
    last = status.last
    return TransitionSnapshot(
        running=None if running is None else str(running.state),
        started_at=None if running is None else running.started_at,
        last_state=None if last is None else str(last.state),
        last_outcome=None if last is None else _OUTCOME_WORDS[last.result],
        last_finished_at=None if last is None else last.finished_at,
        last_error=None if last is None or last.succeeded else last.message,
    )
