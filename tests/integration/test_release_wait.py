"""The wait for the volume's holder before a detach, against a peer status API on loopback.

The peer is the agent's own StatusApi server on 127.0.0.1 with a scripted snapshot: the holder
whose demote is still unmounting the volume, then has unmounted it. members.json maps the
holder's server id to that address, as a membership sync stores it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr

from harness.failovernode import FailoverNode, failover_node, master_token
from harness.nodeconfig import deep_update, node_config_dict
from harness.podman import PodmanService
from harness.ports import free_port
from mailcow_ha import state
from mailcow_ha.agent.membership import Member, Membership
from mailcow_ha.agent.snapshot import MountSnapshot, NodeSnapshot, ProbeSnapshot, TransitionSnapshot
from mailcow_ha.agent.statusapi import StatusApi
from mailcow_ha.config import NodeConfig, parse_config
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import Superseded
from mailcow_ha.failover.history import RecordOutcome
from mailcow_ha.failover.release import ReleaseOutcome, ReleaseResult
from mailcow_ha.failover.wiring import build_release_waiter
from mailcow_ha.health.verdict import MOUNT

pytestmark = pytest.mark.integration

HOLDER_NAME = "mailcow-ha-test-2"
HOLDER_SERVER_ID = 502


def holder_snapshot(mounted: bool, *, demoting: bool = True, running: str | None = None) -> NodeSnapshot:
    """The holder's snapshot; its mount probe read the mount table a second after the last transition began."""
    now = time.time()
    running = running or ("FAULT" if demoting else None)
    started = now - 2.0
    transition = (
        TransitionSnapshot(running=running, started_at=started)
        if running
        else TransitionSnapshot(last_state="FAULT", last_outcome="ok", last_finished_at=started + 0.5)
    )
    return NodeSnapshot(
        cluster="mailcow-ha-test",
        node=HOLDER_NAME,
        node_index=2,
        private_ip="127.0.0.1",
        agent_version="test",
        agent_started_at=1.0,
        taken_at=now,
        vrrp_state="MASTER" if running == "MASTER" else "FAULT",
        probes=(ProbeSnapshot(MOUNT, True, "", duration=0.001, checked_at=started + 1.0),),
        mount=MountSnapshot("/srv/mailcow-data", mounted),
        transition=transition,
    )


class Peer:
    """A holder's status API whose snapshot a test changes, counting the requests it served."""

    def __init__(self, snapshot: Callable[[], NodeSnapshot]) -> None:
        self._snapshot = snapshot
        self.requests = 0
        self._lock = threading.Lock()
        self.api = StatusApi(
            address="127.0.0.1",
            port=0,
            cluster="mailcow-ha-test",
            node=HOLDER_NAME,
            secret=SecretStr("not-used-by-reads"),
            snapshot=self._serve,
        )
        self.port = self.api.address[1]
        self.api.start()

    def _serve(self) -> NodeSnapshot:
        with self._lock:
            self.requests += 1
        return self._snapshot()

    def stop(self) -> None:
        self.api.stop()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def write_members(config: NodeConfig, holder_id: int = HOLDER_SERVER_ID, own_id: int = 501) -> None:
    members = (
        Member(1, config.node.name, str(config.node.private_ip), own_id),
        Member(2, HOLDER_NAME, "127.0.0.1", holder_id),
    )
    state.write_json(
        config.paths.state_dir / state.MEMBERS_FILE, Membership(members, own_id, "api", time.time()).to_json()
    )


def waiter_config(tmp_path: Path, port: int, **deadlines: float) -> NodeConfig:
    document = node_config_dict(paths={"state_dir": str(tmp_path / "state")})
    document = deep_update(document, "status_api.port", port)
    for key, value in deadlines.items():
        document = deep_update(document, f"deadlines.{key}", value)
    config = parse_config(document)
    write_members(config)
    return config


def no_supersede() -> None:
    return None


def wait_release(
    config: NodeConfig,
    seconds: float,
    server_id: int = HOLDER_SERVER_ID,
    checkpoint: Callable[[], None] = no_supersede,
) -> ReleaseResult:
    """Run the production release waiter for `server_id` with a deadline of `seconds`."""
    return build_release_waiter(config).wait(server_id, Deadline.after("release", seconds), checkpoint)


def test_waits_until_holder_unmounted(tmp_path: Path) -> None:
    released_at: list[float] = []

    def snapshot() -> NodeSnapshot:
        if peer.requests < 4:
            return holder_snapshot(mounted=True)
        released_at.append(time.monotonic())
        return holder_snapshot(mounted=False, demoting=False)

    with Peer(snapshot) as peer:
        result = wait_release(waiter_config(tmp_path, peer.port), 5.0)

    assert result.outcome is ReleaseOutcome.RELEASED
    assert peer.requests == 4
    assert HOLDER_NAME in result.reason


@pytest.mark.parametrize("silent", [False, True], ids=["refused", "silent"])
def test_unreachable_holder_not_waited_for(tmp_path: Path, silent: bool) -> None:
    # A stopped agent refuses the connection; a powered-off node answers nothing at all.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = int(listener.getsockname()[1])
        if silent:
            listener.listen(1)
        else:
            port = free_port()
        result = wait_release(waiter_config(tmp_path, port, release_request=0.3), 5.0)

    assert result.outcome is ReleaseOutcome.NO_RESPONSE
    assert result.seconds < 5.0


def test_unmounted_from_promoting_holder_waited_for(tmp_path: Path) -> None:
    # A holder whose promote runs reports the flag of its last mount table read, from before its
    # mount: the wait goes on until its demote has read the table afresh.
    def snapshot() -> NodeSnapshot:
        if peer.requests < 4:
            return holder_snapshot(mounted=False, running="MASTER")
        return holder_snapshot(mounted=False, demoting=False)

    with Peer(snapshot) as peer:
        result = wait_release(waiter_config(tmp_path, peer.port), 5.0)

    assert result.outcome is ReleaseOutcome.RELEASED
    assert peer.requests == 4


def test_wait_ends_at_deadline(tmp_path: Path) -> None:
    with Peer(lambda: holder_snapshot(mounted=True)) as peer:
        result = wait_release(waiter_config(tmp_path, peer.port), 1.0)

    assert result.outcome is ReleaseOutcome.TIMED_OUT
    assert result.seconds >= 1.0
    assert peer.requests > 2


def test_server_not_in_members_not_asked(tmp_path: Path) -> None:
    with Peer(lambda: holder_snapshot(mounted=True)) as peer:
        result = wait_release(waiter_config(tmp_path, peer.port), 5.0, server_id=999)

    assert result.outcome is ReleaseOutcome.NOT_A_MEMBER
    assert peer.requests == 0


def test_newer_state_stops_wait(tmp_path: Path) -> None:
    peer = Peer(lambda: holder_snapshot(mounted=True))
    calls: list[int] = []

    def checkpoint() -> None:
        calls.append(1)
        if peer.requests >= 2:
            raise Superseded("keepalived reported BACKUP")

    with peer, pytest.raises(Superseded):
        wait_release(waiter_config(tmp_path, peer.port), 30.0, checkpoint=checkpoint)

    assert peer.requests == 2


def test_promote_detaches_after_release(podman: PodmanService) -> None:
    # The holder (server 2) reports the volume mounted for its first three answers: promote must
    # not send the detach before the holder reports it unmounted.
    detaches_while_mounted: list[int] = []
    node_holder: list[FailoverNode] = []

    def detach_requests() -> int:
        counts = node_holder[0].env.fake.requests.counts()
        return counts.get("POST /volumes/{id}/actions/detach", 0)

    def snapshot() -> NodeSnapshot:
        if peer.requests <= 3:
            detaches_while_mounted.append(detach_requests())
            return holder_snapshot(mounted=True)
        return holder_snapshot(mounted=False, demoting=False)

    with Peer(snapshot) as peer:
        overrides = {"status_api.port": peer.port, "deadlines.release_wait": 5.0}
        with failover_node(podman, overrides=overrides) as node:
            node_holder.append(node)
            write_members(node.config, holder_id=node.other_server_id, own_id=node.server_id)
            failover = node.failover()

            with node.health_driver():
                record = failover.promoter.run(master_token())

            assert record.outcome is RecordOutcome.SUCCEEDED
            assert node.volume_holder() == node.server_id
            assert detaches_while_mounted == [0, 0, 0]
            assert detach_requests() == 1
            release = next(step for step in record.steps if step.name == "release wait")
            assert release.detail is not None
            assert release.detail.startswith(f"{ReleaseOutcome.RELEASED}:")
            failover.close()
