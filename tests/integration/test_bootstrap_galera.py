"""`galera bootstrap` and `galera first-boot` on real three-member Galera clusters."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from harness.galera import INSTALL_DB, MARIADBD, RUN_AS, GaleraCluster, GaleraNode, galera_available
from harness.nodeconfig import deep_update, node_config_dict, write_node_config
from harness.ports import free_port
from mailcow_ha import state
from mailcow_ha.agent.membership import Member, Membership
from mailcow_ha.agent.statusapi import StatusApi
from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.cli import main
from mailcow_ha.cli.galera import serve_galera_actions
from mailcow_ha.config import GaleraSettings, NodeConfig, parse_config
from mailcow_ha.errors import DeadlineExceeded, ExitCode, Refused
from mailcow_ha.mailcow import dbsetup, galera_ops
from mailcow_ha.mailcow.bootstrap import BootstrapAction, FirstBootAction
from mailcow_ha.mailcow.positions import MemberState

pytestmark = pytest.mark.integration


class HarnessControl:
    """Starts a harness member the way the node config's commands start a real one."""

    def __init__(self, node: GaleraNode) -> None:
        self.node = node
        self.starts: list[bool] = []

    def start(self, *, bootstrap: bool, timeout: float) -> None:
        self.starts.append(bootstrap)
        self.node.start(bootstrap=bootstrap, wait=False)


def settings_for(node: GaleraNode) -> GaleraSettings:
    return GaleraSettings(
        socket=node.socket,
        data_dir=node.data_dir,
        defaults_file=node.option_file,
        mariadbd=MARIADBD,
        password="unused-here",
        cluster_name=node.cluster.name,
        start_timeout=120.0,
    )


def local_members(cluster: GaleraCluster) -> dict[str, galera_ops.LocalMember]:
    return {
        node.name: galera_ops.LocalMember(node.name, settings_for(node), HarnessControl(node), poll_interval=0.2)
        for node in cluster.nodes
    }


def starts_of(members: dict[str, galera_ops.LocalMember], node: GaleraNode) -> list[bool]:
    """Return the `bootstrap` flag of every start the member's control performed."""
    return cast(HarnessControl, members[node.name].control).starts


def transport_for(members: dict[str, galera_ops.LocalMember], *, missing: str | None = None) -> Any:
    handlers = {name: member.handle for name, member in members.items() if name != missing}
    return galera_ops.DirectTransport(handlers)


def member_list(cluster: GaleraCluster) -> list[galera_ops.Member]:
    return [galera_ops.Member(node.name, node.index) for node in cluster.nodes]


def write_rows(node: GaleraNode, label: str, count: int = 3) -> None:
    node.execute(
        "CREATE DATABASE IF NOT EXISTS bootstrap_test",
        "CREATE TABLE IF NOT EXISTS bootstrap_test.events (id INT AUTO_INCREMENT PRIMARY KEY, label VARCHAR(40))",
        *[f"INSERT INTO bootstrap_test.events (label) VALUES ('{label}')" for _ in range(count)],
    )


def count_rows(node: GaleraNode, label: str) -> int:
    rows = node.execute(f"SELECT COUNT(*) FROM bootstrap_test.events WHERE label = '{label}'")
    return int(rows[0][0])


def wait_until_alone(node: GaleraNode, size: int) -> None:
    node.wait_for(lambda status: status.cluster_size == size, timeout=30, what=f"in a component of size {size}")


def crash_with_node_two_ahead(cluster: GaleraCluster) -> None:
    """Kill node 1, write, kill node 3, write, kill node 2: node 2 ends with the newest writes."""
    node1, node2, node3 = cluster.nodes
    write_rows(node1, "all-three")
    node1.kill()
    wait_until_alone(node2, 2)
    write_rows(node2, "two-and-three")
    node3.kill()
    # Node 2 alone goes non-Primary and rejects writes, so its newest write is the one above.
    node2.wait_for(lambda status: status.cluster_status != "Primary", timeout=30, what="non-Primary")
    node2.kill()


def test_bootstrap_after_crash_picks_most_advanced(galera):
    crash_with_node_two_ahead(galera)
    members = local_members(galera)

    plan = galera_ops.run_bootstrap(member_list(galera), transport_for(members), start_timeout=120.0)

    node1, node2, node3 = galera.nodes
    assert plan.action is BootstrapAction.BOOTSTRAP
    assert plan.node == node2.name
    assert set(plan.joiners) == {node1.name, node3.name}
    assert "wsrep-recover" in plan.reason
    assert starts_of(members, node2) == [True]
    assert starts_of(members, node1) == [False]
    galera.wait_healthy(timeout=60)
    for node in galera.nodes:
        assert count_rows(node, "two-and-three") >= 3, node.name


def test_bootstrap_rejected_with_unreachable_member(galera):
    crash_with_node_two_ahead(galera)
    node1, node2, node3 = galera.nodes
    members = local_members(galera)
    transport = transport_for(members, missing=node3.name)

    with pytest.raises(Refused) as rejected:
        galera_ops.run_bootstrap(member_list(galera), transport)

    message = str(rejected.value)
    assert f"{node3.name} did not report a position" in message
    assert f"{node2.name}: stopped, seqno" in message
    assert not any(node.running for node in galera.nodes)

    with pytest.raises(Refused, match="would discard newer transactions"):
        galera_ops.run_bootstrap(member_list(galera), transport, force=node1.name)
    assert not node1.running

    plan = galera_ops.run_bootstrap(member_list(galera), transport, force=node2.name, start_timeout=120.0)

    assert plan.node == node2.name
    assert plan.joiners == (node1.name,)
    node2.wait_for(lambda status: status.synced_primary, timeout=30, what="Synced")


def test_bootstrap_joins_running_primary(galera):
    node1, _, node3 = galera.nodes
    node3.stop()
    members = local_members(galera)

    plan = galera_ops.run_bootstrap(member_list(galera), transport_for(members), start_timeout=120.0)

    assert plan.action is BootstrapAction.JOIN_RUNNING
    assert plan.joiners == (node3.name,)
    assert starts_of(members, node3) == [False]
    assert starts_of(members, node1) == []
    galera.wait_healthy(timeout=60)


def test_position_of_running_member(galera):
    member = local_members(galera)[galera.nodes[0].name]

    position = member.position()

    assert position.state is MemberState.PRIMARY
    assert position.synced is True
    assert position.seqno >= 0


def test_start_rejects_changed_position(galera):
    node1 = galera.nodes[0]
    galera.stop_ordered([2, 3, 1])
    member = local_members(galera)[node1.name]
    seqno = member.position().seqno

    started = time.monotonic()
    with pytest.raises(Refused, match=r"not \d+ as planned"):
        member.start(bootstrap=True, expected_seqno=seqno - 1, timeout=30)

    assert time.monotonic() - started < 30
    assert not node1.running


@pytest.fixture
def new_cluster() -> Iterator[GaleraCluster]:
    """Three members whose data directories are as a fresh package install leaves them."""
    reason = galera_available()
    if reason is not None:
        pytest.skip(f"real MariaDB Galera: {reason}")
    cluster = GaleraCluster(3)
    try:
        shutil.chown(cluster.base_dir, RUN_AS, RUN_AS)
        for node in cluster.nodes:
            node.data_dir.mkdir(parents=True)
            for path in (node.base_dir, node.data_dir):
                shutil.chown(path, RUN_AS, RUN_AS)
            node.write_option_file()
        subprocess.run(
            [INSTALL_DB, f"--datadir={cluster.nodes[0].data_dir}", f"--user={RUN_AS}"],
            capture_output=True,
            timeout=120,
            check=True,
        )
        yield cluster
    finally:
        cluster.close()


def peers_of(cluster: GaleraCluster, index: int) -> list[galera_ops.Member]:
    return [galera_ops.Member(node.name, node.index) for node in cluster.nodes if node.index != index]


def test_first_boot_forms_and_rejoins_cluster(new_cluster):
    node1, node2, node3 = new_cluster.nodes
    members = local_members(new_cluster)
    transport = transport_for(members)

    with pytest.raises(DeadlineExceeded, match="waiting for node 1"):
        galera_ops.run_first_boot(
            members[node2.name], 2, peers_of(new_cluster, 2), transport, wait_timeout=1.0, poll_interval=0.5
        )
    assert not node2.running

    decision = galera_ops.run_first_boot(members[node1.name], 1, peers_of(new_cluster, 1), transport, wait_timeout=60)

    assert decision.action is FirstBootAction.BOOTSTRAP
    assert starts_of(members, node1) == [True]

    document = deep_update(node_config_dict(), "galera.socket", str(node1.socket))
    document = deep_update(document, "mailcow", {"db_password": "mailcow-db-password"})
    dbsetup.ensure_database_users(parse_config(document))
    dbsetup.ensure_database_users(parse_config(document))

    for node in (node2, node3):
        decision = galera_ops.run_first_boot(
            members[node.name], node.index, peers_of(new_cluster, node.index), transport, wait_timeout=60
        )
        assert decision.action is FirstBootAction.JOIN
    new_cluster.wait_healthy(timeout=60)
    users = {row[0] for row in node3.execute("SELECT user FROM mysql.user WHERE host = 'localhost'")}
    assert {"mailcow", "mailcow_ha"} <= users
    assert node3.execute("SHOW DATABASES LIKE 'mailcow'") == [("mailcow",)]

    node1.stop()
    decision = galera_ops.run_first_boot(members[node1.name], 1, peers_of(new_cluster, 1), transport, wait_timeout=60)

    assert decision.action is FirstBootAction.JOIN
    assert starts_of(members, node1) == [True, False]
    new_cluster.wait_healthy(timeout=60)


def config_for(cluster: GaleraCluster, node: GaleraNode, port: int) -> NodeConfig:
    document = node_config_dict(
        cluster=cluster.name,
        node={"name": node.name, "index": node.index, "private_ip": node.address},
        peers=[{"name": peer.name, "index": peer.index, "private_ip": peer.address} for peer in cluster.nodes],
    )
    document = deep_update(document, "status_api", {"port": port, "secret": "status-api-test-secret"})
    return parse_config(document)


def test_bootstrap_after_ordered_stop_through_status_api(galera):
    node1, node2, node3 = galera.nodes
    write_rows(node1, "before-ordered-stop")
    galera.stop_ordered([1, 2, 3])
    members = local_members(galera)
    port = free_port(*(node.address for node in galera.nodes))
    # Over loopback the client's source address is 127.0.0.1, not the member's own address.
    clients = {"127.0.0.1", *(node.address for node in galera.nodes)}
    agent_api = StatusApi.from_config(
        config_for(galera, node2, port), lambda: pytest.fail("no snapshot expected"), allowed_clients=lambda: clients
    )
    galera_ops.register_galera_actions(agent_api, members[node2.name])
    agent_api.start()
    try:
        # Node 3 serves its actions the way `galera first-boot` does before its agent runs.
        with serve_galera_actions(config_for(galera, node3, port), members[node3.name], allowed_clients=clients):
            config = config_for(galera, node1, port)
            transport = galera_ops.StatusApiTransport(config, members[node1.name], StatusClient.from_config(config))

            plan = galera_ops.run_bootstrap(member_list(galera), transport, start_timeout=120.0)

        assert plan.node == node3.name
        assert f"{node3.name}: stopped" in plan.reason
        assert "(grastate.dat) safe_to_bootstrap" in plan.reason
        assert plan.joiners == (node1.name, node2.name)
        assert starts_of(members, node3) == [True]
        assert starts_of(members, node2) == [False]
        galera.wait_healthy(timeout=60)
        assert count_rows(node2, "before-ordered-stop") >= 3
    finally:
        agent_api.stop()


def test_positions_from_synced_members(galera, tmp_path, capsys):
    """Cloud-init's node config lists no peers; the members come from `peers sync`'s state file."""
    node1, node2, node3 = galera.nodes
    members = local_members(galera)
    port = free_port(*(node.address for node in galera.nodes))
    clients = {"127.0.0.1", *(node.address for node in galera.nodes)}
    synced = Membership(
        tuple(Member(node.index, node.name, node.address, 100 + node.index) for node in galera.nodes),
        101,
        "api",
        time.time(),
    )
    document = node_config_dict(
        cluster=galera.name,
        node={"name": node1.name, "index": 1, "private_ip": node1.address},
        peers=[],
    )
    document = deep_update(document, "status_api", {"port": port, "secret": "status-api-test-secret"})
    document = deep_update(document, "galera.socket", str(node1.socket))
    document = deep_update(document, "paths", {"state_dir": str(tmp_path / "state"), "run_dir": str(tmp_path / "run")})
    state.write_json(tmp_path / "state" / state.MEMBERS_FILE, synced.to_json())
    config_file = write_node_config(tmp_path / "node.yaml", document)

    with (
        serve_galera_actions(config_for(galera, node2, port), members[node2.name], allowed_clients=clients),
        serve_galera_actions(config_for(galera, node3, port), members[node3.name], allowed_clients=clients),
    ):
        code = main(["--config", str(config_file), "galera", "positions"])

    output = capsys.readouterr().out
    assert code == ExitCode.OK
    for node in galera.nodes:
        assert f"{node.name}: primary, seqno" in output


def test_bootstrap_with_replaced_member(galera):
    """A member whose data directory is empty (a replaced server) joins only when the operator says so."""
    node1, node2, node3 = galera.nodes
    write_rows(node1, "before-replacement")
    galera.stop_ordered([3, 1, 2])
    for entry in node3.data_dir.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    members = local_members(galera)

    with pytest.raises(Refused) as rejected:
        galera_ops.run_bootstrap(member_list(galera), transport_for(members), start_timeout=120.0)
    assert f"{node3.name} reported no Galera data at all" in str(rejected.value)
    assert not any(node.running for node in galera.nodes)

    plan = galera_ops.run_bootstrap(member_list(galera), transport_for(members), force=node2.name, start_timeout=120.0)

    assert plan.node == node2.name
    assert plan.joiners == (node1.name, node3.name)
    galera.wait_healthy(timeout=90)
    assert count_rows(node3, "before-replacement") >= 3
