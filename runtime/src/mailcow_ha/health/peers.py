"""The peers probe: a standby is healthy only when every member that responds lists it as a member.

keepalived sends its adverts only to the unicast peers in its config. After a scale-out the
existing members learn a new node at their next membership sync (`membership.sync_interval`).
Until then the master's adverts do not reach the new node, which elects itself after about three
advert intervals, and two nodes are MASTER. The new node would then promote and take the floating
IPs and the shared volume from a healthy master.

So on a standby the probe asks every other member's status API for the members it knows. While a
member that responds does not list this node, the probe fails, so the standby is unhealthy, and
keepalived keeps it in FAULT, where it sends no adverts and cannot become master. A member that
does not respond shows nothing (it may be down) and is left out, so the probe never keeps a node
from taking over from a master that died. The probe counts on a standby only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from mailcow_ha.agent.snapshot import NodeSnapshot
from mailcow_ha.deadline import Clock, Deadline
from mailcow_ha.errors import MailcowHaError
from mailcow_ha.health.verdict import PEERS, ProbeResult, Role

log = logging.getLogger(__name__)

MAX_PARALLEL_REQUESTS = 8
"""A cluster has at most 9 nodes, so one request per other member runs at once."""


class SnapshotReader(Protocol):
    """The part of agent.statusclient.StatusClient that the probe uses."""

    def status(self, address: str, *, node: str = "", port: int | None = None) -> NodeSnapshot: ...


@dataclass(frozen=True)
class PeerView:
    """The members that one other node listed in its status, or why it did not respond."""

    name: str
    members: tuple[str, ...] | None
    """None when the node did not respond; empty when its agent reports no member list."""
    error: str | None = None


def judge_peers(own_name: str, views: Sequence[PeerView]) -> tuple[bool, str]:
    """Judge a standby: it fails while a member that responded lists members, but not this node."""
    unaware = sorted(view.name for view in views if view.members and own_name not in view.members)
    if unaware:
        return False, (
            f"{own_name} is not yet a member on {', '.join(unaware)}, so their keepalived sends it no "
            "adverts and it could become a second master; their next membership sync adds it"
        )
    responded = sum(1 for view in views if view.members is not None)
    silent = sorted(view.name for view in views if view.members is None)
    detail = f"a member on {responded} of {len(views)} other node(s) that responded"
    if silent:
        detail += f" ({', '.join(silent)} did not respond)"
    return True, detail


class PeersProbe:
    """Asks every other member's status API, in parallel, whether it lists this node."""

    name = PEERS

    def __init__(
        self,
        own_name: str,
        peers: Callable[[], Sequence[tuple[str, str]]],
        client: SnapshotReader,
        *,
        interval: float,
        clock: Clock = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.own_name = own_name
        self.peers = peers
        """Returns (name, private address) of every other member."""
        self.client = client
        self.interval = interval
        self._clock = clock
        self._wall_clock = wall_clock

    def check(self, role: Role, deadline: Deadline) -> ProbeResult:
        started = self._clock()
        if role is not Role.STANDBY:
            return ProbeResult(PEERS, True, "checked on a standby only", self._wall_clock(), 0.0)
        peers = [peer for peer in self.peers() if peer[0] != self.own_name]
        if not peers:
            return ProbeResult(PEERS, True, "no other member known", self._wall_clock(), 0.0)
        with ThreadPoolExecutor(
            max_workers=min(MAX_PARALLEL_REQUESTS, len(peers)), thread_name_prefix="mailcow-ha-peers"
        ) as pool:
            views = list(pool.map(self._ask, peers))
        ok, detail = judge_peers(self.own_name, views)
        return ProbeResult(PEERS, ok, detail, self._wall_clock(), self._clock() - started)

    def _ask(self, peer: tuple[str, str]) -> PeerView:
        name, address = peer
        try:
            snapshot = self.client.status(address, node=name)
        except MailcowHaError as error:
            log.debug("peers probe: %s did not respond: %s", name, error)
            return PeerView(name, None, str(error))
        return PeerView(name, tuple(snapshot.members))
