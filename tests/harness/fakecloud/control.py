"""The control API under /_fake/: what the lab, running the fake as a separate process, uses to
create resources, inject faults, set latencies and read the event log and request counts."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from harness.fakecloud import queries
from harness.fakecloud.errors import ApiError, invalid_field
from harness.fakecloud.faults import FAULT_FIELDS, Fault
from harness.fakecloud.store import FakeCloud

ControlHandler = Callable[[FakeCloud, list[str], dict[str, list[str]], Any], tuple[int, Any]]


def _fields(body: Any, allowed: set[str] | frozenset[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError("invalid_input", "expected a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise invalid_field(unknown[0], f"unknown field; allowed: {', '.join(sorted(allowed))}")
    return body


def _create(kind: str) -> ControlHandler:
    creators: dict[str, tuple[Callable[..., Any], Callable[[FakeCloud, int], dict[str, Any]], set[str]]] = {
        "servers": (
            FakeCloud.create_server,
            queries.server_json,
            {
                "name",
                "location",
                "server_type",
                "labels",
                "status",
                "public_ipv4",
                "public_ipv6",
                "network_id",
                "private_ip",
                "id",
            },
        ),
        "volumes": (
            FakeCloud.create_volume,
            queries.volume_json,
            {"name", "size", "location", "server_id", "labels", "format", "id"},
        ),
        "floating_ips": (
            FakeCloud.create_floating_ip,
            queries.floating_ip_json,
            {"name", "type", "ip", "home_location", "server_id", "labels", "description", "id"},
        ),
        "networks": (
            FakeCloud.create_network,
            queries.network_json,
            {"name", "ip_range", "subnet", "network_zone", "labels", "id"},
        ),
    }
    creator, reader, allowed = creators[kind]

    def handler(cloud: FakeCloud, parts: list[str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        fields = _fields(body, allowed)
        if "name" not in fields and kind != "floating_ips":
            raise invalid_field("name", "Missing data for required field.")
        try:
            created = creator(cloud, **fields)
        except TypeError as error:
            raise ApiError("invalid_input", str(error)) from None
        return 201, reader(cloud, created.id)

    return handler


def _add_fault(cloud: FakeCloud, parts: list[str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
    try:
        fault = cloud.inject(Fault(**_fields(body, FAULT_FIELDS)))
    except (TypeError, ValueError) as error:
        raise ApiError("invalid_input", str(error)) from None
    return 201, fault.to_json()


def _list_faults(cloud: FakeCloud, parts: list[str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
    return 200, {"faults": [fault.to_json() for fault in cloud.faults.list()]}


def _clear_faults(cloud: FakeCloud, parts: list[str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
    if len(parts) == 2:
        if not parts[1].isdigit() or not cloud.faults.remove(int(parts[1])):
            raise ApiError("not_found", f"no fault {parts[1]}")
    else:
        cloud.faults.clear()
    return 200, {}


def _set_latency(cloud: FakeCloud, parts: list[str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
    if not isinstance(body, dict) or not all(isinstance(value, int | float) for value in body.values()):
        raise ApiError("invalid_input", 'expected {"default": seconds, "volume.attach": seconds, ...}')
    try:
        for operation, seconds in body.items():
            cloud.set_action_latency(None if operation == "default" else operation, float(seconds))
    except ValueError as error:
        raise ApiError("invalid_input", str(error)) from None
    return 200, {"default": cloud.default_latency, **cloud.latencies}


def _events(cloud: FakeCloud, parts: list[str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
    try:
        since = int(query.get("since", ["0"])[-1])
        wait = min(30.0, float(query.get("wait", ["0"])[-1]))
    except ValueError:
        raise ApiError("invalid_input", "since must be an integer and wait a number of seconds") from None
    events, last = cloud.events.since(since, wait)
    return 200, {"events": events, "last": last}


def _mark(cloud: FakeCloud, parts: list[str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
    return 200, {"mark": cloud.requests.mark()}


def _requests(cloud: FakeCloud, parts: list[str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
    try:
        since = int(query.get("since", ["0"])[-1])
    except ValueError:
        raise ApiError("invalid_input", "since must be a mark returned by POST /_fake/mark") from None
    records = cloud.requests.records(since)
    return 200, {"counts": cloud.requests.counts(since), "requests": [dataclasses.asdict(r) for r in records]}


def _rate_limit(cloud: FakeCloud, parts: list[str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
    fields = _fields(body, {"limit", "remaining", "block_seconds"})
    try:
        if "limit" in fields or "remaining" in fields:
            cloud.rate_limit.configure(int(fields.get("limit", 3600)), fields.get("remaining"))
        if "block_seconds" in fields:
            cloud.rate_limit.block(float(fields["block_seconds"]))
    except (TypeError, ValueError) as error:
        raise ApiError("invalid_input", str(error)) from None
    return 200, {}


def _server_status(cloud: FakeCloud, parts: list[str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
    fields = _fields(body, {"status"})
    cloud.set_server_status(_id(parts[1]), str(fields.get("status")))
    return 200, queries.server_json(cloud, _id(parts[1]))


def _volume_server(cloud: FakeCloud, parts: list[str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
    fields = _fields(body, {"server"})
    cloud.set_volume_server(_id(parts[1]), fields.get("server"))
    return 200, queries.volume_json(cloud, _id(parts[1]))


def _floating_ip_server(cloud: FakeCloud, parts: list[str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
    fields = _fields(body, {"server"})
    cloud.set_floating_ip_server(_id(parts[1]), fields.get("server"))
    return 200, queries.floating_ip_json(cloud, _id(parts[1]))


def _finish_action(cloud: FakeCloud, parts: list[str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
    fields = _fields(body or {}, {"outcome"})
    outcome = fields.get("outcome", "success")
    if outcome not in ("success", "error"):
        raise invalid_field("outcome", "must be success or error")
    cloud.finish_action(_id(parts[1]), outcome)
    return 200, queries.action_json(cloud, _id(parts[1]))


def _state(cloud: FakeCloud, parts: list[str], query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
    return 200, cloud.snapshot()


def _id(raw: str) -> int:
    if not raw.isdigit():
        raise ApiError("not_found", f"{raw!r} is not a valid ID")
    return int(raw)


CONTROL_ROUTES: dict[tuple[str, str, int], ControlHandler] = {
    ("POST", "servers", 1): _create("servers"),
    ("POST", "volumes", 1): _create("volumes"),
    ("POST", "floating_ips", 1): _create("floating_ips"),
    ("POST", "networks", 1): _create("networks"),
    ("PUT", "servers", 3): _server_status,
    ("PUT", "volumes", 3): _volume_server,
    ("PUT", "floating_ips", 3): _floating_ip_server,
    ("POST", "actions", 3): _finish_action,
    ("POST", "faults", 1): _add_fault,
    ("GET", "faults", 1): _list_faults,
    ("DELETE", "faults", 1): _clear_faults,
    ("DELETE", "faults", 2): _clear_faults,
    ("PUT", "latency", 1): _set_latency,
    ("GET", "events", 1): _events,
    ("POST", "mark", 1): _mark,
    ("GET", "requests", 1): _requests,
    ("PUT", "rate_limit", 1): _rate_limit,
    ("GET", "state", 1): _state,
}
"""(method, first path segment, segment count) -> handler. Three-segment paths end in `status`
(servers), `server` (volumes, floating IPs) or `finish` (actions)."""

_SUFFIXES = {"servers": "status", "volumes": "server", "floating_ips": "server", "actions": "finish"}


def handle_control(cloud: FakeCloud, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
    """Dispatch a request below /_fake/."""
    parts = [part for part in path.split("/") if part]
    if not parts:
        raise ApiError("not_found", "no control endpoint /_fake/")
    handler = CONTROL_ROUTES.get((method, parts[0], len(parts)))
    if handler is None or (len(parts) == 3 and parts[2] != _SUFFIXES.get(parts[0])):
        raise ApiError("not_found", f"no control endpoint {method} /_fake/{'/'.join(parts)}")
    return handler(cloud, parts, query, body)
