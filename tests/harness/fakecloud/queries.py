"""Reads of the fake's resources, returned as the API's JSON."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from harness.fakecloud import resources as res
from harness.fakecloud.errors import invalid_field, not_found
from harness.fakecloud.labels import compile_selector

if TYPE_CHECKING:
    from harness.fakecloud.store import FakeCloud


def server_json(cloud: FakeCloud, server_id: int) -> dict[str, Any]:
    with cloud.lock:
        server = cloud.get_server(server_id)
        volumes = sorted(volume.id for volume in cloud.volumes.values() if volume.server == server_id)
        fips = sorted(fip.id for fip in cloud.floating_ips.values() if fip.server == server_id)
        return res.server_json(server, volumes=volumes, floating_ips=fips)


def list_servers(
    cloud: FakeCloud, *, name: str | None, label_selector: str | None, status: list[str]
) -> list[dict[str, Any]]:
    selector = _selector(label_selector)
    with cloud.lock:
        return [
            server_json(cloud, server.id)
            for server in sorted(cloud.servers.values(), key=lambda server: server.id)
            if (name is None or server.name == name)
            and selector(server.labels)
            and (not status or server.status in status)
        ]


def volume_json(cloud: FakeCloud, volume_id: int) -> dict[str, Any]:
    with cloud.lock:
        return res.volume_json(cloud.get_volume(volume_id))


def list_volumes(cloud: FakeCloud, *, name: str | None, label_selector: str | None) -> list[dict[str, Any]]:
    selector = _selector(label_selector)
    with cloud.lock:
        return [
            res.volume_json(volume)
            for volume in sorted(cloud.volumes.values(), key=lambda volume: volume.id)
            if (name is None or volume.name == name) and selector(volume.labels)
        ]


def floating_ip_json(cloud: FakeCloud, floating_ip_id: int) -> dict[str, Any]:
    with cloud.lock:
        return res.floating_ip_json(cloud.get_floating_ip(floating_ip_id))


def list_floating_ips(cloud: FakeCloud, *, name: str | None, label_selector: str | None) -> list[dict[str, Any]]:
    selector = _selector(label_selector)
    with cloud.lock:
        return [
            res.floating_ip_json(fip)
            for fip in sorted(cloud.floating_ips.values(), key=lambda fip: fip.id)
            if (name is None or fip.name == name) and selector(fip.labels)
        ]


def network_json(cloud: FakeCloud, network_id: int) -> dict[str, Any]:
    with cloud.lock:
        network = cloud.networks.get(network_id)
        if network is None:
            raise not_found("network", network_id)
        members = sorted(s.id for s in cloud.servers.values() if any(p.network == network_id for p in s.private_net))
        return res.network_json(network, servers=members)


def list_networks(cloud: FakeCloud, *, name: str | None, label_selector: str | None) -> list[dict[str, Any]]:
    selector = _selector(label_selector)
    with cloud.lock:
        return [
            network_json(cloud, network.id)
            for network in sorted(cloud.networks.values(), key=lambda network: network.id)
            if (name is None or network.name == name) and selector(network.labels)
        ]


def action_json(cloud: FakeCloud, action_id: int) -> dict[str, Any]:
    with cloud.lock:
        action = cloud.actions.get(action_id)
        if action is None:
            raise not_found("action", action_id)
        return res.action_json(action, time.monotonic())


def list_actions(cloud: FakeCloud, *, ids: list[int], resource: tuple[str, int] | None = None) -> list[dict[str, Any]]:
    with cloud.lock:
        now = time.monotonic()
        chosen = [
            action
            for action in sorted(cloud.actions.values(), key=lambda action: action.id)
            if (not ids or action.id in ids)
            and (resource is None or {"id": resource[1], "type": resource[0]} in action.resources)
        ]
        return [res.action_json(action, now) for action in chosen]


def _selector(label_selector: str | None) -> Callable[[dict[str, str]], bool]:
    if not label_selector:
        return lambda labels: True
    try:
        return compile_selector(label_selector)
    except ValueError as error:
        raise invalid_field("label_selector", str(error)) from None
