"""The agent's HTTP status API, served on the node's private address only.

Reads are plain GETs: `/v1/status` returns the agent's NodeSnapshot as JSON, `/v1/health`
returns 200 when the node is healthy and 503 otherwise, `/v1/master` returns 200 only on the
keepalived MASTER (for load balancers and monitoring), `/v1/history` returns this node's failover
history records (oldest first), and `/v1/actions` lists the actions.
The calls that change a node are `POST /v1/actions/<name>` with a JSON object body, signed with
the cluster secret (see apiauth). Unsigned or badly signed calls get 401. Calls from addresses
outside the cluster get 403 when the caller supplies the member addresses.

The registry of actions is open: the agent registers the switchover steps, the Galera bootstrap
command registers its own. A handler takes the parsed JSON parameters and returns a JSON object.
It raises Refused for 409, ActionInputError for 400, and any other MailcowHaError for 500.
Messages go back to the caller, so handlers build them from ids and public values only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from mailcow_ha.agent.apiauth import (
    DEFAULT_MAX_SKEW,
    SCHEME,
    AuthResult,
    NonceCache,
    SignedRequest,
    verify_signature,
)
from mailcow_ha.agent.snapshot import NodeSnapshot
from mailcow_ha.agent.statushttp import DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_TIMEOUT, StatusHttpServer
from mailcow_ha.errors import ConfigError, MailcowHaError, Refused
from mailcow_ha.failover.history import HistoryStore

if TYPE_CHECKING:
    from mailcow_ha.config import NodeConfig

log = logging.getLogger(__name__)

API_PREFIX = "/v1"
MAX_CONCURRENT_REQUESTS = 16
"""Requests whose handlers may run at once; requests still arriving do not count."""

SnapshotSource = Callable[[], NodeSnapshot]
HistorySource = Callable[[], tuple[list[dict[str, Any]], str | None]]
"""Returns the history records as JSON and the problem found reading them (a corrupt file), if any."""
ActionHandler = Callable[[Mapping[str, Any]], Mapping[str, Any]]


class ActionInputError(MailcowHaError):
    """The parameters of an action call are missing or invalid (HTTP 400)."""


@dataclass(frozen=True)
class Action:
    """One mutating call of the status API."""

    name: str
    handler: ActionHandler
    summary: str
    timeout: float
    """Upper bound in seconds on the handler's run time; clients wait this long plus a margin."""


class StatusApi:
    """The HTTP server. `start()` serves on a background thread, `stop()` shuts it down and closes the socket.

    `allowed_clients`, when given, returns the private addresses of the cluster's members. A
    mutating call from any other address is then rejected with 403, even when correctly signed.
    An empty list (members not learned yet) leaves the check to the signature and the firewall.
    """

    def __init__(
        self,
        *,
        address: str,
        port: int,
        cluster: str,
        node: str,
        secret: SecretStr,
        snapshot: SnapshotSource,
        allowed_clients: Callable[[], Collection[str]] | None = None,
        history: HistorySource | None = None,
        max_skew: float = DEFAULT_MAX_SKEW,
        clock: Callable[[], float] = time.time,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        _reject_wildcard(address)
        self._history = history
        self.cluster = cluster
        self.node = node
        self._secret = secret
        self._snapshot = snapshot
        self._allowed_clients = allowed_clients
        self._max_skew = max_skew
        self._clock = clock
        self._nonces = NonceCache(max_skew)
        self._actions: dict[str, Action] = {}
        self._actions_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)
        self._thread: threading.Thread | None = None
        try:
            self._server = StatusHttpServer(
                (address, port), self, request_timeout=request_timeout, max_connections=max_connections
            )
        except OSError as error:
            raise ConfigError(
                f"status API could not listen on {address}:{port}: {error.strerror}; "
                "check status_api.port and that node.private_ip is configured on this host"
            ) from None

    @classmethod
    def from_config(
        cls,
        config: NodeConfig,
        snapshot: SnapshotSource,
        *,
        allowed_clients: Callable[[], Collection[str]] | None = None,
    ) -> StatusApi:
        """Build the API of this node: bound to its private address and status_api.port.

        `/v1/history` serves the history file in `paths.state_dir`. A GET changes nothing: a
        corrupt file is reported in every response and left for the agent's own reads to move aside.
        """
        history_store = HistoryStore(config.paths.state_dir)

        def history() -> tuple[list[dict[str, Any]], str | None]:
            read = history_store.read(move_corrupt=False)
            return [record.to_json() for record in read.records], read.problem

        return cls(
            address=str(config.node.private_ip),
            port=config.status_api.port,
            cluster=config.cluster,
            node=config.node.name,
            secret=config.status_api.secret,
            snapshot=snapshot,
            allowed_clients=allowed_clients,
            history=history,
        )

    @property
    def address(self) -> tuple[str, int]:
        """The bound address and port (the port the kernel chose when 0 was given)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def register_action(self, name: str, handler: ActionHandler, *, summary: str, timeout: float) -> None:
        """Add a mutating call under `POST /v1/actions/<name>`. Registering a name twice raises ValueError."""
        if not name.replace("-", "").isalnum() or name != name.lower():
            raise ValueError(f"action name {name!r} must be lowercase letters, digits and hyphens")
        with self._actions_lock:
            if name in self._actions:
                raise ValueError(f"action {name!r} is already registered")
            self._actions[name] = Action(name, handler, summary, timeout)

    def actions(self) -> list[Action]:
        with self._actions_lock:
            return sorted(self._actions.values(), key=lambda action: action.name)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="mailcow-ha-status-api",
            daemon=True,
        )
        self._thread.start()
        host, port = self.address
        log.info("status API listening on %s:%d with %d action(s)", host, port, len(self.actions()))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting requests and close the socket; running handlers finish on their own threads."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout)
            self._thread = None
        self._server.server_close()
        log.info("status API stopped")

    # Request handling, called from the handler threads.

    def handle_get(self, path: str) -> tuple[int, dict[str, Any]]:
        if path == f"{API_PREFIX}/actions":
            listed = [{"name": a.name, "summary": a.summary, "timeout": a.timeout} for a in self.actions()]
            return HTTPStatus.OK, {"node": self.node, "actions": listed}
        if path == f"{API_PREFIX}/history":
            return self._history_response()
        if path not in (f"{API_PREFIX}/status", f"{API_PREFIX}/health", f"{API_PREFIX}/master"):
            return HTTPStatus.NOT_FOUND, {"error": f"no such path {path}; try {API_PREFIX}/status"}
        try:
            snapshot = self._snapshot()
        except Exception as error:
            log.exception("status API: the snapshot could not be taken")
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"snapshot unavailable: {type(error).__name__}"}
        return _snapshot_response(path, self.node, snapshot)

    def _history_response(self) -> tuple[int, dict[str, Any]]:
        if self._history is None:
            return HTTPStatus.NOT_FOUND, {"error": f"{self.node} serves no history"}
        try:
            records, problem = self._history()
        except Exception as error:
            log.exception("status API: the history could not be read")
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"history unavailable: {type(error).__name__}: {error}"}
        response: dict[str, Any] = {"node": self.node, "records": records}
        if problem is not None:
            response["problem"] = problem
        return HTTPStatus.OK, response

    def handle_post(
        self, path: str, client: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        prefix = f"{API_PREFIX}/actions/"
        if not path.startswith(prefix):
            return HTTPStatus.NOT_FOUND, {"error": f"no such path {path}"}, {}
        rejection = self._authenticate(SignedRequest("POST", path, headers, body), client)
        if rejection is not None:
            return rejection

        name = path[len(prefix) :]
        with self._actions_lock:
            action = self._actions.get(name)
        if action is None:
            known = ", ".join(a.name for a in self.actions()) or "none"
            return HTTPStatus.NOT_FOUND, {"error": f"no action {name!r}; registered: {known}"}, {}
        try:
            params = json.loads(body.decode("utf-8")) if body else {}
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            params = None
        if not isinstance(params, dict):
            return HTTPStatus.BAD_REQUEST, {"error": "body must be a JSON object"}, {}
        status, result = self._run_action(action, params, client)
        return status, result, {}

    def _authenticate(self, request: SignedRequest, client: str) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        """Return the rejection response for an unauthenticated or foreign request, None to proceed."""
        now = self._clock()
        secret = self._secret.get_secret_value().encode("utf-8")
        auth = verify_signature(secret, self.cluster, request, now=now, max_skew=self._max_skew)
        if auth.ok and not self._nonces.use(auth.nonce, now):
            auth = AuthResult(False, "nonce already used; a request cannot be replayed")
        if not auth.ok:
            log.warning("status API: rejected %s from %s: %s", request.path, client, auth.reason)
            return HTTPStatus.UNAUTHORIZED, {"error": auth.reason}, {"WWW-Authenticate": SCHEME}
        if not self._client_allowed(client):
            log.warning("status API: rejected %s from %s: not a cluster member address", request.path, client)
            return HTTPStatus.FORBIDDEN, {"error": f"{client} is not the private address of a cluster member"}, {}
        return None

    def _client_allowed(self, client: str) -> bool:
        if self._allowed_clients is None:
            return True
        try:
            allowed = set(self._allowed_clients())
        except Exception:
            log.exception("status API: the list of member addresses could not be read; rejecting %s", client)
            return False
        if not allowed:
            return True
        return client in allowed

    def _run_action(self, action: Action, params: dict[str, Any], client: str) -> tuple[int, dict[str, Any]]:
        started = time.monotonic()
        log.info("status API: action %s requested by %s", action.name, client)
        try:
            result = dict(action.handler(params))
        except ActionInputError as error:
            log.warning("status API: action %s from %s rejected: %s", action.name, client, error)
            return HTTPStatus.BAD_REQUEST, {"error": str(error)}
        except Refused as error:
            log.warning("status API: action %s from %s rejected by a safety rule: %s", action.name, client, error)
            return HTTPStatus.CONFLICT, {"error": str(error)}
        except MailcowHaError as error:
            log.error("status API: action %s from %s failed: %s", action.name, client, error)
            return HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(error)}
        except Exception as error:
            log.exception("status API: action %s from %s failed unexpectedly", action.name, client)
            return HTTPStatus.INTERNAL_SERVER_ERROR, {
                "error": f"action {action.name} failed with {type(error).__name__}; see the agent log on {self.node}"
            }
        log.info("status API: action %s from %s done in %.2f s", action.name, client, time.monotonic() - started)
        return HTTPStatus.OK, result

    def try_enter(self) -> bool:
        return self._slots.acquire(blocking=False)

    def leave(self) -> None:
        self._slots.release()


def _snapshot_response(path: str, node: str, snapshot: NodeSnapshot) -> tuple[int, dict[str, Any]]:
    """Answer /v1/status with the snapshot, /v1/health and /v1/master with 200 or 503."""
    if path == f"{API_PREFIX}/status":
        return HTTPStatus.OK, snapshot.to_dict()
    if path == f"{API_PREFIX}/health":
        status = HTTPStatus.OK if snapshot.healthy else HTTPStatus.SERVICE_UNAVAILABLE
        return status, {"node": node, "healthy": snapshot.healthy, "reason": snapshot.reason}
    status = HTTPStatus.OK if snapshot.vrrp_state == "MASTER" else HTTPStatus.SERVICE_UNAVAILABLE
    return status, {"node": node, "vrrp_state": snapshot.vrrp_state}


def _reject_wildcard(address: str) -> None:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(f"status API address {address!r} is not an IP address; use node.private_ip") from None
    if parsed.is_unspecified:
        raise ConfigError(
            f"status API address {address} would listen on every interface; use the node's private address"
        )
