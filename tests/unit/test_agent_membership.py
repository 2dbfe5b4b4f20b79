"""Membership sync: members from server labels, rewrite and reload only when they change."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.nodeconfig import node_config_dict
from mailcow_ha.adapters.hetzner import ServerInfo
from mailcow_ha.agent.membership import (
    Member,
    Membership,
    MembershipError,
    MembershipSync,
    decide_update,
    load_membership,
    members_from_servers,
    validate_members,
)
from mailcow_ha.config import NodeConfig, parse_config
from mailcow_ha.deadline import Deadline


def server(
    index: int, *, role: str = "node", label: str | None = None, ip: str | None = "", name: str = ""
) -> ServerInfo:
    return ServerInfo(
        id=100 + index,
        name=name or f"mailcow-ha-test-{index}",
        labels={"cluster": "mailcow-ha-test", "role": role, "node": str(index) if label is None else label},
        status="running",
        private_ip=f"10.0.1.{10 + index}" if ip == "" else ip,
        public_ipv4=None,
    )


def test_members_from_labelled_servers() -> None:
    members, skipped = members_from_servers(
        [server(3), server(1), server(2, label="x"), server(4, ip=None), server(5, role="galera")]
    )

    assert members == [
        Member(1, "mailcow-ha-test-1", "10.0.1.11", 101),
        Member(3, "mailcow-ha-test-3", "10.0.1.13", 103),
    ]
    assert skipped == [
        "mailcow-ha-test-2: label node='x' is not a node index 1..9",
        "mailcow-ha-test-4: no address in a private network yet",
    ]


def test_validate_rejects_duplicates_and_absence() -> None:
    members, _ = members_from_servers([server(1), server(2)])
    duplicate, _ = members_from_servers([server(1), server(2, ip="10.0.1.11")])

    validate_members(members, "mailcow-ha-test-1")
    with pytest.raises(MembershipError, match=r"share a private address: 10\.0\.1\.11"):
        validate_members(duplicate, "mailcow-ha-test-1")
    with pytest.raises(MembershipError, match="'other' is not among the servers"):
        validate_members(members, "other")


def test_decide_update_cases() -> None:
    stored = Membership((Member(1, "a", "10.0.0.1"), Member(2, "b", "10.0.0.2")), None, "api")
    same = [Member(2, "b", "10.0.0.2", 7), Member(1, "a", "10.0.0.1", 6)]
    grown = [*same, Member(3, "c", "10.0.0.3")]

    assert decide_update(stored, same, files_current=True) == (False, "members unchanged")
    assert decide_update(stored, same, files_current=False)[0]
    update, reason = decide_update(stored, grown, files_current=True)
    assert update
    assert reason == "members changed from [a, b] to [b, a, c]"


class FakeCloud:
    def __init__(self, servers: list[ServerInfo]) -> None:
        self.servers = servers
        self.calls = 0

    def cluster_servers(self, cluster: str, deadline: Deadline) -> list[ServerInfo]:
        self.calls += 1
        return list(self.servers)


class FakeKeepalived:
    def __init__(self) -> None:
        self.reloads = 0

    def running(self) -> bool:
        return True

    def reload(self) -> None:
        self.reloads += 1


@pytest.fixture
def config(tmp_path: Path) -> NodeConfig:
    document = node_config_dict(
        node={"name": "mailcow-ha-test-1", "index": 1, "private_ip": "10.0.1.11"},
        peers=[],
        paths={
            "state_dir": str(tmp_path / "state"),
            "run_dir": str(tmp_path / "run"),
            "keepalived_conf": str(tmp_path / "etc" / "keepalived.conf"),
            "galera_conf": str(tmp_path / "etc" / "galera.cnf"),
        },
    )
    document["hetzner"].pop("server_id")
    return parse_config(document)


def test_sync_writes_then_reloads_only_on_change(config: NodeConfig) -> None:
    cloud = FakeCloud([server(1), server(2), server(3)])
    keepalived = FakeKeepalived()
    sync = MembershipSync(config, cloud, keepalived=keepalived, check_config=False)  # type: ignore[arg-type]

    first = sync.sync(Deadline.after("test", 5))
    second = sync.sync(Deadline.after("test", 5))
    cloud.servers.append(server(4))
    third = sync.sync(Deadline.after("test", 5))

    assert (first.updated, second.updated, third.updated) == (True, False, True)
    assert keepalived.reloads == 2
    assert cloud.calls == 3
    keepalived_conf = config.paths.keepalived_conf.read_text()
    assert "10.0.1.14" in keepalived_conf
    assert "10.0.1.11\n" not in keepalived_conf.split("unicast_peer")[1].split("}")[0]
    assert "gcomm://10.0.1.11:4567,10.0.1.12:4567,10.0.1.13:4567,10.0.1.14:4567" in config.paths.galera_conf.read_text()
    stored = load_membership(config)
    assert stored.source == "api"
    assert stored.server_id == 101
    assert [member.name for member in stored.members] == [f"mailcow-ha-test-{index}" for index in (1, 2, 3, 4)]


def test_sync_repairs_edited_file(config: NodeConfig) -> None:
    keepalived = FakeKeepalived()
    sync = MembershipSync(config, FakeCloud([server(1), server(2)]), keepalived=keepalived, check_config=False)  # type: ignore[arg-type]
    sync.sync(Deadline.after("test", 5))
    config.paths.keepalived_conf.write_text("edited by hand\n")

    result = sync.sync(Deadline.after("test", 5))

    assert result.updated
    assert keepalived.reloads == 2
    assert config.paths.keepalived_conf.read_text().startswith("# Rendered by mailcow-ha")


def test_sync_rejects_wrong_own_address(config: NodeConfig) -> None:
    sync = MembershipSync(config, FakeCloud([server(1, ip="10.0.1.99"), server(2)]), check_config=False)

    with pytest.raises(MembershipError, match=r"node\.private_ip is 10\.0\.1\.11"):
        sync.sync(Deadline.after("test", 5))
    assert not config.paths.keepalived_conf.exists()


def test_sync_alone_keeps_old_files(config: NodeConfig) -> None:
    sync = MembershipSync(config, FakeCloud([server(1)]), check_config=False)

    with pytest.raises(MembershipError, match="no unicast peer"):
        sync.sync(Deadline.after("test", 5))
    assert not config.paths.keepalived_conf.exists()


def test_load_falls_back_to_config_peers(tmp_path: Path) -> None:
    config = parse_config(node_config_dict(paths={"state_dir": str(tmp_path)}))

    membership = load_membership(config)

    assert membership.source == "config"
    assert membership.server_id == 101
    assert [member.index for member in membership.members] == [1, 2, 3]
