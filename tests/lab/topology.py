"""The lab's network: bridges, a router, a client and the cloud, each in a namespace of its own.

```
 client 198.18.1.2  ──┐                     ┌── node n: eth0 <public ip>/32 (+ floating IPs)
                       router ── public bridge ┤
 cloud  198.18.0.2  ───┘ 172.31.1.1           └── node n: enp7s0 <private ip> ── private bridge ── ops
```
As on Hetzner Cloud, a node's public address is a /32 whose gateway 172.31.1.1 is reached on
link, and the router sends each floating IP to the public address of the server that the cloud
API routes it to; the private network is one layer-2 segment. No namespace has a route out of
the lab: the router knows only the lab's own prefixes, and nothing links to the host.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lab.manifest import Manifest
from lab.shell import LabError, ip, run

log = logging.getLogger(__name__)

GATEWAY = "172.31.1.1"
"""The router's address on the public bridge; Hetzner Cloud uses this address as every server's gateway."""
CLIENT_NETWORK = ipaddress.IPv4Network("198.18.1.0/24")
CLIENT_ADDRESS = "198.18.1.2"
CLOUD_NETWORK = ipaddress.IPv4Network("198.18.0.0/24")
CLOUD_ADDRESS = "198.18.0.2"
PUBLIC_INTERFACE = "eth0"
PRIVATE_INTERFACE = "enp7s0"
_ISOLATED_BRIDGE = "br1"
"""The private network's second bridge, which carries the isolated side of a partition."""


@dataclass(frozen=True)
class NodeNetwork:
    """One node's place in the lab network."""

    name: str
    index: int
    public_ip: str
    private_ip: str


def namespace_name(lab_id: str, role: str) -> str:
    """Return the network namespace name of a lab role (`public`, `router`, `n1`...)."""
    return f"{lab_id}-{role}"


class LabNetwork:
    """Creates and changes the lab's namespaces and links; every name starts with the lab id."""

    def __init__(self, lab_id: str, manifest: Manifest, private_network: str) -> None:
        self.lab_id = lab_id
        self.manifest = manifest
        self.private_network = ipaddress.IPv4Network(private_network)
        self.public_ns = namespace_name(lab_id, "public")
        self.private_ns = namespace_name(lab_id, "private")
        self.router_ns = namespace_name(lab_id, "router")
        self.client_ns = namespace_name(lab_id, "client")
        self.cloud_ns = namespace_name(lab_id, "cloud")
        self.ops_ns = namespace_name(lab_id, "ops")

    @property
    def ops_address(self) -> str:
        """The private address of the ops namespace, where the lab's database writer runs."""
        return str(self.private_network.broadcast_address - 1)

    def node_ns(self, index: int) -> str:
        return namespace_name(self.lab_id, f"n{index}")

    def create_core(self) -> None:
        """Create the bridges, the router, and the client, cloud and ops namespaces."""
        for namespace in (self.public_ns, self.private_ns, self.router_ns, self.client_ns, self.cloud_ns, self.ops_ns):
            self._add_namespace(namespace)
        for bridge_ns, bridge in (
            (self.public_ns, "br0"),
            (self.private_ns, "br0"),
            (self.private_ns, _ISOLATED_BRIDGE),
        ):
            ip("link", "add", bridge, "type", "bridge", "forward_delay", "0", netns=bridge_ns)
            ip("link", "set", bridge, "up", netns=bridge_ns)

        self._plug(self.router_ns, "eth0", self.public_ns, "router")
        ip("address", "add", f"{GATEWAY}/32", "dev", "eth0", netns=self.router_ns)
        self._link_pair(self.router_ns, "eth1", self.client_ns, "eth0")
        ip("address", "add", f"{_first_host(CLIENT_NETWORK)}/24", "dev", "eth1", netns=self.router_ns)
        ip("address", "add", f"{CLIENT_ADDRESS}/24", "dev", "eth0", netns=self.client_ns)
        ip("route", "add", "default", "via", _first_host(CLIENT_NETWORK), netns=self.client_ns)
        self._link_pair(self.router_ns, "eth2", self.cloud_ns, "eth0")
        ip("address", "add", f"{_first_host(CLOUD_NETWORK)}/24", "dev", "eth2", netns=self.router_ns)
        ip("address", "add", f"{CLOUD_ADDRESS}/24", "dev", "eth0", netns=self.cloud_ns)
        ip("route", "add", "default", "via", _first_host(CLOUD_NETWORK), netns=self.cloud_ns)
        run(["ip", "netns", "exec", self.router_ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], timeout=10.0)

        self._plug(self.ops_ns, PRIVATE_INTERFACE, self.private_ns, "ops")
        prefix = self.private_network.prefixlen
        ip("address", "add", f"{self.ops_address}/{prefix}", "dev", PRIVATE_INTERFACE, netns=self.ops_ns)

    def add_node(self, node: NodeNetwork) -> str:
        """Create a node's namespace with its public and private interfaces; return the namespace."""
        namespace = self.node_ns(node.index)
        self._add_namespace(namespace)
        self._plug(namespace, PUBLIC_INTERFACE, self.public_ns, f"n{node.index}")
        self._plug(namespace, PRIVATE_INTERFACE, self.private_ns, f"n{node.index}")
        ip("address", "add", f"{node.public_ip}/32", "dev", PUBLIC_INTERFACE, netns=namespace)
        ip("route", "add", GATEWAY, "dev", PUBLIC_INTERFACE, "scope", "link", netns=namespace)
        ip("route", "add", "default", "via", GATEWAY, "dev", PUBLIC_INTERFACE, "onlink", netns=namespace)
        prefix = self.private_network.prefixlen
        ip("address", "add", f"{node.private_ip}/{prefix}", "dev", PRIVATE_INTERFACE, netns=namespace)
        ip("route", "replace", f"{node.public_ip}/32", "dev", "eth0", netns=self.router_ns)
        return namespace

    def add_floating_ip_address(self, index: int, address: str) -> None:
        """Configure a floating IP on a node's public interface, as its network config does at boot."""
        ip("address", "replace", f"{address}/32", "dev", PUBLIC_INTERFACE, netns=self.node_ns(index))

    def route_floating_ip(self, address: str, public_ip: str | None) -> None:
        """Make the router send a floating IP to a server's public address, or drop it (None)."""
        if public_ip is None:
            ip("route", "replace", "unreachable", f"{address}/32", netns=self.router_ns)
        else:
            ip("route", "replace", f"{address}/32", "via", public_ip, "dev", "eth0", "onlink", netns=self.router_ns)

    def floating_ip_next_hop(self, address: str) -> str | None:
        """Return the public address the router sends a floating IP to, or None if it drops it."""
        output = ip("route", "show", f"{address}/32", netns=self.router_ns).stdout.split()
        if "via" in output:
            return output[output.index("via") + 1]
        return None

    def set_link(self, index: int, network: str, up: bool) -> None:
        """Take a node's port on the `public` or `private` bridge down or up, like a pulled cable."""
        bridge_ns = self.public_ns if network == "public" else self.private_ns
        ip("link", "set", f"n{index}", "up" if up else "down", netns=bridge_ns)

    def partition(self, isolated: Iterable[int]) -> None:
        """Split the private network: the `isolated` nodes see only each other, the rest likewise.

        The isolated nodes' ports move to a second bridge (this kernel has no VLAN filtering on
        bridges), so each side keeps a working layer-2 segment of its own.
        """
        for index in isolated:
            ip("link", "set", f"n{index}", "master", _ISOLATED_BRIDGE, netns=self.private_ns)

    def heal(self, indexes: Iterable[int]) -> None:
        """Undo `partition` for the given nodes: their private ports rejoin the main bridge."""
        for index in indexes:
            ip("link", "set", f"n{index}", "master", "br0", netns=self.private_ns)

    def _add_namespace(self, namespace: str) -> None:
        if Path(f"/run/netns/{namespace}").exists():
            raise LabError(
                f"network namespace {namespace} already exists; run `mailcow-ha-lab down` for lab {self.lab_id}"
            )
        self.manifest.record("netns", namespace)
        run(["ip", "netns", "add", namespace], timeout=10.0)
        ip("link", "set", "lo", "up", netns=namespace)

    def _plug(self, namespace: str, interface: str, bridge_ns: str, port: str) -> None:
        """Connect `interface` in `namespace` to the bridge in `bridge_ns` through port `port`."""
        self._link_pair(namespace, interface, bridge_ns, port)
        ip("link", "set", port, "master", "br0", netns=bridge_ns)

    @staticmethod
    def _link_pair(namespace: str, interface: str, peer_ns: str, peer: str) -> None:
        ip("link", "add", interface, "type", "veth", "peer", "name", peer, "netns", peer_ns, netns=namespace)
        ip("link", "set", interface, "up", netns=namespace)
        ip("link", "set", peer, "up", netns=peer_ns)


def _first_host(network: ipaddress.IPv4Network) -> str:
    return str(network.network_address + 1)
