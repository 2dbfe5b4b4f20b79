"""The cluster's resources as they exist in the Hetzner project, and the stack changes that would harm them.

Pulumi plans from its own state, which does not know where a failover moved the shared volume
and the floating IPs, and it deletes the servers of a scale-in all at once. Before anything is
declared, the program therefore reads the cluster's servers, shared volume and floating IPs by
their labels and rejects:
- a scale-in that deletes the server that has the shared volume attached or a floating IP assigned;
- a scale-in that deletes half or more of the Galera members in one run, because the others
  would lose the majority that keeps them a primary component;
- a new location or a new private address for an existing node, which would replace or
  re-address every node at once;
- adding or removing the floating IPv6 of an existing cluster, because each node's config lists
  the floating IPs it was created with;
- a new VRRP router id or advert interval, read from the servers' labels: nodes created with the
  new values would not hear the others' adverts and would elect a master of their own;
- a new cluster in a project that has nodes of another cluster. Either the cluster name changed
  (a new clusterName, or a renamed stack it derives from), which would create a second cluster
  and delete the first, or the project is shared, which the runtime's project-wide token forbids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailcow_ha.errors import CloudError
from mailcow_ha.stack import StackConfig

if TYPE_CHECKING:
    from hcloud.servers.client import BoundServer

VRRP_LABELS = {"vrrp-router-id": "virtualRouterId", "vrrp-advert-int": "advertInterval"}
"""Server labels that record the VRRP settings a node was created with, and the config key of each."""
REQUEST_TIMEOUT = (5.0, 15.0)
"""Connect and read timeout in seconds of each request."""
MAX_RETRIES = 2
"""Repeats of a request that timed out or hit a transient API error (hcloud's default is 5, up to 60 s apart)."""


@dataclass(frozen=True)
class ExistingServer:
    """A server labelled as a node of the cluster."""

    id: int
    name: str
    index: int
    location: str
    private_ip: str | None
    labels: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ExistingCluster:
    """The cluster's resources in the project, as the API shows them now."""

    servers: Sequence[ExistingServer] = ()
    shared_volume_server: int | None = None
    """Id of the server the shared volume is attached to."""
    floating_ip_servers: Mapping[str, int | None] | None = None
    """Server id of each floating IP by kind (ipv4, ipv6); None when the cluster has no floating IP yet."""
    other_clusters: Sequence[str] = ()
    """Names of other clusters whose nodes are in the same project."""


def read_existing(cluster_name: str, token: str, endpoint: str) -> ExistingCluster:
    """Read the cluster's node servers, shared volume and floating IPs; raise CloudError when the API fails."""
    import hcloud  # noqa: PLC0415  (0.15 s to import; a stack without hcloud:token never calls this)

    client = hcloud.Client(token, api_endpoint=endpoint, application_name="mailcow-ha-pulumi", timeout=REQUEST_TIMEOUT)
    # NOTE: hcloud 2.x has no constructor argument for its retry count, so the private attribute is set.
    base = client._client
    if hasattr(base, "_retry_max_retries"):
        base._retry_max_retries = MAX_RETRIES
    selector = f"cluster={cluster_name}"
    try:
        nodes = client.servers.get_all(label_selector="role=node,cluster")
        volumes = client.volumes.get_all(label_selector=f"{selector},role=shared-data")
        floating_ips = client.floating_ips.get_all(label_selector=selector)
    except (hcloud.APIException, OSError) as error:
        raise CloudError(
            f"reading cluster {cluster_name}'s servers, volume and floating IPs from {endpoint} failed ({error}); "
            "the change cannot be checked against the running cluster. Check hcloud:token and the API status"
        ) from None

    fips: dict[str, int | None] | None = None
    if floating_ips:
        fips = {str(fip.type): fip.server.id if fip.server is not None else None for fip in floating_ips}
    holders = {volume.server.id for volume in volumes if volume.server is not None}
    ours = [node for node in nodes if (node.labels or {}).get("cluster") == cluster_name]
    return ExistingCluster(
        servers=tuple(server for server in map(_node_server, ours) if server is not None),
        shared_volume_server=next(iter(holders), None),
        floating_ip_servers=fips,
        other_clusters=tuple(sorted({str((node.labels or {})["cluster"]) for node in nodes} - {cluster_name})),
    )


def _node_server(server: BoundServer) -> ExistingServer | None:
    labels = dict(server.labels or {})
    index = labels.get("node", "")
    if not index.isdigit() or server.id is None:
        return None
    private = server.private_net or []
    location = server.location.name if server.location is not None else ""
    return ExistingServer(
        id=server.id,
        name=str(server.name),
        index=int(index),
        location=str(location),
        private_ip=str(private[0].ip) if private else None,
        labels=labels,
    )


def vrrp_labels(stack: StackConfig) -> dict[str, str]:
    """Return the server labels that record the stack's VRRP settings."""
    return {"vrrp-router-id": str(stack.virtual_router_id), "vrrp-advert-int": str(stack.advert_interval)}


def change_problems(stack: StackConfig, existing: ExistingCluster) -> list[str]:
    """Return why deploying `stack` over `existing` would harm the running cluster; empty when it would not."""
    if not existing.servers:
        if not existing.other_clusters:
            return []
        others = ", ".join(existing.other_clusters)
        return [
            f"the project has no node of cluster {stack.cluster_name} but nodes of {others}. If that is this "
            f"stack's cluster, clusterName or the stack name changed, and deploying would create a second cluster "
            f"and delete the first: set clusterName to its name. A new cluster needs its own Hetzner project, "
            "because the nodes' API token can act on everything in the project"
        ]
    problems = _scale_in_problems(stack, existing)
    for server in sorted(existing.servers, key=lambda item: item.index):
        if server.location != stack.location:
            problems.append(
                f"location is {stack.location!r}, but {server.name} runs in {server.location!r}: the location is "
                "fixed at creation, and a new one would replace every server and volume. Set it back"
            )
            break
    for server in sorted(existing.servers, key=lambda item: item.index):
        expected = str(stack.private_ip(server.index))
        if server.index <= stack.node_count and server.private_ip not in (None, expected):
            problems.append(
                f"{server.name} has private address {server.private_ip}, but networkCidr and subnetCidr give it "
                f"{expected}: both are fixed at creation, because each node's config contains its address. "
                "Set them back"
            )
            break
    problems.extend(_vrrp_problems(stack, existing))
    wanted = {"ipv4", "ipv6"} if stack.floating_ipv6 else {"ipv4"}
    if existing.floating_ip_servers is not None and set(existing.floating_ip_servers) != wanted:
        has = "has" if "ipv6" in existing.floating_ip_servers else "has no"
        problems.append(
            f"floatingIpv6 is {str(stack.floating_ipv6).lower()}, but the cluster {has} floating IPv6: it is fixed at "
            "creation, because each node's config lists the floating IPs it moves. Set it back"
        )
    return problems


def _vrrp_problems(stack: StackConfig, existing: ExistingCluster) -> list[str]:
    problems = []
    wanted = vrrp_labels(stack)
    for label, key in VRRP_LABELS.items():
        running = sorted({(server.labels or {}).get(label, "") for server in existing.servers} - {""})
        if running and running != [wanted[label]]:
            problems.append(
                f"{key} is {wanted[label]}, but the running nodes use {', '.join(running)}: it is fixed at creation, "
                "because nodes with another value would not hear the others and would elect a master of their own. "
                "Set it back"
            )
    return problems


def _scale_in_problems(stack: StackConfig, existing: ExistingCluster) -> list[str]:
    removed = [server for server in existing.servers if server.index > stack.node_count]
    if not removed:
        return []
    problems = []
    removed_ids = {server.id: server.name for server in removed}
    holders = [("the shared data volume", existing.shared_volume_server)]
    holders += [
        (f"the floating {kind}", server) for kind, server in sorted((existing.floating_ip_servers or {}).items())
    ]
    for what, server_id in holders:
        if server_id in removed_ids:
            problems.append(
                f"nodeCount {stack.node_count} deletes {removed_ids[server_id]}, to which a failover moved {what}. "
                f"Run `mailcow-ha switchover --to {stack.node_name(1)}` on any node first, then `pulumi up` again"
            )
    members = len(existing.servers)
    remaining = members - len(removed)
    if 2 * remaining <= members:
        step = next(count for count in (3, 5, 7, 9) if 2 * count > members)
        problems.append(
            f"nodeCount {stack.node_count} deletes {len(removed)} of {members} Galera members at once, and the "
            f"{remaining} left would lose their majority and stop serving. Scale in to {step} first, wait until "
            f"`mailcow-ha status` shows Galera with {step} members, then continue"
        )
    return problems
