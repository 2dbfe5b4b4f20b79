"""The lab's state as one view, and the report that `mailcow-ha-lab status` prints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lab.observe import (
    AGENT_COMM,
    LabView,
    NodeView,
    floating_ip_routes,
    loop_unplugged,
    mounted_devices_of_image,
    now,
    running_containers,
    scan_processes,
)
from lab.shell import LabError

if TYPE_CHECKING:
    from lab.cluster import Lab


def lab_view(lab: Lab) -> LabView:
    """Return the lab's state now (see lab.observe); cheap enough for 10 samples a second."""
    wall, monotonic = now()

    # One copy of the node list: a scale-out may add nodes while a sampler thread reads them.
    nodes = sorted(lab.nodes.items())
    namespaces = {index: node.machine.pid_namespace for index, node in nodes}
    table = scan_processes(namespace for namespace in namespaces.values() if namespace)
    image = lab.shared_image()
    cache: dict[str, str | None] = {}
    views = []

    for index, node in nodes:
        namespace = namespaces[index]
        if namespace is None:
            views.append(NodeView(node.name, index, powered=False))
            continue
        own = table.by_namespace.get(namespace, [])
        comms = {process.comm for process in own if process.state != "Z"}
        try:
            health: str | None = node.machine.path(node.config.paths.health_file).read_text().strip()
        except (OSError, LabError):
            health = None
        mounts = mounted_devices_of_image(node.machine.mountinfo(), image, cache)
        views.append(
            NodeView(
                node.name,
                index,
                powered=True,
                shared_mounts=tuple(point for point, _ in mounts),
                fenced_mounts=tuple(point for point, device in mounts if loop_unplugged(device)),
                containers=tuple(running_containers(own, table.live_children)),
                keepalived="keepalived" in comms,
                agent=AGENT_COMM in comms,
                health=health,
            )
        )
    routes = floating_ip_routes(lab.network.router_ns, lab.floating_addresses())
    return LabView(wall, monotonic, tuple(views), routes)


def lab_status(lab: Lab) -> dict[str, Any]:
    """Return a status report: one line per node and per floating IP, and the raw view."""
    view = lab.view()
    by_public_ip = {node.server.public_ip: node.name for node in lab.nodes.values()}
    lines = []
    for node_view in view.nodes:
        node = lab.nodes[node_view.index]
        database = node.database.try_status()
        galera = (
            "down" if database is None else f"{database.cluster_status}/{database.local_state}/{database.cluster_size}"
        )
        lines.append(
            f"  {node_view.name:<16} {'on' if node_view.powered else 'OFF':<3} "
            f"health={node_view.health or '-':<3} keepalived={'yes' if node_view.keepalived else 'no':<3} "
            f"agent={'yes' if node_view.agent else 'no':<3} galera={galera:<20} "
            f"mounted={','.join(_mount_text(node_view, point) for point in node_view.shared_mounts) or '-'} "
            f"containers={len(node_view.containers)}"
        )
    for address, next_hop in view.floating_ip_routes.items():
        target = by_public_ip.get(next_hop or "", "nowhere")
        lines.append(f"  floating IP {address} -> {next_hop or 'unreachable'} ({target})")
    return {"lines": lines, "view": view}


def _mount_text(view: NodeView, point: str) -> str:
    return f"{point} (detached)" if point in view.fenced_mounts else point
