"""The API's mutating operations and the rules the real API enforces on them.

Each operation checks its input and the resources' state at request time, then starts an action
whose effect applies when the action ends. A volume is attached to at most one server, and only
to a server in its own location. A floating IP is assigned only to a server in its home
location's network zone. A resource that a running action locks rejects changes with `locked`.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from harness.fakecloud.errors import ApiError, invalid_field
from harness.fakecloud.faults import Fault

if TYPE_CHECKING:
    from harness.fakecloud.store import FakeCloud

EventList = list[tuple[str, dict[str, Any]]]


def _server_id_field(body: dict[str, Any], name: str = "server") -> int:
    value = body.get(name)
    if value is None:
        raise invalid_field(name, "Missing data for required field.")
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_field(name, "Not a valid integer.")
    return value


def power(cloud: FakeCloud, server_id: int, command: str, fault: Fault | None) -> dict[str, Any]:
    """Start `poweroff`, `shutdown` or `poweron` of a server."""
    with cloud.lock:
        cloud.get_server(server_id)
        cloud.check_unlocked(("server", server_id))
    target = "running" if command == "poweron" else "off"
    kind = "server.powered_on" if command == "poweron" else "server.powered_off"

    def effect() -> EventList:
        cloud.get_server(server_id).status = target
        return [(kind, {"server": server_id})]

    name = "shutdown_server" if command == "shutdown" else f"{'start' if command == 'poweron' else 'stop'}_server"
    return cloud.start_action(f"server.{command}", name, [("server", server_id)], effect, fault)


def attach_volume(cloud: FakeCloud, volume_id: int, body: dict[str, Any], fault: Fault | None) -> dict[str, Any]:
    server_id = _server_id_field(body)
    with cloud.lock:
        volume = cloud.get_volume(volume_id)
        server = cloud.get_server(server_id)
        cloud.check_unlocked(("volume", volume_id), ("server", server_id))
        if volume.server is not None:
            raise ApiError(
                "volume_already_attached",
                f"volume {volume_id} is already attached to server {volume.server}, detach it first",
                {"server": volume.server},
            )
        if server.location != volume.location:
            raise invalid_field(
                "server", f"server {server_id} is in {server.location} but volume {volume_id} is in {volume.location}"
            )

    def effect() -> EventList:
        current = cloud.get_volume(volume_id)
        current.server = server_id
        return [("volume.attached", {"volume": volume_id, "server": server_id})]

    resources = [("volume", volume_id), ("server", server_id)]
    return cloud.start_action("volume.attach", "attach_volume", resources, effect, fault)


def detach_volume(cloud: FakeCloud, volume_id: int, fault: Fault | None) -> dict[str, Any]:
    with cloud.lock:
        volume = cloud.get_volume(volume_id)
        cloud.check_unlocked(("volume", volume_id))
        if volume.server is None:
            raise ApiError("invalid_input", f"volume {volume_id} is not attached to a server")
        server_id = volume.server
        cloud.check_unlocked(("server", server_id))

    def effect() -> EventList:
        cloud.get_volume(volume_id).server = None
        return [("volume.detached", {"volume": volume_id, "server": server_id})]

    resources = [("volume", volume_id), ("server", server_id)]
    return cloud.start_action("volume.detach", "detach_volume", resources, effect, fault)


def resize_volume(cloud: FakeCloud, volume_id: int, body: dict[str, Any], fault: Fault | None) -> dict[str, Any]:
    size = body.get("size")
    if isinstance(size, bool) or not isinstance(size, int | float):
        raise invalid_field("size", "Missing data for required field." if size is None else "Not a valid number.")
    with cloud.lock:
        volume = cloud.get_volume(volume_id)
        cloud.check_unlocked(("volume", volume_id))
        if size <= volume.size:
            raise invalid_field("size", f"the new size must be larger than the current {volume.size} GB")
        if size > 10240:
            raise invalid_field("size", "the maximum volume size is 10240 GB")

    def effect() -> EventList:
        cloud.get_volume(volume_id).size = int(size)
        return [("volume.resized", {"volume": volume_id, "size": int(size)})]

    return cloud.start_action("volume.resize", "resize_volume", [("volume", volume_id)], effect, fault)


def assign_floating_ip(cloud: FakeCloud, fip_id: int, body: dict[str, Any], fault: Fault | None) -> dict[str, Any]:
    server_id = _server_id_field(body)
    with cloud.lock:
        floating_ip = cloud.get_floating_ip(fip_id)
        server = cloud.get_server(server_id)
        cloud.check_unlocked(("floating_ip", fip_id), ("server", server_id))
        if cloud.network_zone(server.location) != cloud.network_zone(floating_ip.home_location):
            raise invalid_field(
                "server", f"server {server_id} is outside the network zone of floating IP {fip_id}'s home location"
            )

    def effect() -> EventList:
        current = cloud.get_floating_ip(fip_id)
        previous, current.server = current.server, server_id
        ids = {"floating_ip": fip_id, "server": server_id, "previous_server": previous, "ip": current.ip}
        return [("floating_ip.assigned", ids)]

    resources = [("floating_ip", fip_id), ("server", server_id)]
    return cloud.start_action("floating_ip.assign", "assign_floating_ip", resources, effect, fault)


def unassign_floating_ip(cloud: FakeCloud, fip_id: int, fault: Fault | None) -> dict[str, Any]:
    with cloud.lock:
        floating_ip = cloud.get_floating_ip(fip_id)
        cloud.check_unlocked(("floating_ip", fip_id))
        previous = floating_ip.server

    def effect() -> EventList:
        current = cloud.get_floating_ip(fip_id)
        current.server = None
        ids = {"floating_ip": fip_id, "server": None, "previous_server": previous, "ip": current.ip}
        return [("floating_ip.unassigned", ids)]

    return cloud.start_action("floating_ip.unassign", "unassign_floating_ip", [("floating_ip", fip_id)], effect, fault)


def change_dns_ptr(cloud: FakeCloud, fip_id: int, body: dict[str, Any], fault: Fault | None) -> dict[str, Any]:
    address = body.get("ip")
    if not isinstance(address, str):
        raise invalid_field("ip", "Missing data for required field.")
    if "dns_ptr" not in body:
        raise invalid_field("dns_ptr", "Missing data for required field.")
    dns_ptr = body["dns_ptr"]
    if dns_ptr is not None and (not isinstance(dns_ptr, str) or not dns_ptr):
        raise invalid_field("dns_ptr", "must be a host name or null")
    with cloud.lock:
        floating_ip = cloud.get_floating_ip(fip_id)
        cloud.check_unlocked(("floating_ip", fip_id))
        try:
            inside = ipaddress.ip_address(address) in ipaddress.ip_network(floating_ip.ip, strict=False)
        except ValueError:
            inside = False
        if not inside:
            raise invalid_field("ip", f"{address} is not an address of floating IP {fip_id}")

    def effect() -> EventList:
        cloud.get_floating_ip(fip_id).dns_ptr[address] = dns_ptr
        return [("floating_ip.dns_ptr_changed", {"floating_ip": fip_id, "ip": address, "dns_ptr": dns_ptr})]

    return cloud.start_action("floating_ip.change_dns_ptr", "change_dns_ptr", [("floating_ip", fip_id)], effect, fault)
