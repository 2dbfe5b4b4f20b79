"""Build the production agent from a node config: probes, the failover core, the status API, the helpers.

    agent = build_agent(config, alerter)
    agent.run()            # until agent.stop()

Tests build `AgentParts` themselves to swap promote and demote or leave parts out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mailcow_ha.adapters.engine import ContainerEvent, Engine
from mailcow_ha.adapters.galera import GaleraClient
from mailcow_ha.adapters.hetzner import HetznerCloud
from mailcow_ha.adapters.keepalived import UNHEALTHY, HealthFile, KeepalivedProcess
from mailcow_ha.agent.events import EventWatcher, StreamConnected
from mailcow_ha.agent.guardian import Guardian
from mailcow_ha.agent.main import Agent, AgentParts
from mailcow_ha.agent.membership import Membership, MembershipSync, load_membership
from mailcow_ha.agent.process import PID_FILE
from mailcow_ha.agent.snapshot import BreakerSnapshot, NodeSnapshot
from mailcow_ha.agent.statusapi import StatusApi
from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.alert_events import Alerter
from mailcow_ha.config import NodeConfig
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import MailcowHaError
from mailcow_ha.failover.lock import TransitionLock
from mailcow_ha.failover.transitions import TransitionCallable, TransitionOutcome, TransitionRunner
from mailcow_ha.failover.wiring import Failover, build_failover
from mailcow_ha.health.containers import ContainerProbe
from mailcow_ha.health.galera import GaleraProbe
from mailcow_ha.health.monitor import HealthMonitor
from mailcow_ha.health.peers import PeersProbe
from mailcow_ha.health.runner import Probe
from mailcow_ha.health.system import FloatingIpProbe, MountProbe
from mailcow_ha.mailcow.galera_ops import local_member, register_galera_actions
from mailcow_ha.mailcow.upgrade import register_upgrade_actions
from mailcow_ha.ops import maintenance as maintenance_mode
from mailcow_ha.ops.switchover_node import SwitchoverParticipant, locked_demote, planned_promote

log = logging.getLogger(__name__)


def build_probes(config: NodeConfig) -> tuple[GaleraProbe, ContainerProbe, MountProbe, FloatingIpProbe]:
    """Build the four probes of a node, each with its own client bounded by `health.probe_timeout`."""
    health = config.health
    galera = GaleraProbe(
        GaleraClient(
            config.galera.socket,
            config.galera.user,
            config.galera.password.get_secret_value(),
            timeout=health.probe_timeout,
        ),
        interval=health.galera_interval,
        desync_tolerance=health.desync_tolerance,
    )
    containers = ContainerProbe(
        Engine(config.paths.docker_socket, request_timeout=health.probe_timeout),
        project=config.mailcow.project_name,
        critical_services=config.mailcow.critical_services,
        interval=health.container_poll_interval,
        tolerance=health.restart_tolerance,
        window=health.restart_window,
        restart_wait=health.restart_wait,
    )
    mount = MountProbe(
        config.paths.mount_point,
        config.volume_device,
        cluster=config.cluster,
        volume_id=config.hetzner.shared_volume_id,
        interval=health.system_interval,
    )
    floating_ips = FloatingIpProbe(
        config.node.public_interface, config.hetzner.floating_ips, interval=health.system_interval
    )
    return galera, containers, mount, floating_ips


def build_peers_probe(config: NodeConfig, members: CachedMembership) -> PeersProbe:
    """Build the probe that keeps a standby out of the election until every member lists it."""

    def others() -> list[tuple[str, str]]:
        return [(member.name, member.private_ip) for member in members.get().members]

    return PeersProbe(
        config.node.name,
        others,
        StatusClient.from_config(config, timeout=config.health.probe_timeout),
        interval=config.health.system_interval,
    )


def build_agent(
    config: NodeConfig,
    alerter: Alerter,
    *,
    initially_failing: bool | None = None,
    transitions: tuple[TransitionCallable, TransitionCallable] | None = None,
) -> Agent:
    """Wire the production agent: real adapters, the failover core, switchover, Galera actions, status API.

    `transitions` replaces the failover core's promote and demote (and with them switchover and
    the breaker) by the given pair, for benchmarks that measure the agent alone.
    """
    health_file = HealthFile(config.paths.health_file)
    if initially_failing is None:
        initially_failing = health_file.read() == UNHEALTHY
    galera, containers, mount, floating_ips = build_probes(config)
    members = CachedMembership(config)
    probes: list[Probe] = [galera, containers, mount, floating_ips, build_peers_probe(config, members)]
    monitor = HealthMonitor(probes, config.health, initially_failing=initially_failing)
    agent_holder: list[Agent] = []

    def node_snapshot() -> NodeSnapshot:
        # The participant needs the agent's snapshot, and the agent needs the participant's hold.
        return agent_holder[0].snapshot()

    failover: Failover | None = None
    participant: SwitchoverParticipant | None = None
    run_promote: TransitionCallable
    run_demote: TransitionCallable
    if transitions is None:
        failover = build_failover(config, alerter)
        participant = SwitchoverParticipant(
            config.node.name, snapshot=node_snapshot, demote=locked_demote(config, failover)
        )
        run_promote = participant.wrap_promote(failover.promote, planned_promote(failover))
        run_demote = failover.demote
    else:
        run_promote, run_demote = transitions

    def runner_factory(on_outcome: Callable[[TransitionOutcome], None]) -> TransitionRunner:
        return TransitionRunner(
            run_promote,
            run_demote,
            lock=TransitionLock.in_run_dir(config.paths.run_dir),
            lock_timeout=config.deadlines.transition_lock,
            on_outcome=on_outcome,
        )

    def events(on_event: Callable[[ContainerEvent | StreamConnected], None]) -> EventWatcher:
        engine = Engine(config.paths.docker_socket, request_timeout=config.deadlines.engine_request)
        return EventWatcher(engine, config.mailcow.project_name, on_event)

    def member_addresses() -> list[str]:
        return [member.private_ip for member in members.get().members]

    def member_names() -> tuple[str, ...]:
        return tuple(member.name for member in members.get().members)

    parts = AgentParts(
        config=config,
        monitor=monitor,
        runner_factory=runner_factory,
        health_file=health_file,
        keepalived=KeepalivedProcess(config.paths.keepalived_pid_file, config.paths.keepalived_data_file),
        alerter=alerter,
        galera=galera,
        containers=containers,
        mount=mount,
        floating_ips=floating_ips,
        events=events,
        guardian=build_guardian(config),
        health_override=None if participant is None else participant.health_override,
        breaker_status=None if failover is None else _breaker_source(failover, config),
        members=member_names,
    )
    agent = Agent(parts)
    agent_holder.append(agent)

    api = StatusApi.from_config(config, agent.snapshot, allowed_clients=member_addresses)
    if participant is not None:
        demote_timeout = config.deadlines.containers_stop + config.deadlines.holders_term + 30.0
        participant.register(api, demote_timeout=demote_timeout)
    register_galera_actions(api, local_member(config))
    register_upgrade_actions(api, config)
    api.register_action(
        maintenance_mode.ACTION,
        maintenance_mode.action_handler(config.paths.state_dir, config.node.name),
        summary="switch this node's maintenance mode on (for a number of seconds) or off",
        timeout=5.0,
    )
    parts.status_api = api
    parts.background.append(api.start)
    parts.closers.append(api.stop)

    if config.membership.enabled:
        sync = PeriodicSync(
            MembershipSync(config, HetznerCloud(config.hetzner)),
            config.membership.sync_interval,
            on_reload=lambda: agent.request_resync("the membership sync reloaded keepalived"),
        )
        parts.background.append(sync.start)
        parts.closers.append(sync.close)
    parts.closers.append(galera.client.close)
    parts.closers.append(containers.engine.close)
    if failover is not None:
        parts.closers.append(failover.close)
    return agent


def build_guardian(config: NodeConfig) -> Guardian:
    """Return the guardian that puts the node in FAULT when this agent hangs or dies."""
    return Guardian(
        health_file=config.paths.health_file,
        pid_file=config.paths.run_dir / PID_FILE,
        timeout=config.health.watchdog_timeout,
        restart_delay=config.keepalived.agent_restart_delay,
    )


def _breaker_source(failover: Failover, config: NodeConfig) -> Callable[[], BreakerSnapshot]:
    return lambda: breaker_snapshot(failover, config)


def breaker_snapshot(failover: Failover, config: NodeConfig) -> BreakerSnapshot:
    status = failover.breaker.status()
    return BreakerSnapshot(
        tripped=status.tripped,
        open=status.open,
        closes_at=status.closes_at,
        failovers_in_window=len(status.counted),
        window=config.breaker.window,
        detail=status.reason,
    )


class CachedMembership:
    """The stored members, re-read at most every `max_age` seconds, because every loop pass reads them."""

    def __init__(self, config: NodeConfig, max_age: float = 10.0) -> None:
        self.config = config
        self.max_age = max_age
        self._lock = threading.Lock()
        self._value: Membership | None = None
        self._read_at = 0.0

    def get(self) -> Membership:
        with self._lock:
            now = time.monotonic()
            if self._value is None or now - self._read_at >= self.max_age:
                self._value = load_membership(self.config)
                self._read_at = now
            return self._value


class PeriodicSync:
    """Runs the membership sync on its own thread every `interval` seconds, first after one interval.

    A sync costs one API request, and a slow API must not delay the agent's main loop.
    """

    def __init__(self, sync: MembershipSync, interval: float, *, on_reload: Callable[[], None] | None = None) -> None:
        self.sync = sync
        self.interval = interval
        self.on_reload = on_reload
        """Called after a sync reloaded keepalived, which may have replaced its FIFO."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mailcow-ha-membership", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            started = time.monotonic()
            try:
                result = self.sync.sync(Deadline.after("membership sync", min(self.interval, 60.0)))
            except MailcowHaError as error:
                log.error("membership sync failed: %s; next try in %.0f s", error, self.interval)
                continue
            log.debug("membership sync took %.2f s: %s", time.monotonic() - started, result.reason)
            if result.reloaded and self.on_reload is not None:
                self.on_reload()
