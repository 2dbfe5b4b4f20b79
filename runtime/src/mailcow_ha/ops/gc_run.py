"""Run garbage collection on this node: read GcInputs, plan with `ops.gc`, execute or print the plan.

The run holds the transition lock, taken without waiting: when a promote, demote or another
GC holds it, this run does nothing. The node's role comes from its agent's snapshot, or from
keepalived's data dump when the agent does not respond. The cloud API is read only on the master
(two or three requests a minute with the default timer), and other members are asked for their
state only before the volume would be taken back. While the agent responds, these reads happen
before the lock is taken, so a hanging API never holds back a promote or demote of this node.
A dry run takes no lock at all, and leaves corrupt state files where they are: they show up as
notes in its report.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailcow_ha import state
from mailcow_ha.adapters import blockdev
from mailcow_ha.agent.snapshot import NodeSnapshot
from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.alert_events import Alerter, AlertEvent
from mailcow_ha.alert_ratelimit import SUBJECT_DETAIL
from mailcow_ha.config import NodeConfig
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import MailcowHaError
from mailcow_ha.failover.history import HistoryStore, RecordKind, RecordOutcome
from mailcow_ha.failover.lock import LockTimeout, TransitionLock, current_holder
from mailcow_ha.ops import fsgrow
from mailcow_ha.ops.gc import (
    ActionKind,
    CloudView,
    EarlyCloud,
    GcAction,
    GcInputs,
    GcPlan,
    Role,
    StaleFile,
    plan_gc,
    role_mark,
    role_of,
    transition_running,
)
from mailcow_ha.ops.gc_files import find_stale_files, read_started_at, remove_file
from mailcow_ha.ops.maintenance import describe, read_maintenance
from mailcow_ha.ops.status import fetch_snapshots, members_of

if TYPE_CHECKING:
    from mailcow_ha.adapters.hetzner import HetznerCloud
    from mailcow_ha.failover.wiring import Failover

log = logging.getLogger(__name__)

KEEPALIVED_DUMP_TIMEOUT = 3.0
ROLE_WATCH_INTERVAL = 0.5


@dataclass
class GcOutcome:
    """One planned action and what became of it: planned (dry run), done or failed."""

    action: GcAction
    result: str
    detail: str = ""


@dataclass
class GcReport:
    plan: GcPlan
    outcomes: list[GcOutcome] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(outcome.result == "failed" for outcome in self.outcomes)


class GarbageCollector:
    """GC for one node. Adapters are built lazily, so a dry run on a standby touches no cloud API."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        alerter: Alerter,
        client: StatusClient,
        cloud: Callable[[], HetznerCloud] | None = None,
        failover: Callable[[], Failover] | None = None,
        running_services: Callable[[], tuple[str, ...]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._alerter = alerter
        self._client = client
        self._cloud_factory = cloud or self._default_cloud
        self._failover_factory = failover or self._default_failover
        self._running_services = running_services or self._engine_running_services
        self._clock = clock
        self._cloud: HetznerCloud | None = None
        self._failover: Failover | None = None
        self._history = HistoryStore(config.paths.state_dir)
        self._move_corrupt = True
        """False during a dry run: corrupt state files are reported and left in place."""

    def run(self, *, dry_run: bool) -> GcReport:
        """Run one GC pass under the transition lock; with `dry_run`, only plan, without the lock.

        The cloud API is read before the lock is taken, because a hanging API would otherwise
        hold a promote or demote of this node back for up to three request timeouts.
        """
        lock = TransitionLock.in_run_dir(self.config.paths.run_dir)
        self._move_corrupt = not dry_run
        if dry_run:
            holder = current_holder(lock.path)
            if holder is not None:
                return GcReport(GcPlan((), (f"nothing done: a transition is running (held by {holder.describe()})",)))
            return self._report(self.read_inputs(), dry_run=True)

        early = self._read_cloud_early()
        try:
            lock.acquire("gc", 0.0)
        except LockTimeout as error:
            return GcReport(GcPlan((), (f"nothing done: a transition is running ({error})",)))
        try:
            return self._report(self.read_inputs(early), dry_run=False)
        finally:
            lock.release()
            if self._failover is not None:
                self._failover.close()

    def _report(self, inputs: GcInputs, *, dry_run: bool) -> GcReport:
        plan = plan_gc(inputs)
        for note in plan.notes:
            log.info("gc: %s", note)
        report = GcReport(plan)
        for action in plan.actions:
            if dry_run:
                report.outcomes.append(GcOutcome(action, "planned"))
                continue
            report.outcomes.append(self._execute(action))
        return report

    # --- reading ------------------------------------------------------------------------------

    def _read_cloud_early(self) -> EarlyCloud | None:
        """Read the cloud's holders while this node's agent reports an idle MASTER, without the lock."""
        snapshot = self._own_snapshot()
        if snapshot is None or snapshot.vrrp_state != "MASTER" or transition_running(snapshot):
            return None
        cloud = self._cloud_view()
        peers_busy = None
        if cloud is not None and cloud.volume_holder != cloud.server_id:
            peers_busy = self._peers_busy()
        return EarlyCloud(role_mark(snapshot), cloud, peers_busy)

    def read_inputs(self, early: EarlyCloud | None = None) -> GcInputs:
        """Read everything GC decides from. `early` is used when the node's role did not change since it was read."""
        snapshot = self._own_snapshot()
        role, role_source, busy = self._role(snapshot)
        problems: list[str] = []
        maintenance = self._maintenance(problems)
        mounted = bool(blockdev.mounts_at(self.config.paths.mount_point, blockdev.read_mountinfo()))
        services = self._services()
        history = self._history.read(move_corrupt=self._move_corrupt)
        if history.problem is not None:
            problems.append(history.problem)
        interrupted = sum(1 for r in history.records if r.outcome is RecordOutcome.RUNNING)
        membership_problem = self._membership_problem()
        if membership_problem is not None:
            problems.append(membership_problem)
        stale_files = tuple(self._stale_files(problems))
        cloud = None
        peers_busy = None
        if role is Role.MASTER and busy is None:
            if early is not None and snapshot is not None and early.role_mark == role_mark(snapshot):
                cloud, peers_busy = early.cloud, early.peers_busy
            else:
                cloud = self._cloud_view()
                if cloud is not None and cloud.volume_holder != cloud.server_id:
                    peers_busy = self._peers_busy()
        return GcInputs(
            node=self.config.node.name,
            role=role,
            role_source=role_source,
            busy=busy,
            maintenance=maintenance,
            volume_mounted=mounted,
            running_services=services,
            interrupted_records=interrupted,
            stale_files=stale_files,
            grow=tuple(self._grow_candidates(role, mounted)),
            cloud=cloud,
            peers_busy=peers_busy,
            state_problems=tuple(problems),
        )

    def _own_snapshot(self) -> NodeSnapshot | None:
        try:
            return self._client.status(str(self.config.node.private_ip), node=self.config.node.name)
        except MailcowHaError as error:
            log.info("gc: this node's agent did not respond (%s); asking keepalived", error)
            return None

    def _role(self, snapshot: NodeSnapshot | None) -> tuple[Role, str, str | None]:
        if snapshot is not None:
            busy = None
            if snapshot.transition is not None and transition_running(snapshot):
                busy = f"the agent runs a transition to {snapshot.transition.running}"
            return role_of(snapshot.vrrp_state), f"agent reports {snapshot.vrrp_state}", busy
        from mailcow_ha.adapters.keepalived import KeepalivedProcess  # noqa: PLC0415 (only without an agent)

        keepalived = KeepalivedProcess(self.config.paths.keepalived_pid_file, self.config.paths.keepalived_data_file)
        try:
            if keepalived.pid() is None:
                return Role.STANDBY, "keepalived is not running, so this node is not MASTER", None
            deadline = Deadline.after("keepalived data dump", KEEPALIVED_DUMP_TIMEOUT)
            vrrp_state = keepalived.dump_state(self.config.keepalived.instance, deadline)
        except MailcowHaError as error:
            return Role.UNKNOWN, f"agent unreachable and keepalived unreadable: {error}", None
        if vrrp_state is None:
            return Role.UNKNOWN, "agent unreachable and keepalived's dump has no state", None
        return role_of(str(vrrp_state)), f"keepalived reports {vrrp_state}", None

    def _maintenance(self, problems: list[str]) -> str | None:
        maintenance, problem = read_maintenance(self.config.paths.state_dir, move_corrupt=self._move_corrupt)
        if problem:
            problems.append(problem)
        now = self._clock()
        if maintenance is None or not maintenance.active(now):
            return None
        return describe(maintenance, now)

    def _services(self) -> tuple[str, ...] | None:
        try:
            return self._running_services()
        except MailcowHaError as error:
            log.warning("gc: running containers unknown: %s", error)
            return None

    def _engine_running_services(self) -> tuple[str, ...]:
        from mailcow_ha.adapters.engine import Engine  # noqa: PLC0415 (docker costs 0.13 s to import)

        engine = Engine(self.config.paths.docker_socket, request_timeout=self.config.deadlines.engine_request)
        try:
            containers = engine.project_containers(self.config.mailcow.project_name)
        finally:
            engine.close()
        return tuple(sorted({c.service for c in containers if c.running}))

    def _stale_files(self, problems: list[str]) -> Iterator[StaleFile]:
        paths = self.config.paths
        grace = self.config.health.grace_period + self.config.deadlines.promote
        start_file = paths.state_dir / state.FAILOVER_START_FILE
        grace_file = None
        started, problem = read_started_at(start_file, move_corrupt=self._move_corrupt)
        if problem is not None:
            problems.append(problem)
        if started is not None:
            grace_file = (start_file, started + grace)
        keep = {paths.health_file.name, paths.keepalived_fifo.name}
        yield from find_stale_files(
            [paths.state_dir, paths.run_dir], now=self._clock(), keep_files=keep, grace_file=grace_file
        )

    def _grow_candidates(self, role: Role, mounted: bool) -> Iterator[fsgrow.GrowCandidate]:
        entries = blockdev.read_mountinfo()
        targets = [("database volume", self.config.galera.data_dir)]
        if role is Role.MASTER and mounted:
            targets.append(("shared volume", self.config.paths.mount_point))
        for label, path in targets:
            entry = fsgrow.mount_containing(path, entries)
            if entry is None or entry.mount_point == "/":
                continue
            try:
                candidate = fsgrow.candidate_for(label, entry)
            except MailcowHaError as error:
                log.warning("gc: size of the %s unknown: %s", label, error)
                continue
            if candidate is not None:
                yield candidate

    def _cloud_view(self) -> CloudView | None:
        settings = self.config.hetzner
        try:
            cloud = self._cloud_api()
            deadline = Deadline.after("reading holders for gc", settings.request_timeout * 3)
            server_id = settings.server_id or self._server_id(cloud, deadline)
            holders = cloud.holders(deadline)
        except MailcowHaError as error:
            log.warning("gc: cloud holders unavailable: %s", error)
            return None
        names = {member.server_id: member.name for member in self._members() if member.server_id is not None}
        names.setdefault(server_id, self.config.node.name)
        return CloudView(
            server_id=server_id,
            floating_ips=dict(holders.floating_ips),
            volume_id=settings.shared_volume_id,
            volume_holder=holders.volumes.get(settings.shared_volume_id),
            names=names,
        )

    def _members(self) -> list[Any]:
        from mailcow_ha.agent.membership import load_membership  # noqa: PLC0415

        return list(load_membership(self.config, move_corrupt=self._move_corrupt).members)

    def _membership_problem(self) -> str | None:
        from mailcow_ha.agent.membership import load_membership  # noqa: PLC0415

        return load_membership(self.config, move_corrupt=self._move_corrupt).problem

    def _server_id(self, cloud: HetznerCloud, deadline: Deadline) -> int:
        for member in self._members():
            if member.name == self.config.node.name and member.server_id is not None:
                return int(member.server_id)
        return cloud.server_id_by_name(self.config.node.name, deadline)

    def _peers_busy(self) -> str | None:
        members = members_of(self.config, move_corrupt=self._move_corrupt)
        others = [m for m in members if m.name != self.config.node.name]
        for status in fetch_snapshots(self._client, others):
            snapshot = status.snapshot
            if snapshot is None:
                continue
            if snapshot.vrrp_state == "MASTER":
                return f"{status.name} is MASTER too"
            if snapshot.transition is not None and snapshot.transition.running == "MASTER":
                return f"{status.name} is promoting"
        return None

    # --- executing ----------------------------------------------------------------------------

    def _execute(self, action: GcAction) -> GcOutcome:
        log.info("gc: %s %s: %s", action.kind, action.subject, action.reason)
        try:
            detail = self._perform(action)
        except MailcowHaError as error:
            log.error("gc: %s %s failed: %s", action.kind, action.subject, error)
            if action.kind not in (ActionKind.REMOVE_FILE, ActionKind.CLOSE_RECORDS):
                self._alert(AlertEvent.DRIFT, action, f"gc could not repair it: {action.reason}: {error}")
            return GcOutcome(action, "failed", str(error))
        if action.kind is ActionKind.REPORT_DRIFT:
            self._alert(AlertEvent.DRIFT, action, action.reason)
        elif action.kind not in (ActionKind.REMOVE_FILE, ActionKind.CLOSE_RECORDS):
            self._alert(AlertEvent.GC_REPAIRED, action, f"{detail}: {action.reason}")
        return GcOutcome(action, "done", detail)

    def _alert(self, event: AlertEvent, action: GcAction, reason: str) -> None:
        self._alerter.send(event, reason, {SUBJECT_DETAIL: f"{action.kind} {action.subject}", "action": action.kind})

    def _perform(self, action: GcAction) -> str:
        handlers: dict[ActionKind, Callable[[], str]] = {
            ActionKind.REMOVE_FILE: lambda: remove_file(Path(action.subject)),
            ActionKind.CLOSE_RECORDS: lambda: f"closed {len(self._history.close_interrupted())} record(s)",
            ActionKind.GROW_FILESYSTEM: lambda: self._grow(action.subject),
            ActionKind.DEMOTE_STANDBY: lambda: self._demote(action.reason),
            ActionKind.ASSIGN_FLOATING_IPS: self._assign_floating_ips,
            ActionKind.REPROMOTE: lambda: self._repromote(action.reason),
            ActionKind.REPORT_DRIFT: lambda: "reported",
        }
        return handlers[action.kind]()

    def _demote(self, reason: str) -> str:
        done = self._failover_core().demoter.run(None, reason=f"gc: {reason}")
        return "demoted: " + ("; ".join(done) or "nothing left to do")

    def _grow(self, mount_point: str) -> str:
        entry = fsgrow.mount_containing(Path(mount_point), blockdev.read_mountinfo())
        if entry is None or entry.mount_point != mount_point:
            raise MailcowHaError(f"{mount_point} is no longer mounted; nothing grown")
        candidate = fsgrow.candidate_for("file system", entry)
        if candidate is None:
            raise MailcowHaError(f"{mount_point} is not ext4 on a block device; nothing grown")
        before = candidate.filesystem_bytes
        after = fsgrow.grow(candidate)
        return f"grew {mount_point} from {before / 2**30:.2f} GiB to {after / 2**30:.2f} GiB"

    def _assign_floating_ips(self) -> str:
        cloud = self._cloud_api()
        deadline = Deadline.after("assigning floating IPs for gc", self.config.deadlines.cloud_step)
        server_id = self.config.hetzner.server_id or self._server_id(cloud, deadline)
        cloud.assign_floating_ips(server_id, deadline, lambda: None)
        return f"assigned floating IP(s) {', '.join(map(str, self.config.hetzner.floating_ip_ids))} to this node"

    def _repromote(self, reason: str) -> str:
        from mailcow_ha.failover.transitions import CancelToken  # noqa: PLC0415

        token = CancelToken(f"gc: {reason}")
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch_master, args=(token, stop), name="gc-role-watch", daemon=True)
        watcher.start()
        try:
            record = self._failover_core().promoter.run(token, kind=RecordKind.MANUAL_PROMOTE, ignore_breaker=True)
        finally:
            stop.set()
            watcher.join(2.0)
        return f"promote ran again ({record.duration or 0.0:.1f} s)"

    def _watch_master(self, token: Any, stop: threading.Event) -> None:
        """Cancel the promote GC runs when this node's agent stops reporting MASTER."""
        while not stop.wait(ROLE_WATCH_INTERVAL):
            snapshot = self._own_snapshot()
            if snapshot is not None and snapshot.vrrp_state != "MASTER":
                token.cancel(f"keepalived reported {snapshot.vrrp_state}")
                return

    def _cloud_api(self) -> HetznerCloud:
        if self._cloud is None:
            self._cloud = self._cloud_factory()
        return self._cloud

    def _failover_core(self) -> Failover:
        if self._failover is None:
            self._failover = self._failover_factory()
        return self._failover

    def _default_cloud(self) -> HetznerCloud:
        from mailcow_ha.adapters.hetzner import HetznerCloud  # noqa: PLC0415 (hcloud costs 0.15 s to import)

        return HetznerCloud(self.config.hetzner)

    def _default_failover(self) -> Failover:
        from mailcow_ha.failover.wiring import build_failover  # noqa: PLC0415

        return build_failover(self.config, self._alerter, cloud=self._cloud_api())
