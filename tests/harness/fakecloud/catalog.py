"""Static data of the fake Hetzner Cloud API: locations, server types and the error code table."""

from __future__ import annotations

from typing import Any

LOCATIONS: dict[str, dict[str, Any]] = {
    "fsn1": {"id": 1, "city": "Falkenstein", "country": "DE", "network_zone": "eu-central"},
    "nbg1": {"id": 2, "city": "Nuremberg", "country": "DE", "network_zone": "eu-central"},
    "hel1": {"id": 3, "city": "Helsinki", "country": "FI", "network_zone": "eu-central"},
    "ash": {"id": 4, "city": "Ashburn, VA", "country": "US", "network_zone": "us-east"},
    "hil": {"id": 5, "city": "Hillsboro, OR", "country": "US", "network_zone": "us-west"},
    "sin": {"id": 6, "city": "Singapore", "country": "SG", "network_zone": "ap-southeast"},
}
"""The real API's locations (id, city, country, network zone); coordinates are omitted."""

SERVER_TYPES: dict[str, dict[str, Any]] = {
    "cx22": {"id": 104, "cores": 2, "memory": 4.0, "disk": 40, "cpu_type": "shared", "architecture": "x86"},
    "cx32": {"id": 105, "cores": 4, "memory": 8.0, "disk": 80, "cpu_type": "shared", "architecture": "x86"},
    "cpx21": {"id": 23, "cores": 3, "memory": 4.0, "disk": 80, "cpu_type": "shared", "architecture": "x86"},
    "cax11": {"id": 45, "cores": 2, "memory": 4.0, "disk": 40, "cpu_type": "shared", "architecture": "arm"},
}

ERROR_STATUS: dict[str, int] = {
    "json_error": 400,
    "unauthorized": 401,
    "token_readonly": 401,
    "forbidden": 403,
    "maintenance": 403,
    "resource_limit_exceeded": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "uniqueness_error": 409,
    "volume_already_attached": 409,
    "deprecated_api_endpoint": 410,
    "resource_unavailable": 412,
    "invalid_input": 422,
    "service_error": 422,
    "unsupported_error": 422,
    "locked": 423,
    "protected": 423,
    "rate_limit_exceeded": 429,
    "server_error": 500,
    "bad_gateway": 502,
    "unavailable": 503,
    "timeout": 504,
}
"""HTTP status of every error code the fake sends, from the error code table of the Hetzner Cloud
API reference. Two codes are not in that table: `volume_already_attached` (409 is this fake's
choice) and `bad_gateway` (502 Bad Gateway)."""

ERROR_MESSAGES: dict[str, str] = {
    "invalid_input": "invalid input in the request",
    "json_error": "the request body is not valid JSON",
    "unauthorized": "unable to authenticate",
    "token_readonly": "the token is only allowed to perform GET requests",
    "forbidden": "insufficient permissions for this request",
    "not_found": "resource not found",
    "method_not_allowed": "the request method is not allowed",
    "conflict": "the resource changed during the request, please retry",
    "deprecated_api_endpoint": "the API endpoint functionality was removed",
    "resource_unavailable": "the requested resource is currently unavailable",
    "unsupported_error": "the resource does not support this action",
    "locked": "the resource is locked because another action is running",
    "rate_limit_exceeded": "rate limit exceeded",
    "server_error": "internal server error",
    "bad_gateway": "bad gateway",
    "maintenance": "cannot perform the operation due to maintenance",
    "service_error": "service error",
    "unavailable": "the service is unavailable",
    "timeout": "the request timed out",
    "volume_already_attached": "volume is already attached to a server, detach it first",
}

DEFAULT_CODE_FOR_STATUS: dict[int, str] = {
    400: "json_error",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "deprecated_api_endpoint",
    412: "resource_unavailable",
    422: "invalid_input",
    423: "locked",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "unavailable",
}
"""Error code sent for an injected status given without a code. 502 and 504 have none: those come
from the load balancer in front of the API, as an HTML page that is not JSON."""


def location_json(name: str) -> dict[str, Any]:
    """Return a location as the API shows it inside servers, volumes and floating IPs."""
    entry = LOCATIONS[name]
    return {
        "id": entry["id"],
        "name": name,
        "description": f"{entry['city']} DC Park 1" if entry["country"] != "US" else f"{entry['city']} DC 1",
        "country": entry["country"],
        "city": entry["city"],
        "latitude": 0.0,
        "longitude": 0.0,
        "network_zone": entry["network_zone"],
    }


def server_type_json(name: str) -> dict[str, Any]:
    """Return a server type as the API shows it inside a server."""
    entry = SERVER_TYPES[name]
    return {
        "id": entry["id"],
        "name": name,
        "description": name.upper(),
        "category": "shared_vcpu",
        "cores": entry["cores"],
        "memory": entry["memory"],
        "disk": entry["disk"],
        "prices": [],
        "storage_type": "local",
        "cpu_type": entry["cpu_type"],
        "architecture": entry["architecture"],
        "deprecation": None,
    }
