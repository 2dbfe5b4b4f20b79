"""The peers probe: a standby stays unhealthy while a member that responds does not list it.

The other members are real status APIs on loopback addresses (127.0.0.2 and up, which Linux
routes to `lo`), read with the real status client, as after a scale-out before the old members'
membership sync.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from pydantic import SecretStr

from harness.ports import free_port
from mailcow_ha.agent.snapshot import NodeSnapshot
from mailcow_ha.agent.statusapi import StatusApi
from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.deadline import Deadline
from mailcow_ha.health.peers import PeersProbe, PeerView, judge_peers
from mailcow_ha.health.verdict import PEERS, ProbeResult, Role, VerdictInputs, decide_verdict, record_result

CLUSTER = "peers-test"
SECRET = SecretStr("test-cluster-secret")

Serve = Callable[[dict[str, tuple[str, ...]]], tuple[list[tuple[str, str]], int]]


def snapshot_of(name: str, members: tuple[str, ...]) -> NodeSnapshot:
    return NodeSnapshot(CLUSTER, name, int(name[-1]), "127.0.0.1", "test", 0.0, 0.0, members=members)


@pytest.fixture
def serve_members() -> Iterator[Serve]:
    """Serve a status API per node name, listing the given members; return (name, address) pairs and the port."""
    apis: list[StatusApi] = []

    def serve(listed: dict[str, tuple[str, ...]]) -> tuple[list[tuple[str, str]], int]:
        peers = [(name, f"127.0.0.{10 + int(name[-1])}") for name in listed]
        port = free_port(*(address for _, address in peers))
        for name, address in peers:
            members = listed[name]
            api = StatusApi(
                address=address,
                port=port,
                cluster=CLUSTER,
                node=name,
                secret=SECRET,
                snapshot=lambda name=name, members=members: snapshot_of(name, members),  # type: ignore[misc]
            )
            api.start()
            apis.append(api)
        return peers, port

    yield serve
    for api in apis:
        api.stop()


def probe_for(peers: list[tuple[str, str]], port: int, own: str = "node-4") -> PeersProbe:
    client = StatusClient(cluster=CLUSTER, secret=SECRET, port=port, timeout=1.0)
    return PeersProbe(own, lambda: [*peers, (own, "127.0.0.14")], client, interval=2.0)


def test_new_node_unknown_to_old_members_fails(serve_members: Serve) -> None:
    old = ("node-1", "node-2", "node-3")
    peers, port = serve_members({"node-1": old, "node-2": old, "node-3": (*old, "node-4")})

    result = probe_for(peers, port).check(Role.STANDBY, Deadline.after("test", 5))

    assert not result.ok
    assert result.detail.startswith("node-4 is not yet a member on node-1, node-2, so their keepalived")


def test_node_known_to_every_member_passes(serve_members: Serve) -> None:
    everyone = ("node-1", "node-2", "node-3", "node-4")
    peers, port = serve_members({"node-1": everyone, "node-2": everyone})
    silent = ("node-3", "127.0.0.13")

    result = probe_for([*peers, silent], port).check(Role.STANDBY, Deadline.after("test", 5))

    assert result.ok
    assert result.detail == "a member on 2 of 3 other node(s) that responded (node-3 did not respond)"


def test_peers_checked_on_standby_only(serve_members: Serve) -> None:
    peers, port = serve_members({"node-1": ("node-1",)})
    probe = probe_for(peers, port)

    for role in (Role.MASTER, Role.TRANSITION, Role.UNKNOWN):
        result = probe.check(role, Deadline.after("test", 5))
        assert result.ok
        assert result.detail == "checked on a standby only"


@pytest.mark.parametrize(
    ("views", "ok"),
    [
        ([PeerView("node-1", ("node-1", "node-2"))], False),
        ([PeerView("node-1", ("node-1", "node-4"))], True),
        ([PeerView("node-1", None, "connection refused")], True),
        # An agent that reports no member list shows nothing about this node.
        ([PeerView("node-1", ())], True),
        ([], True),
    ],
)
def test_judge_peers(views: list[PeerView], ok: bool) -> None:
    assert judge_peers("node-4", views)[0] is ok


def test_failing_peers_make_standby_unhealthy() -> None:
    ok, detail = judge_peers("node-4", [PeerView("node-1", ("node-1",))])
    record = None
    for _ in range(3):
        record = record_result(record, ProbeResult(PEERS, ok, detail), failures_to_unhealthy=3, successes_to_healthy=2)
    assert record is not None

    standby = decide_verdict(VerdictInputs(Role.STANDBY, {PEERS: record}, configured=frozenset({PEERS})))
    master = decide_verdict(VerdictInputs(Role.MASTER, {PEERS: record}, configured=frozenset({PEERS})))

    assert not standby.healthy
    assert standby.reason.startswith("peers: node-4 is not yet a member on node-1")
    assert master.healthy
    assert master.ignored == (PEERS,)
