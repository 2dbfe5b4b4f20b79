"""The client side of the status API: read another node's snapshot, call its actions.

It talks plain HTTP to a member's private address with http.client, which ignores proxy
settings in the environment, so a request never leaves the cluster's private network through a
proxy. Every request has a connect and read timeout. Failures raise StatusApiError naming the
node, the address and what to check.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from mailcow_ha.agent.apiauth import signed_headers
from mailcow_ha.agent.snapshot import NodeSnapshot
from mailcow_ha.agent.statusapi import API_PREFIX
from mailcow_ha.errors import MailcowHaError, Refused
from mailcow_ha.failover.history import FailoverRecord

if TYPE_CHECKING:
    from mailcow_ha.config import NodeConfig

log = logging.getLogger(__name__)

ACTION_MARGIN = 5.0
"""Seconds added to an action's own bound before the client stops waiting for the response."""


class StatusApiError(MailcowHaError):
    """A status API request to another node failed: unreachable, timed out, or rejected."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HistoryLost(StatusApiError):
    """The member responded, but its history file is corrupt."""


class StatusClient:
    """Reads snapshots and calls actions on other members, signing calls with the cluster secret."""

    def __init__(
        self,
        *,
        cluster: str,
        secret: SecretStr,
        port: int,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = cluster
        self.port = port
        self.timeout = timeout
        self._secret = secret
        self._clock = clock

    @classmethod
    def from_config(cls, config: NodeConfig, *, timeout: float = 2.0) -> StatusClient:
        return cls(
            cluster=config.cluster, secret=config.status_api.secret, port=config.status_api.port, timeout=timeout
        )

    def status(self, address: str, *, node: str = "", port: int | None = None) -> NodeSnapshot:
        """Fetch and parse a member's snapshot."""
        where = _describe(node, address, port or self.port)
        status, payload = self._request(
            "GET", address, port, f"{API_PREFIX}/status", body=None, read_timeout=self.timeout, where=where
        )
        if status != 200:
            raise StatusApiError(f"status of {where} failed: HTTP {status}: {_error_text(payload)}", status=status)
        try:
            return NodeSnapshot.from_dict(payload)
        except ValueError as error:
            raise StatusApiError(
                f"status of {where} is not a snapshot this version reads ({error}); upgrade mailcow-ha on every node"
            ) from None

    def history(self, address: str, *, node: str = "", port: int | None = None) -> list[FailoverRecord]:
        """Fetch a member's failover history, oldest first. Records this version cannot read are skipped.

        Raises HistoryLost when the member found its history file corrupt.
        """
        where = _describe(node, address, port or self.port)
        status, payload = self._request(
            "GET", address, port, f"{API_PREFIX}/history", body=None, read_timeout=self.timeout, where=where
        )
        if status != 200:
            raise StatusApiError(f"history of {where} failed: HTTP {status}: {_error_text(payload)}", status=status)
        if payload.get("problem"):
            raise HistoryLost(f"history of {where} is lost: {payload['problem']}")
        records = []
        for item in payload.get("records", []):
            try:
                records.append(FailoverRecord.from_json(item))
            except (KeyError, TypeError, ValueError):
                log.warning("history of %s: skipped a record this version cannot read", where)
        return records

    def call(
        self,
        address: str,
        action: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float,
        node: str = "",
        port: int | None = None,
    ) -> dict[str, Any]:
        """Call an action and return its JSON result. 409 raises Refused, other failures StatusApiError.

        `timeout` is the action's own bound; the client waits ACTION_MARGIN seconds longer.
        """
        where = _describe(node, address, port or self.port)
        body = json.dumps(dict(params or {}), sort_keys=True).encode("utf-8")
        path = f"{API_PREFIX}/actions/{action}"
        status, payload = self._request(
            "POST", address, port, path, body=body, read_timeout=timeout + ACTION_MARGIN, where=where
        )
        if status == 200:
            return payload
        message = f"action {action} on {where} failed: HTTP {status}: {_error_text(payload)}"
        if status == 409:
            raise Refused(message)
        raise StatusApiError(message, status=status)

    def _request(
        self,
        method: str,
        address: str,
        port: int | None,
        path: str,
        *,
        body: bytes | None,
        read_timeout: float,
        where: str,
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Accept": "application/json"}
        if body is not None:
            secret = self._secret.get_secret_value().encode("utf-8")
            headers.update(signed_headers(secret, self.cluster, method=method, path=path, body=body, now=self._clock()))
            headers["Content-Type"] = "application/json"
        connection = http.client.HTTPConnection(address, port or self.port, timeout=self.timeout)
        try:
            connection.connect()
            if connection.sock is not None:
                connection.sock.settimeout(read_timeout)
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            raw = response.read(4 * 1024 * 1024)
            status = response.status
        except TimeoutError:
            raise StatusApiError(f"status API of {where} timed out; is its agent running and the port open?") from None
        except ConnectionRefusedError:
            raise StatusApiError(f"status API of {where} refused the connection; is its agent running?") from None
        except (OSError, http.client.HTTPException) as error:
            detail = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
            raise StatusApiError(f"status API of {where} is unreachable: {detail}") from None
        finally:
            connection.close()
        try:
            payload = json.loads(raw.decode("utf-8")) if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise StatusApiError(f"status API of {where} returned HTTP {status} with a body that is not JSON") from None
        if not isinstance(payload, dict):
            raise StatusApiError(f"status API of {where} returned HTTP {status} with a body that is not an object")
        log.debug("status API %s %s on %s: HTTP %d", method, path, where, status)
        return status, payload


def _describe(node: str, address: str, port: int) -> str:
    return f"{node} ({address}:{port})" if node else f"{address}:{port}"


def _error_text(payload: Mapping[str, Any]) -> str:
    return str(payload.get("error", "no error message"))


__all__ = ["ACTION_MARGIN", "HistoryLost", "StatusApiError", "StatusClient"]
