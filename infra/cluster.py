"""The cluster as one Pulumi ComponentResource: network, firewall, servers, volumes, floating IPs.

Ordering follows from what user data may contain. The floating IPs and every volume are created
unattached before the servers, so that their ids can go into user data. Attachments and the
floating IP assignments are separate resources created afterwards. Once created, the runtime owns
the server that the shared volume is attached and the floating IPs are assigned to. So those
resources ignore changes of their server and are retained on delete, because the provider's
delete detaches the volume or unassigns the floating IP from whatever server has it, which after
a failover is the running master.

Servers ignore later changes of what cannot change on a running node. A new user data, image or
SSH key list would make the provider replace the server. A new server type makes it power the
server off, hard, before the resize, on every node at the same time. New network settings would
re-address each node, while its config keeps the address it was created with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_hcloud as hcloud
import pulumi_random as random

from existing import vrrp_labels
from mailcow_ha.render.cloudinit import render_user_data
from mailcow_ha.render.nodeconfig import CloudIds, NodeSecrets, floating_ip_interface
from mailcow_ha.stack import StackConfig
from mailcow_ha.stack_rules import ssh_key_identity

COMPONENT_TYPE = "mailcow-ha:index:Cluster"
MAIL_PORTS = (25, 465, 587, 143, 993, 110, 995, 4190)
WEB_PORTS = (80, 443)
ANYWHERE = ["0.0.0.0/0", "::/0"]
SERVER_IGNORED_CHANGES = ["user_data", "image", "ssh_keys", "server_type", "networks"]
MONITORED_PORTS = (("smtp", 25), ("submissions", 465), ("submission", 587), ("imaps", 993), ("https", 443))


@dataclass(frozen=True)
class ClusterArgs:
    """The validated stack config, where the static cloud-init parts are, and the secrets."""

    stack: StackConfig
    static_dir: Path
    hcloud_token: pulumi.Output[str]
    alert_urls: pulumi.Output[list[str]]
    galera_password: pulumi.Output[str] | None = None
    status_api_secret: pulumi.Output[str] | None = None


@dataclass
class NodeResources:
    """The resources of one node."""

    index: int
    name: str
    private_ip: str
    server: hcloud.Server
    db_volume: hcloud.Volume


class Cluster(pulumi.ComponentResource):
    """A mailcow-ha cluster of `nodeCount` servers with its network, volumes and floating IPs."""

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        stack = args.stack
        self._name = name
        self._stack = stack
        self._labels = {"cluster": stack.cluster_name}

        galera_password = args.galera_password or self._random_secret("galera-password")
        status_api_secret = args.status_api_secret or self._random_secret("status-api-secret")

        self.network = hcloud.Network(
            f"{name}-network",
            name=f"{stack.cluster_name}-network",
            ip_range=str(stack.network_cidr),
            labels=self._labels,
            opts=self._child(),
        )
        self.subnet = hcloud.NetworkSubnet(
            f"{name}-subnet",
            network_id=self.network.id.apply(int),
            type="cloud",
            network_zone=stack.network_zone,
            ip_range=str(stack.subnet_cidr),
            opts=self._child(),
        )
        self.placement_group = hcloud.PlacementGroup(
            f"{name}-spread",
            name=f"{stack.cluster_name}-spread",
            type="spread",
            labels=self._labels,
            opts=self._child(),
        )
        self.firewall = hcloud.Firewall(
            f"{name}-firewall",
            name=f"{stack.cluster_name}-public",
            rules=firewall_rules([str(cidr) for cidr in stack.ssh_allowed_cidrs]),
            labels=self._labels,
            opts=self._child(),
        )
        # Named after the key, not its place in the list: removing one key must not replace the
        # others, because Hetzner rejects a new copy of a key while the old one still exists.
        self.ssh_keys = [
            hcloud.SshKey(
                f"{name}-admin-key-{key_digest(key)}",
                name=f"{stack.cluster_name}-admin-{key_digest(key)}",
                public_key=key,
                labels=self._labels,
                opts=self._child(),
            )
            for key in stack.admin_ssh_keys
        ]

        self.floating_ipv4 = self._floating_ip("ipv4")
        self.floating_ipv6 = self._floating_ip("ipv6") if stack.floating_ipv6 else None
        self.shared_volume = hcloud.Volume(
            f"{name}-shared-data",
            name=f"{stack.cluster_name}-shared-data",
            size=stack.shared_volume_size,
            location=stack.location,
            format="ext4",
            automount=False,
            labels={**self._labels, "role": "shared-data"},
            # The shared volume contains every mailbox, so deleting it takes an explicit unprotect.
            # The runtime moves it between servers, and server_id is how the provider shows that.
            opts=self._child(protect=True, ignore_changes=["server_id"]),
        )

        kinds = {"ipv4": self.floating_ipv4, "ipv6": self.floating_ipv6}
        self.floating_ips = {kind: ip for kind, ip in kinds.items() if ip is not None}
        floating_ips = list(self.floating_ips.values())
        secrets = pulumi.Output.all(args.hcloud_token, galera_password, status_api_secret, args.alert_urls).apply(
            lambda values: NodeSecrets(values[0], values[1], values[2], tuple(values[3]))
        )
        self.nodes = [self._node(index, floating_ips, secrets, args.static_dir) for index in stack.node_indexes]
        first = self.nodes[0].server

        # NOTE: if `pulumi refresh` runs while a failover has the volume detached or a floating IP
        # unassigned, the provider drops that resource from the state and the next `pulumi up`
        # attaches or assigns it to node 1 again. Refresh only while the cluster is settled.
        hcloud.VolumeAttachment(
            f"{name}-shared-data-attachment",
            volume_id=self.shared_volume.id.apply(int),
            server_id=first.id.apply(int),
            automount=False,
            opts=self._child(ignore_changes=["server_id"], retain_on_delete=True),
        )
        for kind, floating_ip in self.floating_ips.items():
            hcloud.FloatingIpAssignment(
                f"{name}-floating-{kind}-assignment",
                floating_ip_id=floating_ip.id.apply(int),
                server_id=first.id.apply(int),
                opts=self._child(ignore_changes=["server_id"], retain_on_delete=True),
            )
        self._reverse_dns()

        self.outputs = self._outputs()
        self.register_outputs(self.outputs)

    def _child(self, **options: Any) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, **options)

    def _random_secret(self, suffix: str) -> pulumi.Output[str]:
        password = random.RandomPassword(f"{self._name}-{suffix}", length=32, special=False, opts=self._child())
        return pulumi.Output.secret(password.result)

    def _floating_ip(self, kind: str) -> hcloud.FloatingIp:
        return hcloud.FloatingIp(
            f"{self._name}-floating-{kind}",
            name=f"{self._stack.cluster_name}-{kind}",
            type=kind,
            home_location=self._stack.location,
            labels=self._labels,
            # The address is in DNS, SPF and the reverse DNS, so a new one takes an explicit unprotect.
            # The runtime assigns it to the master, and server_id is how the provider shows that.
            opts=self._child(protect=True, ignore_changes=["server_id"]),
        )

    def _node(
        self,
        index: int,
        floating_ips: Sequence[hcloud.FloatingIp],
        secrets: pulumi.Output[NodeSecrets],
        static_dir: Path,
    ) -> NodeResources:
        stack = self._stack
        node_name = stack.node_name(index)
        db_volume = hcloud.Volume(
            f"{self._name}-db-{index}",
            name=f"{node_name}-db",
            size=stack.db_volume_size,
            location=stack.location,
            format="ext4",
            automount=False,
            labels={**self._labels, "role": "galera", "node": str(index)},
            opts=self._child(),
        )
        addresses = [_interface_address(ip) for ip in floating_ips]
        user_data = pulumi.Output.all(
            pulumi.Output.all(*[ip.id for ip in floating_ips]),
            pulumi.Output.all(*addresses),
            self.shared_volume.id,
            db_volume.id,
            secrets,
        ).apply(
            lambda values: render_user_data(
                stack,
                index,
                CloudIds(
                    floating_ip_ids=[int(value) for value in values[0]],
                    floating_ips=list(values[1]),
                    shared_volume_id=int(values[2]),
                    db_volume_id=int(values[3]),
                ),
                values[4],
                static_dir,
            )
        )
        server = hcloud.Server(
            f"{self._name}-node-{index}",
            name=node_name,
            server_type=stack.server_type,
            image=stack.image,
            location=stack.location,
            placement_group_id=self.placement_group.id.apply(int),
            firewall_ids=[self.firewall.id.apply(int)],
            ssh_keys=[key.id for key in self.ssh_keys],
            labels={**self._labels, "role": "node", "node": str(index), **vrrp_labels(stack)},
            networks=[hcloud.ServerNetworkArgs(network_id=self.network.id.apply(int), ip=str(stack.private_ip(index)))],
            public_nets=[hcloud.ServerPublicNetArgs(ipv4_enabled=True, ipv6_enabled=True)],
            # Secret because it is built from secret outputs (token, passwords).
            user_data=user_data,
            opts=self._child(depends_on=[self.subnet], ignore_changes=SERVER_IGNORED_CHANGES),
        )
        hcloud.VolumeAttachment(
            f"{self._name}-db-{index}-attachment",
            volume_id=db_volume.id.apply(int),
            server_id=server.id.apply(int),
            automount=False,
            opts=self._child(),
        )
        return NodeResources(index, node_name, str(stack.private_ip(index)), server, db_volume)

    def _reverse_dns(self) -> None:
        hcloud.Rdns(
            f"{self._name}-floating-ipv4-rdns",
            floating_ip_id=self.floating_ipv4.id.apply(int),
            ip_address=self.floating_ipv4.ip_address,
            dns_ptr=self._stack.mail_hostname,
            opts=self._child(),
        )
        if self.floating_ipv6 is not None:
            hcloud.Rdns(
                f"{self._name}-floating-ipv6-rdns",
                floating_ip_id=self.floating_ipv6.id.apply(int),
                ip_address=_interface_address(self.floating_ipv6).apply(lambda text: text.split("/")[0]),
                dns_ptr=self._stack.mail_hostname,
                opts=self._child(),
            )

    def _outputs(self) -> dict[str, Any]:
        stack = self._stack
        floating_ipv4 = self.floating_ipv4.ip_address
        floating_ipv6 = (
            _interface_address(self.floating_ipv6).apply(lambda text: text.split("/")[0])
            if self.floating_ipv6 is not None
            else None
        )
        nodes = [
            {
                "name": node.name,
                "index": node.index,
                "serverId": node.server.id,
                "publicIpv4": node.server.ipv4_address,
                "publicIpv6": node.server.ipv6_address,
                "privateIp": node.private_ip,
                "dbVolumeId": node.db_volume.id,
            }
            for node in self.nodes
        ]
        return {
            "mailHostname": stack.mail_hostname,
            "floatingIpv4": floating_ipv4,
            "floatingIpv6": floating_ipv6,
            "sharedVolumeId": self.shared_volume.id,
            "nodes": nodes,
            "monitoringTargets": monitoring_targets(stack, floating_ipv4, nodes),
        }


def firewall_rules(ssh_sources: Sequence[str]) -> list[hcloud.FirewallRuleArgs]:
    """Return the public firewall: mail and web from anywhere, SSH from the admin ranges, ICMP."""
    rules = [
        hcloud.FirewallRuleArgs(
            direction="in", protocol="tcp", port=str(port), source_ips=ANYWHERE, description=f"mail {port}"
        )
        for port in MAIL_PORTS
    ]
    rules.extend(
        hcloud.FirewallRuleArgs(
            direction="in", protocol="tcp", port=str(port), source_ips=ANYWHERE, description=f"web {port}"
        )
        for port in WEB_PORTS
    )
    if ssh_sources:
        rules.append(
            hcloud.FirewallRuleArgs(
                direction="in", protocol="tcp", port="22", source_ips=list(ssh_sources), description="ssh from admins"
            )
        )
    rules.append(hcloud.FirewallRuleArgs(direction="in", protocol="icmp", source_ips=ANYWHERE, description="icmp"))
    return rules


def monitoring_targets(
    stack: StackConfig, floating_ipv4: pulumi.Output[str], nodes: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Return what an external monitor should check: the service on the floating IP, and each node."""
    targets: list[dict[str, Any]] = [
        {"name": f"{stack.cluster_name}-{service}", "kind": "tcp", "host": floating_ipv4, "port": port}
        for service, port in MONITORED_PORTS
    ]
    targets.append({"name": f"{stack.cluster_name}-web", "kind": "http", "host": stack.mail_hostname, "port": 443})
    targets.extend({"name": node["name"], "kind": "ping", "host": node["publicIpv4"], "port": None} for node in nodes)
    return targets


def key_digest(key: str) -> str:
    """Return a short, stable name part for an SSH key, derived from its type and key data."""
    return hashlib.sha256(ssh_key_identity(key).encode()).hexdigest()[:12]


def _interface_address(floating_ip: hcloud.FloatingIp) -> pulumi.Output[str]:
    """Return the address with prefix that nodes configure for a floating IP."""
    return pulumi.Output.all(floating_ip.type, floating_ip.ip_address, floating_ip.ip_network).apply(
        lambda values: floating_ip_interface(values[2] if values[0] == "ipv6" and values[2] else values[1])
    )
