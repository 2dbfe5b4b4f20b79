"""The fake's HTTP server: authentication, rate limit headers, faults, JSON errors, routing."""

from __future__ import annotations

import hmac
import http.server
import json
import logging
import secrets
import socket
import threading
import urllib.parse
from typing import Any

from harness.fakecloud import routes
from harness.fakecloud.control import handle_control
from harness.fakecloud.errors import ApiError
from harness.fakecloud.faults import Fault
from harness.fakecloud.ledger import RateLimitState
from harness.fakecloud.store import FakeCloud

log = logging.getLogger(__name__)

API_PREFIX = "/v1"
CONTROL_PREFIX = "/_fake"
MAX_BODY = 1 << 20


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes. With Nagle's algorithm the second waits for the
    # client's delayed ACK, which added about 40 ms to every request on loopback.
    disable_nagle_algorithm = True
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fake cloud %s: %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    # --- the request -----------------------------------------------------------------------------

    def _serve(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        fake = self.server.fake
        try:
            body = self._read_body()
        except ApiError as error:
            self._send(error.status, error.body())
            return
        if not self._authorized():
            rejection = ApiError("unauthorized", "unable to authenticate")
            if not url.path.startswith(API_PREFIX + "/"):
                self._send(rejection.status, rejection.body())
                return
            # The real API rate-limits requests whether they are authenticated or not.
            budget = fake.rate_limit.consume()
            if not budget.allowed:
                rejection = ApiError("rate_limit_exceeded")
            fake.requests.record(method, url.path[len(API_PREFIX) :], rejection.status)
            self._send(rejection.status, rejection.body(), budget)
            return
        if url.path.startswith(CONTROL_PREFIX + "/"):
            self._serve_control(method, url.path[len(CONTROL_PREFIX) :], query, body)
        elif url.path.startswith(API_PREFIX + "/"):
            self._serve_api(method, url.path[len(API_PREFIX) :], query, body)
        else:
            self._send(404, ApiError("not_found", f"no endpoint {url.path}").body())

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError("invalid_input", f"request body larger than {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError("json_error", "the request body is not valid JSON") from None

    def _authorized(self) -> bool:
        expected = f"Bearer {self.server.token}".encode()
        given = (self.headers.get("Authorization") or "").encode()
        return hmac.compare_digest(given, expected)

    def _serve_control(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> None:
        try:
            status, payload = handle_control(self.server.fake, method, path, query, body)
        except ApiError as error:
            status, payload = error.status, error.body()
        self._send(status, payload)

    def _serve_api(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> None:
        fake = self.server.fake
        try:
            route, ids = routes.resolve(method, path)
        except ApiError as error:
            fake.requests.record(method, path, error.status)
            self._send(error.status, error.body(), fake.rate_limit.consume())
            return
        budget = fake.rate_limit.consume()
        fault = fake.faults.take(route.operation)
        if fault is not None and fault.hang and not fault.hang_after and self.server.stopping.wait(fault.hang):
            return
        if fault is not None and fault.rate_limit_reset_in is not None:
            fake.rate_limit.block(fault.rate_limit_reset_in)
            budget = fake.rate_limit.consume()
        status, payload = self._respond(route, ids, query, body, fault=fault, budget=budget)
        fake.requests.record(method, route.template, status)
        if fault is not None and fault.then is not None:
            fault.then()
        if fault is not None and fault.hang and fault.hang_after and self.server.stopping.wait(fault.hang):
            return
        self._send(status, payload, budget)

    def _respond(
        self,
        route: routes.Route,
        ids: dict[str, int],
        query: dict[str, list[str]],
        body: Any,
        *,
        fault: Fault | None,
        budget: RateLimitState,
    ) -> tuple[int, Any]:
        if not budget.allowed:
            return 429, ApiError("rate_limit_exceeded").body()
        if fault is not None and fault.is_error:
            code = fault.error_code()
            if code is None:
                return fault.error_status(), None
            error = ApiError(code, fault.message)
            return fault.error_status(), error.body()
        action_fault = fault if fault is not None and fault.action is not None else None
        if route.method == "POST" and not isinstance(body, dict):
            error = ApiError("invalid_input", "root must be a JSON object")
            return error.status, error.body()
        try:
            return route.handler(self.server.fake, ids, query, body, action_fault)
        except ApiError as error:
            return error.status, error.body()

    def _send(self, status: int, payload: Any, budget: RateLimitState | None = None) -> None:
        if payload is None:
            data = b"<html><body><h1>" + str(status).encode() + b" Gateway error</h1></body></html>\n"
            content_type = "text/html"
        else:
            data = json.dumps(payload).encode()
            content_type = "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Correlation-Id", secrets.token_hex(8))
            if budget is not None:
                self.send_header("RateLimit-Limit", str(budget.limit))
                self.send_header("RateLimit-Remaining", str(budget.remaining))
                self.send_header("RateLimit-Reset", str(budget.reset))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("fake cloud: the client closed the connection before the response")


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeCloud, token: str) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.fake = fake
        self.token = token
        self.stopping = threading.Event()


class FakeCloudServer:
    """Serves a FakeCloud over HTTP on `host:port` (port 0 picks a free one) in a background thread.

    Use as a context manager, or call `start()` and `stop()`. `url` is the API endpoint to give
    `hcloud.Client(api_endpoint=...)`.
    """

    def __init__(self, fake: FakeCloud, token: str, host: str = "127.0.0.1", port: int = 0) -> None:
        if not token:
            raise ValueError("the fake cloud needs a non-empty API token")
        self.fake = fake
        self._httpd = _HttpServer((host, port), fake, token)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fakecloud-http", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}{API_PREFIX}"

    def start(self) -> FakeCloudServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake requests held by a hang fault and close the socket."""
        self._httpd.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeCloudServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
