"""Pytest support: a served fake with a random token, and a standard cluster inside it.

    from harness.fakecloud.testing import fake_cloud   # in a conftest.py, to use the fixture

`fake_cloud` yields a FakeCloudEnv. Its `cluster()` creates a network, servers labelled
`cluster=<name>`, the shared volume and a floating IP on node 1, as Pulumi would leave them.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hcloud
import pytest

from harness.fakecloud.server import FakeCloudServer
from harness.fakecloud.store import FakeCloud


@dataclass(frozen=True)
class FakeCluster:
    """Ids of a cluster created in the fake."""

    name: str
    network_id: int
    server_ids: list[int]
    """Server ids by node index minus one (node 1 first)."""
    volume_id: int
    floating_ip_ids: list[int]
    private_ips: list[str]


@dataclass
class FakeCloudEnv:
    fake: FakeCloud
    server: FakeCloudServer
    token: str
    clusters: list[FakeCluster] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def cluster(
        self,
        name: str = "mailcow-ha-test",
        *,
        nodes: int = 3,
        location: str = "fsn1",
        floating_ips: int = 1,
        volume_on: int | None = 1,
        ip_on: int | None = 1,
    ) -> FakeCluster:
        """Create a cluster's resources; the volume and floating IPs start on node `volume_on`/`ip_on`."""
        network = self.fake.create_network(f"{name}-net", "10.0.0.0/16", subnet="10.0.1.0/24")
        private_ips = [f"10.0.1.{10 + index}" for index in range(1, nodes + 1)]
        servers = [
            self.fake.create_server(
                f"{name}-{index}",
                location=location,
                labels={"cluster": name, "node-index": str(index)},
                network_id=network.id,
                private_ip=private_ips[index - 1],
            )
            for index in range(1, nodes + 1)
        ]
        server_ids = [server.id for server in servers]
        volume = self.fake.create_volume(
            f"{name}-data",
            size=20,
            location=location,
            server_id=server_ids[volume_on - 1] if volume_on else None,
            labels={"cluster": name, "role": "shared-data"},
        )
        fips = [
            self.fake.create_floating_ip(
                f"{name}-ip{number}",
                home_location=location,
                server_id=server_ids[ip_on - 1] if ip_on else None,
                labels={"cluster": name},
            )
            for number in range(1, floating_ips + 1)
        ]
        cluster = FakeCluster(name, network.id, server_ids, volume.id, [fip.id for fip in fips], private_ips)
        self.clusters.append(cluster)
        return cluster

    def hetzner_section(self, cluster: FakeCluster, node_index: int = 1, **overrides: Any) -> dict[str, Any]:
        """Return a node config `hetzner` section that points node `node_index` at this fake."""
        fips = [self.fake.floating_ips[fip_id] for fip_id in cluster.floating_ip_ids]
        section: dict[str, Any] = {
            "token": self.token,
            "endpoint": self.url,
            "server_id": cluster.server_ids[node_index - 1],
            "floating_ip_ids": cluster.floating_ip_ids,
            "floating_ips": [f"{fip.ip}/32" if fip.type == "ipv4" else fip.ip for fip in fips],
            "shared_volume_id": cluster.volume_id,
        }
        section.update(overrides)
        return section


def unretried_client(token: str, url: str, *, timeout: float = 5.0, poll_interval: float = 0.02) -> hcloud.Client:
    """Return an `hcloud` client that sends each request once, so a test gets every response of the fake.

    hcloud 2.x has no constructor argument for its retry count, so this sets the private attribute
    that the production adapter also sets.
    """
    client = hcloud.Client(token, api_endpoint=url, timeout=timeout, poll_interval=poll_interval)
    client._client._retry_max_retries = 0
    return client


@contextlib.contextmanager
def serve_fake(**fake_options: Any) -> Iterator[FakeCloudEnv]:
    """Serve a new FakeCloud on a free loopback port with a random token; stop it on exit."""
    fake = FakeCloud(**fake_options)
    token = f"fake-{secrets.token_hex(16)}"
    server = FakeCloudServer(fake, token).start()
    try:
        yield FakeCloudEnv(fake, server, token)
    finally:
        server.stop()
        fake.close()


@pytest.fixture
def fake_cloud() -> Iterator[FakeCloudEnv]:
    """A served fake Hetzner Cloud API, new for each test."""
    with serve_fake() as env:
        yield env
