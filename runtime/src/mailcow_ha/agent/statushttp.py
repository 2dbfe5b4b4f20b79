"""The HTTP server under the status API: bounded connections, bounded request reading, JSON replies.

A peer that connects and sends its request slowly must not stop the API from serving the other
members. So the server accepts at most `max_connections` connections at a time, each connection
carries exactly one request, and the request line, headers and body must arrive within
`request_timeout` seconds of the connection being accepted, however slowly the bytes trickle in.
Only a completely read request takes one of the API's slots for running handlers.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
DEFAULT_REQUEST_TIMEOUT = 10.0
"""Seconds from accepting a connection until its whole request must have arrived."""
DEFAULT_MAX_CONNECTIONS = 64
"""Open connections beyond this are closed at once, so slow clients cannot use up the threads."""
REPLY_TIMEOUT = 10.0
"""Seconds the reply may take to leave the socket."""


class RequestSink(Protocol):
    """The status API calls that the handler makes once a request has been read completely."""

    def try_enter(self) -> bool: ...

    def leave(self) -> None: ...

    def handle_get(self, path: str) -> tuple[int, dict[str, Any]]: ...

    def handle_post(
        self, path: str, client: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]: ...


class _DeadlineReader(io.RawIOBase):
    """A socket reader whose reads share one deadline for the whole request."""

    def __init__(self, connection: socket.socket, deadline: float) -> None:
        super().__init__()
        self._connection = connection
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for the whole request")
        self._connection.settimeout(remaining)
        return self._connection.recv_into(buffer)


class StatusHttpServer(ThreadingHTTPServer):
    """A threading HTTP server that closes connections beyond its limit instead of starting threads."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = DEFAULT_MAX_CONNECTIONS
    """The listen backlog; socketserver's default of 5 drops connections of a burst for a 1 s SYN retry."""

    def __init__(
        self,
        server_address: tuple[str, int],
        sink: RequestSink,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if ":" in server_address[0]:
            self.address_family = socket.AF_INET6
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self._connections = threading.BoundedSemaphore(max_connections)
        self._rejected = 0
        super().__init__(server_address, _handler_for(sink, request_timeout))

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connections.acquire(blocking=False):
            self._rejected += 1
            # Only the first rejection and every thousandth are logged, so a flood cannot fill the log.
            if self._rejected == 1 or self._rejected % 1000 == 0:
                log.warning(
                    "status API: closed a connection from %s because %d are open (%d closed so far)",
                    client_address[0],
                    self.max_connections,
                    self._rejected,
                )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._connections.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver calls this inside its except clause and would print the traceback to stderr.
        log.error("status API: request from %s failed", client_address[0], exc_info=sys.exc_info())

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()


def _handler_for(sink: RequestSink, request_timeout: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "mailcow-ha"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.rfile.close()
            deadline = time.monotonic() + request_timeout
            self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

        def do_GET(self) -> None:
            self.close_connection = True
            path = self.path.split("?", 1)[0]
            if not sink.try_enter():
                self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many concurrent requests; retry"})
                return
            try:
                status, payload = sink.handle_get(path)
            finally:
                sink.leave()
            self._reply(status, payload)

        def do_POST(self) -> None:
            self.close_connection = True
            body = self._read_body()
            if body is None:
                return
            if not sink.try_enter():
                self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many concurrent requests; retry"})
                return
            try:
                headers = {name: value for name, value in self.headers.items()}
                status, payload, extra = sink.handle_post(self.path, self.client_address[0], headers, body)
            finally:
                sink.leave()
            self._reply(status, payload, extra)

        def _read_body(self) -> bytes | None:
            length_text = self.headers.get("Content-Length")
            try:
                length = int(length_text) if length_text is not None else -1
            except ValueError:
                length = -1
            if length < 0:
                self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length is required"})
                return None
            if length > MAX_BODY:
                self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body larger than {MAX_BODY} bytes"})
                return None
            body = self.rfile.read(length)
            if len(body) < length:
                log.info("status API: %s closed the connection before sending its body", self.client_address[0])
                return None
            return body

        def _reply(self, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None) -> None:
            data = json.dumps(payload, sort_keys=True).encode("utf-8")
            self.connection.settimeout(REPLY_TIMEOUT)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            try:
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError, TimeoutError) as error:
                self.close_connection = True
                log.info("status API: reply to %s not sent: %s", self.client_address[0], type(error).__name__)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("status API %s: %s", self.client_address[0], format % args)

    return Handler
