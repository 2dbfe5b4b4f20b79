"""The lab driver's client of the fake cloud: its control API, reached inside the cloud namespace."""

from __future__ import annotations

import http.client
import json
import logging
from typing import Any

from lab.nsexec import NamespaceExecutor
from lab.shell import LabError

log = logging.getLogger(__name__)


class CloudControl:
    """Calls the fake's control API (`/_fake/...`) and API (`/v1/...`) from the cloud namespace."""

    def __init__(self, namespace: str, host: str, port: int, token: str) -> None:
        self.host = host
        self.port = port
        self._token = token
        self._executor = NamespaceExecutor(namespace)

    def close(self) -> None:
        self._executor.close()

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """Send one request and return the decoded JSON; raise LabError on an error status."""
        status, payload = self._executor.call(self._send, method, path, body, timeout, timeout=timeout + 5)
        if status >= 400:
            raise LabError(f"fake cloud {method} {path} failed with HTTP {status}: {payload}")
        return payload

    def _send(self, method: str, path: str, body: Any, timeout: float) -> tuple[int, Any]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
            data = None if body is None else json.dumps(body).encode()
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except OSError as error:
            raise LabError(f"fake cloud {method} {path} failed: {error}") from None
        finally:
            connection.close()
        return response.status, json.loads(raw) if raw else None

    def state(self) -> dict[str, Any]:
        """Return every resource of the fake, as its control API's snapshot."""
        result: dict[str, Any] = self.request("GET", "/_fake/state")
        return result

    def create(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Create a resource directly (as the Pulumi program's resources would be)."""
        result: dict[str, Any] = self.request("POST", f"/_fake/{kind}", fields)
        return result

    def add_fault(self, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/_fake/faults", fields)
        return result

    def clear_faults(self) -> None:
        self.request("DELETE", "/_fake/faults")

    def set_latency(self, latencies: dict[str, float]) -> None:
        """Set action durations in seconds, by operation (`volume.attach`) or `default`."""
        self.request("PUT", "/_fake/latency", latencies)

    def set_server_status(self, server_id: int, status: str) -> None:
        self.request("PUT", f"/_fake/servers/{server_id}/status", {"status": status})

    def mark(self) -> int:
        """Return a mark for `requests`, to count API calls made after it."""
        return int(self.request("POST", "/_fake/mark")["mark"])

    def requests_since(self, mark: int) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/_fake/requests?since={mark}")
        return result

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.request("GET", f"/_fake/events?since={since}")["events"]
        return events
