"""Build promote and demote from a node config, wired to the real adapters.

    failover = build_failover(config, alerter)
    runner = build_runner(config, failover, on_outcome=...)
    runner.submit(VrrpState.MASTER)

The agent uses `build_runner`; the `mailcow-ha promote` / `demote` commands call
`failover.promoter` and `failover.demoter` directly under the transition lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mailcow_ha.adapters.engine import Engine
from mailcow_ha.adapters.hetzner import HetznerCloud
from mailcow_ha.agent.membership import load_membership
from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.alert_events import Alerter
from mailcow_ha.config import NodeConfig
from mailcow_ha.deadline import Clock
from mailcow_ha.failover.breaker import CircuitBreaker
from mailcow_ha.failover.containers import ProjectContainers
from mailcow_ha.failover.demote import Demoter
from mailcow_ha.failover.history import HistoryStore, RecordKind
from mailcow_ha.failover.lock import TransitionLock
from mailcow_ha.failover.promote import CloudOperations, Promoter
from mailcow_ha.failover.release import Holder, HolderReport, ReleaseWaiter
from mailcow_ha.failover.storage import SharedVolume
from mailcow_ha.failover.transitions import CancelToken, OutcomeCallback, TransitionRunner
from mailcow_ha.health.verdict import MOUNT


@dataclass
class Failover:
    """Promote and demote of one node, with the parts they share."""

    config: NodeConfig
    promoter: Promoter
    demoter: Demoter
    breaker: CircuitBreaker
    history: HistoryStore
    engine: Engine

    def promote(self, token: CancelToken) -> None:
        """Run an automatic promote (the transition runner's `run_promote`)."""
        self.promoter.run(token, kind=RecordKind.FAILOVER)

    def demote(self, token: CancelToken) -> None:
        """Run a demote (the transition runner's `run_demote`)."""
        self.demoter.run(token, reason=token.trigger or "demote requested")

    def close(self) -> None:
        self.engine.close()


def build_failover(
    config: NodeConfig,
    alerter: Alerter,
    *,
    cloud: CloudOperations | None = None,
    engine: Engine | None = None,
    clock: Clock = time.monotonic,
    wall_clock: Clock = time.time,
) -> Failover:
    """Wire promote and demote for `config`; `cloud` and `engine` default to the real adapters."""
    if cloud is None:
        cloud = HetznerCloud(config.hetzner)
    if engine is None:
        engine = Engine(config.paths.docker_socket, request_timeout=config.deadlines.engine_request)
    state_dir = config.paths.state_dir
    history = HistoryStore(state_dir, clock=wall_clock)
    breaker = CircuitBreaker(state_dir, config.breaker, history, alerter, clock=wall_clock)
    volume = SharedVolume(config, member_names=lambda: member_names(config), clock=clock)
    containers = ProjectContainers(engine, config.mailcow.project_name, config.mailcow.critical_services)
    demoter = Demoter(config, volume=volume, containers=containers, history=history, alerter=alerter, clock=clock)
    promoter = Promoter(
        config,
        cloud=cloud,
        volume=volume,
        containers=containers,
        demoter=demoter,
        breaker=breaker,
        history=history,
        alerter=alerter,
        release=build_release_waiter(config, clock=clock),
        stored_server_id=lambda: load_membership(config).server_id,
        clock=clock,
        wall_clock=wall_clock,
    )
    return Failover(config, promoter, demoter, breaker, history, engine)


def member_names(config: NodeConfig) -> list[str]:
    """Return the names of the cluster's members as last learned (members.json, else the config's peers)."""
    return [member.name for member in load_membership(config).members]


def build_release_waiter(config: NodeConfig, *, clock: Clock = time.monotonic) -> ReleaseWaiter:
    """Return the release wait, which requests the holder's state from the holder's status API."""

    def locate(server_id: int) -> Holder | None:
        for member in load_membership(config).members:
            if member.server_id == server_id:
                return Holder(server_id, member.name, member.private_ip)
        return None

    def fetch(holder: Holder, timeout: float) -> HolderReport:
        client = StatusClient.from_config(config, timeout=timeout)
        snapshot = client.status(holder.address, node=holder.name)
        transition = snapshot.transition
        probe = next((probe for probe in snapshot.probes if probe.name == MOUNT), None)
        return HolderReport(
            node=snapshot.node,
            mounted=None if snapshot.mount is None else snapshot.mount.mounted,
            vrrp_state=snapshot.vrrp_state,
            transition_running=None if transition is None else transition.running,
            last_state=None if transition is None else transition.last_state,
            last_outcome=None if transition is None else transition.last_outcome,
            transition_started_at=None if transition is None else transition.started_at,
            last_finished_at=None if transition is None else transition.last_finished_at,
            # The probe reads the mount table when it starts; checked_at is when it ended.
            mount_read_at=None if probe is None else probe.checked_at - probe.duration,
        )

    return ReleaseWaiter(locate=locate, fetch=fetch, request_timeout=config.deadlines.release_request, clock=clock)


def build_runner(
    config: NodeConfig, failover: Failover, *, on_outcome: OutcomeCallback | None = None
) -> TransitionRunner:
    """Return a TransitionRunner running `failover` under the node's transition lock."""
    return TransitionRunner(
        failover.promote,
        failover.demote,
        lock=TransitionLock.in_run_dir(config.paths.run_dir),
        lock_timeout=config.deadlines.transition_lock,
        on_outcome=on_outcome,
    )
