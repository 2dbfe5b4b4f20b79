"""The fake's resources and their JSON shapes, as the Hetzner Cloud API returns them."""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass, field
from typing import Any

from harness.fakecloud.catalog import location_json, server_type_json

SERVER_STATUSES = (
    "running",
    "initializing",
    "starting",
    "stopping",
    "off",
    "deleting",
    "migrating",
    "rebuilding",
    "unknown",
)


def utc_timestamp(unix_time: float) -> str:
    """Format a UNIX time the way the API does (ISO 8601 with offset)."""
    moment = datetime.datetime.fromtimestamp(unix_time, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds")


@dataclass
class PrivateNet:
    network: int
    ip: str
    alias_ips: list[str] = field(default_factory=list)
    mac_address: str = "86:00:00:00:00:01"


@dataclass
class Server:
    id: int
    name: str
    location: str
    server_type: str = "cx22"
    status: str = "running"
    labels: dict[str, str] = field(default_factory=dict)
    public_ipv4: str | None = None
    public_ipv6: str | None = None
    """The server's /64 network, such as `2001:db8:0:1::/64`."""
    private_net: list[PrivateNet] = field(default_factory=list)
    created: float = 0.0


@dataclass
class Volume:
    id: int
    name: str
    location: str
    size: int
    server: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    format: str | None = "ext4"
    status: str = "available"
    created: float = 0.0

    @property
    def linux_device(self) -> str:
        return f"/dev/disk/by-id/scsi-0HC_Volume_{self.id}"


@dataclass
class FloatingIp:
    id: int
    name: str
    type: str
    ip: str
    """The address (IPv4) or the /64 network (IPv6), as the API shows it."""
    home_location: str
    server: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    dns_ptr: dict[str, str | None] = field(default_factory=dict)
    """Reverse DNS entries by address."""
    created: float = 0.0


@dataclass
class Network:
    id: int
    name: str
    ip_range: str
    subnets: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    created: float = 0.0


@dataclass
class Action:
    id: int
    command: str
    resources: list[dict[str, Any]]
    """`{"id": .., "type": ..}` entries; the first is the resource the action locks."""
    started: float
    """UNIX time."""
    started_monotonic: float
    finishes_at: float | None
    """Monotonic time at which it ends; None for an action that never ends."""
    status: str = "running"
    finished: float | None = None
    error: dict[str, str] | None = None
    outcome: str = "success"
    error_code: str = "action_failed"
    error_message: str = "the action failed"

    def progress(self, now: float) -> int:
        if self.status != "running":
            return 100
        if self.finishes_at is None:
            return 0
        span = self.finishes_at - self.started_monotonic
        if span <= 0:
            return 99
        return max(0, min(99, int(100 * (now - self.started_monotonic) / span)))


def server_json(server: Server, *, volumes: list[int], floating_ips: list[int]) -> dict[str, Any]:
    """Return a server as `GET /servers/{id}` shows it."""
    ipv4 = None
    if server.public_ipv4 is not None:
        ipv4 = {"id": server.id * 10 + 1, "ip": server.public_ipv4, "blocked": False, "dns_ptr": "static.example"}
    ipv6 = None
    if server.public_ipv6 is not None:
        ipv6 = {"id": server.id * 10 + 2, "ip": server.public_ipv6, "blocked": False, "dns_ptr": []}
    return {
        "id": server.id,
        "name": server.name,
        "status": server.status,
        "created": utc_timestamp(server.created),
        "public_net": {"ipv4": ipv4, "ipv6": ipv6, "floating_ips": floating_ips, "firewalls": []},
        "private_net": [dataclasses.asdict(entry) for entry in server.private_net],
        "server_type": server_type_json(server.server_type),
        "location": location_json(server.location),
        "image": None,
        "iso": None,
        "rescue_enabled": False,
        "locked": False,
        "backup_window": None,
        "outgoing_traffic": 0,
        "ingoing_traffic": 0,
        "included_traffic": 21990232555520,
        "protection": {"delete": False, "rebuild": False},
        "labels": dict(server.labels),
        "volumes": volumes,
        "load_balancers": [],
        "primary_disk_size": 40,
        "placement_group": None,
    }


def volume_json(volume: Volume) -> dict[str, Any]:
    return {
        "id": volume.id,
        "name": volume.name,
        "server": volume.server,
        "location": location_json(volume.location),
        "size": volume.size,
        "linux_device": volume.linux_device,
        "format": volume.format,
        "protection": {"delete": False},
        "labels": dict(volume.labels),
        "status": volume.status,
        "created": utc_timestamp(volume.created),
    }


def floating_ip_json(floating_ip: FloatingIp) -> dict[str, Any]:
    return {
        "id": floating_ip.id,
        "name": floating_ip.name,
        "description": floating_ip.description,
        "type": floating_ip.type,
        "ip": floating_ip.ip,
        "server": floating_ip.server,
        "dns_ptr": [{"ip": address, "dns_ptr": ptr} for address, ptr in sorted(floating_ip.dns_ptr.items())],
        "home_location": location_json(floating_ip.home_location),
        "blocked": False,
        "protection": {"delete": False},
        "labels": dict(floating_ip.labels),
        "created": utc_timestamp(floating_ip.created),
    }


def network_json(network: Network, *, servers: list[int]) -> dict[str, Any]:
    return {
        "id": network.id,
        "name": network.name,
        "ip_range": network.ip_range,
        "subnets": list(network.subnets),
        "routes": [],
        "servers": servers,
        "load_balancers": [],
        "protection": {"delete": False},
        "labels": dict(network.labels),
        "created": utc_timestamp(network.created),
        "expose_routes_to_vswitch": False,
    }


def action_json(action: Action, now: float) -> dict[str, Any]:
    return {
        "id": action.id,
        "command": action.command,
        "status": action.status,
        "progress": action.progress(now),
        "started": utc_timestamp(action.started),
        "finished": utc_timestamp(action.finished) if action.finished is not None else None,
        "resources": [dict(resource) for resource in action.resources],
        "error": dict(action.error) if action.error is not None else None,
    }
