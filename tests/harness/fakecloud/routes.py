"""The API's endpoints: path patterns, the operation name faults match, and their handlers."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.fakecloud import operations, queries
from harness.fakecloud.catalog import LOCATIONS, location_json
from harness.fakecloud.errors import ApiError, invalid_field, not_found
from harness.fakecloud.faults import Fault
from harness.fakecloud.store import FakeCloud

Query = dict[str, list[str]]
Handler = Callable[[FakeCloud, dict[str, int], Query, dict[str, Any], Fault | None], tuple[int, dict[str, Any]]]

DEFAULT_PER_PAGE = 25
MAX_PER_PAGE = 50
RESOURCE_TYPES = {"servers": "server", "volumes": "volume", "floating_ips": "floating_ip"}


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    """Path below /v1 with `{name}` placeholders for integer ids."""
    operation: str
    handler: Handler

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.template) + "$")


def _one(query: Query, name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _positive_int(query: Query, name: str, default: int) -> int:
    raw = _one(query, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid_field(name, f"not a valid integer: {raw!r}") from None
    if value < 1:
        raise invalid_field(name, "must be at least 1")
    return value


def paginate(items: list[dict[str, Any]], query: Query, key: str) -> tuple[int, dict[str, Any]]:
    """Return one page of `items` under `key` with the API's `meta.pagination`."""
    page = _positive_int(query, "page", 1)
    per_page = min(_positive_int(query, "per_page", DEFAULT_PER_PAGE), MAX_PER_PAGE)
    last_page = max(1, -(-len(items) // per_page))
    chosen = items[(page - 1) * per_page : page * per_page]
    pagination = {
        "page": page,
        "per_page": per_page,
        "previous_page": page - 1 if page > 1 else None,
        "next_page": page + 1 if page < last_page else None,
        "last_page": last_page,
        "total_entries": len(items),
    }
    return 200, {key: chosen, "meta": {"pagination": pagination}}


def _list_servers(
    cloud: FakeCloud, ids: dict[str, int], query: Query, body: Any, fault: Fault | None
) -> tuple[int, dict[str, Any]]:
    servers = queries.list_servers(
        cloud, name=_one(query, "name"), label_selector=_one(query, "label_selector"), status=query.get("status", [])
    )
    return paginate(servers, query, "servers")


def _list_of(kind: str, lister: Callable[..., list[dict[str, Any]]]) -> Handler:
    def handler(
        cloud: FakeCloud, ids: dict[str, int], query: Query, body: Any, fault: Fault | None
    ) -> tuple[int, dict[str, Any]]:
        items = lister(cloud, name=_one(query, "name"), label_selector=_one(query, "label_selector"))
        return paginate(items, query, kind)

    return handler


def _get_one(key: str, reader: Callable[[FakeCloud, int], dict[str, Any]]) -> Handler:
    def handler(
        cloud: FakeCloud, ids: dict[str, int], query: Query, body: Any, fault: Fault | None
    ) -> tuple[int, dict[str, Any]]:
        return 200, {key: reader(cloud, ids["id"])}

    return handler


def _action(starter: Callable[..., dict[str, Any]], with_body: bool) -> Handler:
    def handler(
        cloud: FakeCloud, ids: dict[str, int], query: Query, body: Any, fault: Fault | None
    ) -> tuple[int, dict[str, Any]]:
        if with_body:
            return 201, {"action": starter(cloud, ids["id"], body, fault)}
        return 201, {"action": starter(cloud, ids["id"], fault)}

    return handler


def _power(command: str) -> Handler:
    def handler(
        cloud: FakeCloud, ids: dict[str, int], query: Query, body: Any, fault: Fault | None
    ) -> tuple[int, dict[str, Any]]:
        return 201, {"action": operations.power(cloud, ids["id"], command, fault)}

    return handler


def _list_actions(
    cloud: FakeCloud, ids: dict[str, int], query: Query, body: Any, fault: Fault | None
) -> tuple[int, dict[str, Any]]:
    try:
        wanted = [int(value) for value in query.get("id", [])]
    except ValueError:
        raise invalid_field("id", "not a valid integer") from None
    if not wanted:
        raise invalid_field("id", "listing actions requires at least one id filter")
    return paginate(queries.list_actions(cloud, ids=wanted), query, "actions")


def _resource_actions(kind: str) -> Handler:
    def handler(
        cloud: FakeCloud, ids: dict[str, int], query: Query, body: Any, fault: Fault | None
    ) -> tuple[int, dict[str, Any]]:
        return paginate(queries.list_actions(cloud, ids=[], resource=(kind, ids["id"])), query, "actions")

    return handler


def _resource_action(kind: str) -> Handler:
    def handler(
        cloud: FakeCloud, ids: dict[str, int], query: Query, body: Any, fault: Fault | None
    ) -> tuple[int, dict[str, Any]]:
        action = queries.action_json(cloud, ids["action_id"])
        if not any(resource["type"] == kind for resource in action["resources"]):
            raise not_found("action", ids["action_id"])
        return 200, {"action": action}

    return handler


def _locations(
    cloud: FakeCloud, ids: dict[str, int], query: Query, body: Any, fault: Fault | None
) -> tuple[int, dict[str, Any]]:
    return paginate([location_json(name) for name in LOCATIONS], query, "locations")


ROUTES: list[Route] = [
    Route("GET", "/servers", "server.list", _list_servers),
    Route("GET", "/servers/{id}", "server.get", _get_one("server", queries.server_json)),
    Route("POST", "/servers/{id}/actions/poweroff", "server.poweroff", _power("poweroff")),
    Route("POST", "/servers/{id}/actions/shutdown", "server.shutdown", _power("shutdown")),
    Route("POST", "/servers/{id}/actions/poweron", "server.poweron", _power("poweron")),
    Route("GET", "/volumes", "volume.list", _list_of("volumes", queries.list_volumes)),
    Route("GET", "/volumes/{id}", "volume.get", _get_one("volume", queries.volume_json)),
    Route("POST", "/volumes/{id}/actions/attach", "volume.attach", _action(operations.attach_volume, True)),
    Route("POST", "/volumes/{id}/actions/detach", "volume.detach", _action(operations.detach_volume, False)),
    Route("POST", "/volumes/{id}/actions/resize", "volume.resize", _action(operations.resize_volume, True)),
    Route("GET", "/floating_ips", "floating_ip.list", _list_of("floating_ips", queries.list_floating_ips)),
    Route("GET", "/floating_ips/{id}", "floating_ip.get", _get_one("floating_ip", queries.floating_ip_json)),
    Route(
        "POST", "/floating_ips/{id}/actions/assign", "floating_ip.assign", _action(operations.assign_floating_ip, True)
    ),
    Route(
        "POST",
        "/floating_ips/{id}/actions/unassign",
        "floating_ip.unassign",
        _action(operations.unassign_floating_ip, False),
    ),
    Route(
        "POST",
        "/floating_ips/{id}/actions/change_dns_ptr",
        "floating_ip.change_dns_ptr",
        _action(operations.change_dns_ptr, True),
    ),
    Route("GET", "/networks", "network.list", _list_of("networks", queries.list_networks)),
    Route("GET", "/networks/{id}", "network.get", _get_one("network", queries.network_json)),
    Route("GET", "/actions", "action.list", _list_actions),
    Route("GET", "/actions/{id}", "action.get", _get_one("action", queries.action_json)),
    Route("GET", "/locations", "location.list", _locations),
]
for _collection, _kind in RESOURCE_TYPES.items():
    ROUTES.append(Route("GET", f"/{_collection}/{{id}}/actions", f"{_kind}.actions", _resource_actions(_kind)))
    ROUTES.append(Route("GET", f"/{_collection}/actions/{{action_id}}", "action.get", _resource_action(_kind)))

_COMPILED = [(route, route.pattern) for route in ROUTES]


def resolve(method: str, path: str) -> tuple[Route, dict[str, int]]:
    """Find the route of a request path below /v1 and parse its ids; raise not_found otherwise."""
    path_known = False
    for route, pattern in _COMPILED:
        match = pattern.match(path)
        if match is None:
            continue
        path_known = True
        if route.method != method:
            continue
        ids: dict[str, int] = {}
        for name, raw in match.groupdict().items():
            if not raw.isdigit():
                raise ApiError("not_found", f"{raw!r} is not a valid ID")
            ids[name] = int(raw)
        return route, ids
    if path_known:
        raise ApiError("method_not_allowed", f"method {method} is not allowed on {path}")
    raise ApiError("not_found", f"no endpoint {path}")
