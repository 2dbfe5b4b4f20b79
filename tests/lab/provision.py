"""Create the lab's cloud resources in the fake API and read back what the nodes need.

`CloudLayout` is what the lab builds the nodes from: servers with their addresses and Galera
volumes, the shared volume and the floating IPs, all read from the fake's state, so the lab
uses the ids and addresses the cloud assigned.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from lab.cloudapi import CloudControl
from lab.shell import LabError
from mailcow_ha.stack import StackConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLayout:
    """One server as the cloud sees it."""

    id: int
    name: str
    index: int
    public_ip: str
    private_ip: str
    db_volume_id: int


@dataclass(frozen=True)
class CloudLayout:
    """The cloud resources of one lab cluster."""

    servers: tuple[ServerLayout, ...]
    shared_volume_id: int
    floating_ip_ids: tuple[int, ...]
    floating_ips: tuple[str, ...]
    """Addresses with prefix length, as configured on the public interface (`/32` for IPv4)."""

    def server(self, index: int) -> ServerLayout:
        for server in self.servers:
            if server.index == index:
                return server
        raise LabError(f"the cloud has no server with node index {index}")


def provision_directly(control: CloudControl, stack: StackConfig, indexes: range | list[int]) -> None:
    """Create, through the fake's control API, the resources the Pulumi program declares.

    Used for nodes added after `up` (scale-out) and whenever the Pulumi program is not run.
    """
    state = control.state()
    networks = [network for network in state.get("networks", []) if network["name"] == stack.cluster_name]
    if networks:
        network_id = networks[0]["id"]
    else:
        network_id = control.create(
            "networks",
            name=stack.cluster_name,
            ip_range=str(stack.network_cidr),
            subnet=str(stack.subnet_cidr),
            labels={"cluster": stack.cluster_name},
        )["id"]
    existing = {server["name"] for server in state.get("servers", [])}
    for index in indexes:
        name = stack.node_name(index)
        if name in existing:
            continue
        server = control.create(
            "servers",
            name=name,
            location=stack.location,
            server_type=stack.server_type,
            labels={"cluster": stack.cluster_name, "node-index": str(index)},
            network_id=network_id,
            private_ip=str(stack.private_ip(index)),
        )
        control.create(
            "volumes",
            name=f"{name}-db",
            size=stack.db_volume_size,
            location=stack.location,
            server_id=server["id"],
            labels={"cluster": stack.cluster_name, "role": "galera"},
            format="ext4",
        )
    volume_names = {volume["name"] for volume in state.get("volumes", [])}
    if f"{stack.cluster_name}-data" not in volume_names:
        control.create(
            "volumes",
            name=f"{stack.cluster_name}-data",
            size=stack.shared_volume_size,
            location=stack.location,
            labels={"cluster": stack.cluster_name, "role": "shared"},
            format="ext4",
        )
    if not state.get("floating_ips"):
        control.create(
            "floating_ips",
            name=f"{stack.cluster_name}-ipv4",
            type="ipv4",
            home_location=stack.location,
            labels={"cluster": stack.cluster_name},
        )


def read_layout(control: CloudControl, cluster_name: str) -> CloudLayout:
    """Read the cluster's resources from the fake's state."""
    state = control.state()
    servers_by_id: dict[int, dict[str, Any]] = {
        server["id"]: server
        for server in state.get("servers", [])
        if server.get("labels", {}).get("cluster") == cluster_name
    }
    volumes = [volume for volume in state.get("volumes", []) if volume.get("labels", {}).get("cluster") == cluster_name]
    db_volumes = {
        volume["server"]: volume["id"] for volume in volumes if volume.get("labels", {}).get("role") == "galera"
    }
    shared = [volume["id"] for volume in volumes if volume.get("labels", {}).get("role") == "shared"]
    if len(shared) != 1:
        raise LabError(f"expected one shared volume labelled cluster={cluster_name},role=shared, found {len(shared)}")
    servers = []
    for server_id, server in sorted(servers_by_id.items()):
        name = server["name"]
        index = int(name.rsplit("-", 1)[1])
        private = server.get("private_net") or []
        if not private:
            raise LabError(f"server {name} has no private network attachment")
        if server_id not in db_volumes:
            raise LabError(f"server {name} has no Galera volume attached")
        servers.append(
            ServerLayout(
                server_id, name, index, str(server["public_ipv4"]), str(private[0]["ip"]), db_volumes[server_id]
            )
        )
    floating = [fip for fip in state.get("floating_ips", []) if fip.get("labels", {}).get("cluster") == cluster_name]
    addresses = []
    for fip in floating:
        if fip["type"] == "ipv4":
            addresses.append(f"{ipaddress.IPv4Address(fip['ip'].split('/')[0])}/32")
        else:
            network = ipaddress.IPv6Network(fip["ip"], strict=False)
            addresses.append(f"{network.network_address + 1}/{network.prefixlen}")
    return CloudLayout(
        tuple(sorted(servers, key=lambda server: server.index)),
        shared[0],
        tuple(fip["id"] for fip in floating),
        tuple(addresses),
    )
