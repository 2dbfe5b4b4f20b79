"""Carry out Galera bootstrap and first boot across the members.

Each node serves two actions through its agent's status API: `galera-position` returns the
local member's position, and `galera-start` starts the local member, as a new primary component
or as a joiner, and waits until it is Synced. The operator's `mailcow-ha galera bootstrap` and
cloud-init's `mailcow-ha galera first-boot` call them on every member through a `PeerTransport`
and act on the plans of mailcow_ha.mailcow.bootstrap.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mailcow_ha.config import GaleraSettings, NodeConfig
from mailcow_ha.deadline import Deadline, Sleep
from mailcow_ha.errors import DatabaseError, DeadlineExceeded, MailcowHaError, Refused
from mailcow_ha.mailcow import positions, sql
from mailcow_ha.mailcow.bootstrap import (
    BootstrapAction,
    BootstrapPlan,
    FirstBootAction,
    FirstBootDecision,
    MemberReport,
    plan_bootstrap,
    plan_first_boot,
)
from mailcow_ha.mailcow.positions import MemberPosition, MemberState
from mailcow_ha.ops.status import known_members

log = logging.getLogger(__name__)

ACTION_POSITION = "galera-position"
ACTION_START = "galera-start"
POSITION_TIMEOUT = positions.RECOVER_TIMEOUT + 30.0
"""Seconds a peer may take to report its position; a crashed member runs InnoDB recovery first."""


class PeerUnreachable(MailcowHaError):
    """A member's agent could not be reached, or its action failed."""


class PeerTransport(Protocol):
    """Calls one status API action on a member and returns its JSON result."""

    def call(self, node: str, action: str, params: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        """Raise PeerUnreachable when the member cannot be asked or the action failed."""


class MemberControl(Protocol):
    """Starts the local server; the caller waits for it to become Synced."""

    def start(self, *, bootstrap: bool, timeout: float) -> None: ...


class CommandControl:
    """Starts the local member with the commands of the node config (systemd on a real node)."""

    def __init__(self, settings: GaleraSettings) -> None:
        self.settings = settings

    def start(self, *, bootstrap: bool, timeout: float) -> None:
        command = self.settings.bootstrap_command if bootstrap else self.settings.start_command
        log.info("starting the Galera member: %s", " ".join(command))
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError:
            raise DatabaseError(f"{command[0]} not found; check galera.bootstrap_command/start_command") from None
        except subprocess.TimeoutExpired:
            raise DatabaseError(f"{' '.join(command)} timed out after {timeout:.0f} s") from None
        if result.returncode != 0:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise DatabaseError(f"{' '.join(command)} exited {result.returncode}: {tail}")


@dataclass(frozen=True)
class LocalMember:
    """This node's member: its name, Galera settings and how to start it."""

    node: str
    settings: GaleraSettings
    control: MemberControl
    sleep: Sleep = time.sleep
    poll_interval: float = 0.5

    def position(self) -> MemberPosition:
        return positions.local_position(self.settings, self.node)

    def start(self, *, bootstrap: bool, expected_seqno: int | None, timeout: float) -> MemberPosition:
        """Start this member and wait until it is Synced in a primary component.

        With `bootstrap`, the member's position is read again first and the start is rejected
        when it is no longer `expected_seqno`, because the plan was made on an outdated view.
        """
        deadline = Deadline.after(f"starting Galera member {self.node}", timeout)
        current = self.position()
        if current.state is MemberState.PRIMARY:
            return current
        if bootstrap:
            if expected_seqno is not None and current.seqno != expected_seqno:
                raise Refused(
                    f"{self.node} is now at seqno {current.seqno}, not {expected_seqno} as planned; "
                    "run `mailcow-ha galera bootstrap` again"
                )
            if current.state is MemberState.NON_PRIMARY:
                log.info("%s runs without a primary component; setting pc.bootstrap", self.node)
                sql.query(self.settings.socket, "SET GLOBAL wsrep_provider_options='pc.bootstrap=YES'")
            else:
                positions.mark_safe_to_bootstrap(self.settings.data_dir)
                self.control.start(bootstrap=True, timeout=deadline.remaining())
        elif current.state is MemberState.STOPPED:
            self.control.start(bootstrap=False, timeout=deadline.remaining())
        return self.wait_synced(deadline)

    def wait_synced(self, deadline: Deadline) -> MemberPosition:
        last = "no answer yet"
        while not deadline.expired:
            try:
                current = positions.running_position(self.settings, self.node, timeout=2.0)
            except DatabaseError as error:
                last = str(error)
            else:
                if current is not None and current.synced:
                    log.info("%s is Synced at seqno %d", self.node, current.seqno)
                    return current
                last = current.describe() if current is not None else "not running"
            self.sleep(min(self.poll_interval, deadline.remaining()))
        raise DeadlineExceeded(f"{deadline.step} timed out before it was Synced (last: {last})")

    def handle(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Serve one status API action on this node."""
        if action == ACTION_POSITION:
            return self.position().to_dict()
        if action == ACTION_START:
            expected = params.get("expected_seqno")
            started = self.start(
                bootstrap=bool(params.get("bootstrap", False)),
                expected_seqno=int(expected) if expected is not None else None,
                timeout=float(params.get("timeout", self.settings.start_timeout)),
            )
            return started.to_dict()
        raise PeerUnreachable(f"unknown Galera action {action!r}")


class ActionRegistry(Protocol):
    """The status API's action registry (mailcow_ha.agent.statusapi.StatusApi)."""

    def register_action(
        self,
        name: str,
        handler: Callable[[Mapping[str, Any]], Mapping[str, Any]],
        *,
        summary: str,
        timeout: float,
    ) -> None: ...


def register_galera_actions(registry: ActionRegistry, member: LocalMember) -> None:
    """Serve this node's Galera position and start through the agent's status API."""
    registry.register_action(
        ACTION_POSITION,
        lambda params: member.handle(ACTION_POSITION, params),
        summary="report the local Galera member's state and last committed seqno (recovering it after a crash)",
        timeout=POSITION_TIMEOUT,
    )
    registry.register_action(
        ACTION_START,
        lambda params: member.handle(ACTION_START, params),
        summary="start the local Galera member as a new primary component or as a joiner, and wait until Synced",
        timeout=member.settings.start_timeout,
    )


def local_member(config: NodeConfig) -> LocalMember:
    """Return this node's member, started through the node config's commands."""
    return LocalMember(config.node.name, config.galera, CommandControl(config.galera))


class ActionClient(Protocol):
    """Calls an action on another node's status API (mailcow_ha.agent.statusclient.StatusClient)."""

    def call(
        self, address: str, action: str, params: Mapping[str, Any] | None = None, *, timeout: float, node: str = ""
    ) -> dict[str, Any]: ...


class StatusApiTransport:
    """Calls peers through their agents' status API and this node's member directly."""

    def __init__(self, config: NodeConfig, local: LocalMember, client: ActionClient) -> None:
        self.addresses = {member.name: member.address for member in known_members(config)}
        self.local = local
        self.client = client

    def call(self, node: str, action: str, params: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        if node == self.local.node:
            return self.local.handle(action, params)
        address = self.addresses.get(node)
        if address is None:
            raise PeerUnreachable(f"{node} is not a known cluster member; run `mailcow-ha peers sync`")
        try:
            return self.client.call(address, action, params, timeout=timeout, node=node)
        except Refused:
            raise
        except MailcowHaError as error:
            raise PeerUnreachable(str(error)) from None


class DirectTransport:
    """Calls members' handlers in this process; used for the local node and in tests."""

    def __init__(self, members: Mapping[str, Callable[[str, Mapping[str, Any]], dict[str, Any]]]) -> None:
        self.members = members

    def call(self, node: str, action: str, params: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        handler = self.members.get(node)
        if handler is None:
            raise PeerUnreachable(f"{node} has no agent in this process")
        try:
            return handler(action, params)
        except Refused:
            raise
        except MailcowHaError as error:
            raise PeerUnreachable(f"{node}: {error}") from None


@dataclass(frozen=True)
class Member:
    node: str
    index: int


def members_from_config(config: NodeConfig) -> list[Member]:
    """Return every member of the cluster as the last `peers sync` stored it (or the config's peers)."""
    return [Member(member.name, member.index) for member in known_members(config)]


def collect_reports(
    members: Sequence[Member], transport: PeerTransport, *, timeout: float = POSITION_TIMEOUT
) -> list[MemberReport]:
    """Ask every member for its position; an unreachable member becomes a report with its error."""
    reports = []
    for member in members:
        try:
            data = transport.call(member.node, ACTION_POSITION, {}, timeout)
            reports.append(MemberReport(member.node, member.index, MemberPosition.from_dict(data)))
        except MailcowHaError as error:
            log.warning("no Galera position from %s: %s", member.node, error)
            reports.append(MemberReport(member.node, member.index, None, str(error)))
    return reports


def run_bootstrap(
    members: Sequence[Member],
    transport: PeerTransport,
    *,
    force: str | None = None,
    start_timeout: float = 600.0,
    dry_run: bool = False,
) -> BootstrapPlan:
    """Collect positions, decide, and start the chosen member and then the others one by one."""
    reports = collect_reports(members, transport)
    plan = plan_bootstrap(reports, force=force)
    log.info("galera bootstrap: %s: %s", plan.action, plan.reason)
    if plan.action is BootstrapAction.REJECT:
        raise Refused(f"galera bootstrap rejected: {plan.reason}")
    if dry_run:
        return plan

    if plan.action is BootstrapAction.BOOTSTRAP and plan.node is not None:
        chosen = next(report for report in reports if report.node == plan.node)
        expected = chosen.position.seqno if chosen.position is not None else None
        params = {"bootstrap": True, "expected_seqno": expected, "timeout": start_timeout}
        _start(transport, plan.node, params, start_timeout)
    for joiner in plan.joiners:
        _start(transport, joiner, {"bootstrap": False, "timeout": start_timeout}, start_timeout)
    return plan


def _start(transport: PeerTransport, node: str, params: Mapping[str, Any], timeout: float) -> None:
    kind = "bootstrapping" if params.get("bootstrap") else "joining"
    log.info("%s %s", kind, node)
    try:
        result = MemberPosition.from_dict(transport.call(node, ACTION_START, params, timeout + 30.0))
    except PeerUnreachable as error:
        raise DatabaseError(f"{kind} {node} failed: {error}; the members started so far keep running") from None
    log.info("%s is Synced in a primary component at seqno %d", node, result.seqno)


def run_first_boot(
    local: LocalMember,
    local_index: int,
    peers: Sequence[Member],
    transport: PeerTransport,
    *,
    wait_timeout: float,
    poll_interval: float = 5.0,
    sleep: Sleep = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> FirstBootDecision:
    """Bootstrap (node 1 of a new cluster) or join, asking the peers again until `wait_timeout`."""
    deadline = Deadline.after("galera first-boot", wait_timeout, clock)
    while True:
        reports = collect_reports(peers, transport)
        decision = plan_first_boot(local.position(), local_index, reports)
        log.info("galera first-boot: %s: %s", decision.action, decision.reason)
        if decision.action is FirstBootAction.REJECT:
            raise Refused(f"galera first-boot rejected: {decision.reason}")
        if decision.action in (FirstBootAction.BOOTSTRAP, FirstBootAction.JOIN):
            bootstrap = decision.action is FirstBootAction.BOOTSTRAP
            local.start(bootstrap=bootstrap, expected_seqno=None, timeout=local.settings.start_timeout)
            return decision
        if deadline.remaining() < poll_interval:
            raise DeadlineExceeded(
                f"galera first-boot timed out after {wait_timeout:.0f} s: {decision.reason}; "
                "check the peers' agents, then run `mailcow-ha galera first-boot` again"
            )
        sleep(poll_interval)
