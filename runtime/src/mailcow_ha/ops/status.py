"""Gather the cluster's state for `mailcow-ha status`: every member's snapshot and the cloud's holders.

Snapshots come from every member's status API in parallel, each request bounded by the client's
timeout. The floating IPs' and the shared volume's holders come from the Hetzner Cloud API (a
few read requests, skipped with `--no-cloud`), because the API's routing is what matters when
it disagrees with keepalived. Nothing here decides; `ops.statuscheck` turns the result into
problems.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from mailcow_ha.agent.membership import load_membership
from mailcow_ha.agent.snapshot import NodeSnapshot
from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.config import NodeConfig
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import MailcowHaError, Refused
from mailcow_ha.failover.history import FailoverRecord

if TYPE_CHECKING:
    from mailcow_ha.adapters.hetzner import CloudHolders, ServerInfo

log = logging.getLogger(__name__)

CLOUD_READ_TIMEOUT = 15.0
"""Upper bound in seconds on the cloud reads of one `status` run."""


@dataclass(frozen=True)
class Member:
    """A cluster member as listed in this node's config or learned by membership sync."""

    name: str
    index: int
    address: str


@dataclass(frozen=True)
class MemberStatus:
    """A member and what its status API returned: a snapshot, or the error that prevented one."""

    member: Member
    snapshot: NodeSnapshot | None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.member.name


@dataclass(frozen=True)
class CloudStatus:
    """Holders of the floating IPs and the shared volume according to the Hetzner Cloud API.

    Holders are node names. A server the cluster does not know is shown as `server <id>`, and
    None means the resource is on no server.
    """

    floating_ips: dict[int, str | None] = field(default_factory=dict)
    floating_ip_addresses: dict[int, str] = field(default_factory=dict)
    volume_id: int = 0
    volume_holder: str | None = None
    error: str | None = None
    """Set when the API could not be read; the holders are then empty."""


@dataclass(frozen=True)
class ClusterStatus:
    """Everything `status` shows, observed from one node at one time."""

    cluster: str
    observer: str
    observed_at: float
    members: tuple[MemberStatus, ...]
    cloud: CloudStatus | None
    """None when the cloud API was not queried."""
    last_move: FailoverRecord | None = None
    """The newest failover or switchover in any member's history (see ops.history)."""
    state_problems: tuple[tuple[str, str], ...] = ()
    """(node, message) for each state file that could not be read: this node's, or a member's history."""


def members_of(config: NodeConfig, *, move_corrupt: bool = True) -> list[Member]:
    """Return the cluster's members: those stored by the last membership sync, else the config's peers.

    With neither, the node itself is the only member returned. A corrupt members file is moved
    aside unless `move_corrupt` is false (see read_members for its problem).
    """
    return read_members(config, move_corrupt=move_corrupt)[0]


def read_members(config: NodeConfig, *, move_corrupt: bool = True) -> tuple[list[Member], str | None]:
    """Return members_of's list and why the stored members could not be read, if they could not."""
    membership = load_membership(config, move_corrupt=move_corrupt)
    stored = membership.members
    if not stored:
        return [Member(config.node.name, config.node.index, str(config.node.private_ip))], membership.problem
    members = [Member(member.name, member.index, member.private_ip) for member in stored]
    return sorted(members, key=lambda m: m.index), membership.problem


def known_members(config: NodeConfig) -> list[Member]:
    """Return every member for commands that must reach the whole cluster, sorted by index.

    The node config that cloud-init writes lists no peers, so the members come from the last
    `mailcow-ha peers sync` (the state directory), or from the config's peers where an
    administrator listed them. Raises Refused when neither names any member. A corrupt members
    file is left in place: these commands only read it, and the next sync rewrites it.
    """
    membership = load_membership(config, move_corrupt=False)
    if not membership.members:
        stored = membership.problem or f"no membership is stored in {config.paths.state_dir}"
        raise Refused(
            f"no cluster members known on {config.node.name}: {stored}, and the node config lists no peers; "
            "run `mailcow-ha peers sync` first"
        )
    members = [Member(member.name, member.index, member.private_ip) for member in membership.members]
    return sorted(members, key=lambda m: m.index)


def fetch_snapshots(client: StatusClient, members: Sequence[Member]) -> tuple[MemberStatus, ...]:
    """Read every member's snapshot in parallel; an unreachable member gets its error instead."""

    def fetch(member: Member) -> MemberStatus:
        try:
            return MemberStatus(member, client.status(member.address, node=member.name))
        except MailcowHaError as error:
            log.info("status of %s unavailable: %s", member.name, error)
            return MemberStatus(member, None, str(error))

    if not members:
        return ()
    with ThreadPoolExecutor(max_workers=min(len(members), 9), thread_name_prefix="status") as pool:
        return tuple(pool.map(fetch, members))


class CloudApi(Protocol):
    """The part of adapters.hetzner.HetznerCloud that status and gc read."""

    def holders(self, deadline: Deadline) -> CloudHolders: ...

    def cluster_servers(self, cluster: str, deadline: Deadline) -> list[ServerInfo]: ...


class CloudReader:
    """The cloud reads of `status` and `gc`: holders and the cluster's server names."""

    def __init__(self, config: NodeConfig, cloud: CloudApi) -> None:
        self._config = config
        self._cloud = cloud

    def read(self, timeout: float = CLOUD_READ_TIMEOUT) -> CloudStatus:
        settings = self._config.hetzner
        addresses = {
            fip_id: str(address)
            for fip_id, address in zip(settings.floating_ip_ids, settings.floating_ips, strict=False)
        }
        deadline = Deadline.after("reading floating IP and volume holders", timeout)
        try:
            servers = self._cloud.cluster_servers(self._config.cluster, deadline)
            holders = self._cloud.holders(deadline)
        except MailcowHaError as error:
            log.warning("cloud holders unavailable: %s", error)
            return CloudStatus(floating_ip_addresses=addresses, volume_id=settings.shared_volume_id, error=str(error))
        names = {server.id: server.name for server in servers}

        def name_of(server_id: int | None) -> str | None:
            if server_id is None:
                return None
            return names.get(server_id, f"server {server_id}")

        return CloudStatus(
            floating_ips={fip_id: name_of(holder) for fip_id, holder in holders.floating_ips.items()},
            floating_ip_addresses=addresses,
            volume_id=settings.shared_volume_id,
            volume_holder=name_of(holders.volumes.get(settings.shared_volume_id)),
        )


def gather(
    config: NodeConfig,
    client: StatusClient,
    *,
    cloud: CloudReader | None,
    clock: Callable[[], float] = time.time,
    move_corrupt: bool = True,
) -> ClusterStatus:
    """Collect the members' snapshots and the cloud's holders as seen from this node.

    A corrupt members file is reported in `state_problems`, and moved aside unless
    `move_corrupt` is false (`mailcow-ha status`).
    """
    members, problem = read_members(config, move_corrupt=move_corrupt)
    statuses = fetch_snapshots(client, members)
    cloud_status = cloud.read() if cloud is not None else None
    problems = () if problem is None else ((config.node.name, problem),)
    return ClusterStatus(config.cluster, config.node.name, clock(), statuses, cloud_status, state_problems=problems)
