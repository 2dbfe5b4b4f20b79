"""The check of a stack change against the running cluster: the rules, and reading the fake API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from existing import ExistingCluster, ExistingServer, change_problems, read_existing
from harness.fakecloud.testing import FakeCloudEnv, serve_fake
from mailcow_ha.errors import CloudError
from mailcow_ha.stack import StackConfig, parse_stack


def make_stack(**overrides: Any) -> StackConfig:
    values = {
        "mailHostname": "mail.example.org",
        "runtimeRepository": "https://git.example.org/ops/mailcow-ha.git",
        "runtimeRef": "b" * 40,
        "hcloudToken": "token",
        **overrides,
    }
    return parse_stack(values, {"hcloudToken"}, stack="prod")


def servers(count: int, location: str = "fsn1", labels: dict[str, str] | None = None) -> tuple[ExistingServer, ...]:
    return tuple(
        ExistingServer(100 + index, f"mailcow-prod-{index}", index, location, f"10.0.1.{10 + index}", labels)
        for index in range(1, count + 1)
    )


def cluster(count: int, holder: int = 1, **changes: Any) -> ExistingCluster:
    return ExistingCluster(
        servers=servers(count),
        shared_volume_server=100 + holder,
        floating_ip_servers=changes.pop("floating_ip_servers", {"ipv4": 100 + holder}),
        **changes,
    )


def test_first_deployment_allowed() -> None:
    assert change_problems(make_stack(nodeCount=3), ExistingCluster()) == []


def test_renamed_cluster_rejected() -> None:
    problems = change_problems(make_stack(clusterName="mail-eu"), ExistingCluster(other_clusters=("mailcow-prod",)))

    assert len(problems) == 1
    assert "the project has no node of cluster mail-eu but nodes of mailcow-prod" in problems[0]
    assert "set clusterName to its name" in problems[0]


@pytest.mark.parametrize(("before", "after"), [(3, 5), (5, 9), (5, 3), (7, 5), (9, 5), (3, 3)])
def test_safe_node_counts_allowed(before: int, after: int) -> None:
    assert change_problems(make_stack(nodeCount=after), cluster(before)) == []


@pytest.mark.parametrize(("before", "after", "step"), [(7, 3, 5), (9, 3, 5)])
def test_scale_in_keeps_galera_majority(before: int, after: int, step: int) -> None:
    problems = change_problems(make_stack(nodeCount=after), cluster(before))

    assert len(problems) == 1
    assert f"deletes {before - after} of {before} Galera members at once" in problems[0]
    assert f"Scale in to {step} first" in problems[0]


def test_scale_in_rejects_volume_holder() -> None:
    problems = change_problems(make_stack(nodeCount=3), cluster(5, holder=5, floating_ip_servers={"ipv4": 101}))

    assert len(problems) == 1
    assert "deletes mailcow-prod-5, to which a failover moved the shared data volume" in problems[0]
    assert "mailcow-ha switchover --to mailcow-prod-1" in problems[0]


def test_scale_in_rejects_floating_ip_holder() -> None:
    existing = cluster(5, holder=1, floating_ip_servers={"ipv4": 101, "ipv6": 104})

    problems = change_problems(make_stack(nodeCount=3, floatingIpv6=True), existing)

    assert len(problems) == 1
    assert "deletes mailcow-prod-4, to which a failover moved the floating ipv6" in problems[0]


def test_new_location_rejected() -> None:
    problems = change_problems(make_stack(location="nbg1"), cluster(3))

    assert len(problems) == 1
    assert "location is 'nbg1', but mailcow-prod-1 runs in 'fsn1'" in problems[0]


def test_new_subnet_rejected() -> None:
    problems = change_problems(make_stack(networkCidr="10.8.0.0/16", subnetCidr="10.8.1.0/24"), cluster(3))

    assert len(problems) == 1
    assert (
        "mailcow-prod-1 has private address 10.0.1.11, but networkCidr and subnetCidr give it 10.8.1.11"
        in (problems[0])
    )


@pytest.mark.parametrize(("ipv6", "kinds"), [(True, {"ipv4"}), (False, {"ipv4", "ipv6"})])
def test_floating_ipv6_fixed_at_creation(ipv6: bool, kinds: set[str]) -> None:
    existing = cluster(3, floating_ip_servers=dict.fromkeys(kinds, 101))

    problems = change_problems(make_stack(floatingIpv6=ipv6), existing)

    assert len(problems) == 1
    assert "floatingIpv6 is" in problems[0]
    assert "fixed at creation" in problems[0]


@pytest.mark.parametrize(
    ("key", "value", "label"), [("virtualRouterId", 52, "vrrp-router-id"), ("advertInterval", 2, "vrrp-advert-int")]
)
def test_vrrp_settings_fixed_at_creation(key: str, value: int, label: str) -> None:
    existing = ExistingCluster(
        servers=servers(3, labels={"vrrp-router-id": "51", "vrrp-advert-int": "1"}),
        shared_volume_server=101,
        floating_ip_servers={"ipv4": 101},
    )

    assert change_problems(make_stack(), existing) == []
    problems = change_problems(make_stack(**{key: value}), existing)
    assert len(problems) == 1
    assert f"{key} is {value}, but the running nodes use" in problems[0]


def test_vrrp_settings_unknown_without_labels() -> None:
    assert change_problems(make_stack(virtualRouterId=52), cluster(3)) == []


@pytest.fixture
def fake() -> Iterator[FakeCloudEnv]:
    with serve_fake() as env:
        yield env


def create_cluster(env: FakeCloudEnv, count: int, holder: int, *, ipv6: bool = False) -> list[int]:
    """Create the cluster as the Pulumi program labels it; return the server ids by node index minus one."""
    network = env.fake.create_network("mailcow-prod-network", "10.0.0.0/16", subnet="10.0.1.0/24")
    ids = [
        env.fake.create_server(
            f"mailcow-prod-{index}",
            labels={"cluster": "mailcow-prod", "role": "node", "node": str(index), "vrrp-router-id": "51"},
            network_id=network.id,
            private_ip=f"10.0.1.{10 + index}",
        ).id
        for index in range(1, count + 1)
    ]
    env.fake.create_volume(
        "mailcow-prod-shared-data",
        server_id=ids[holder - 1],
        labels={"cluster": "mailcow-prod", "role": "shared-data"},
    )
    env.fake.create_volume(
        "mailcow-prod-1-db", server_id=ids[0], labels={"cluster": "mailcow-prod", "role": "galera", "node": "1"}
    )
    for kind in ("ipv4", "ipv6") if ipv6 else ("ipv4",):
        env.fake.create_floating_ip(
            f"mailcow-prod-{kind}", type=kind, server_id=ids[holder - 1], labels={"cluster": "mailcow-prod"}
        )
    env.fake.create_server("other-1", labels={"cluster": "other", "role": "node", "node": "1"})
    return ids


def test_read_existing_from_api(fake: FakeCloudEnv) -> None:
    ids = create_cluster(fake, 5, holder=4, ipv6=True)

    existing = read_existing("mailcow-prod", fake.token, fake.url)

    assert [server.name for server in existing.servers] == [f"mailcow-prod-{index}" for index in range(1, 6)]
    assert [server.index for server in existing.servers] == [1, 2, 3, 4, 5]
    assert existing.servers[2].private_ip == "10.0.1.13"
    assert existing.servers[0].location == "fsn1"
    assert existing.servers[0].labels is not None
    assert existing.servers[0].labels["vrrp-router-id"] == "51"
    assert existing.shared_volume_server == ids[3]
    assert existing.floating_ip_servers == {"ipv4": ids[3], "ipv6": ids[3]}
    assert existing.other_clusters == ("other",)


def test_read_existing_empty_project(fake: FakeCloudEnv) -> None:
    existing = read_existing("mailcow-prod", fake.token, fake.url)

    assert existing == ExistingCluster()


def test_read_existing_rejected_token(fake: FakeCloudEnv) -> None:
    with pytest.raises(CloudError) as raised:
        read_existing("mailcow-prod", "wrong-token", fake.url)

    assert "the change cannot be checked against the running cluster" in str(raised.value)
    assert "wrong-token" not in str(raised.value)
