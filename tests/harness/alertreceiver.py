"""A real HTTP endpoint on loopback that records what Apprise's json:// and form:// schemes post.

Used by the alert tests, and by any suite that wants to see which alerts a node sent:

    with AlertReceiver() as receiver:
        url = receiver.json_url("hooks/abc")      # json://127.0.0.1:<port>/hooks/abc
        ...
        receiver.wait_for(1, timeout=5)

`fail_next(n, status)` makes the next n requests fail with an HTTP status, and
`set_delay(seconds)` delays every response (for timeout tests).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


@dataclass(frozen=True)
class ReceivedAlert:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    payload: dict[str, Any]

    @property
    def title(self) -> str:
        return str(self.payload.get("title", ""))

    @property
    def message(self) -> str:
        return str(self.payload.get("message", ""))


@dataclass
class _Behaviour:
    failures_left: int = 0
    failure_status: int = 500
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class AlertReceiver:
    """An HTTP server on 127.0.0.1 with an ephemeral port, recording every POST."""

    def __init__(self) -> None:
        self.received: list[ReceivedAlert] = []
        self.requests = 0
        self._behaviour = _Behaviour()
        self._condition = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="alert-receiver", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def json_url(self, path: str = "alerts") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def form_url(self, path: str = "alerts") -> str:
        return f"form://127.0.0.1:{self.port}/{path}"

    def fail_next(self, count: int, status: int = 500) -> None:
        with self._behaviour.lock:
            self._behaviour.failures_left = count
            self._behaviour.failure_status = status

    def set_delay(self, seconds: float) -> None:
        with self._behaviour.lock:
            self._behaviour.delay = seconds

    def wait_for(self, count: int, timeout: float) -> list[ReceivedAlert]:
        """Wait until at least `count` alerts were recorded; return them all (maybe fewer at timeout)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while len(self.received) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            return list(self.received)

    def __enter__(self) -> AlertReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _record(self, alert: ReceivedAlert | None) -> None:
        with self._condition:
            self.requests += 1
            if alert is not None:
                self.received.append(alert)
            self._condition.notify_all()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._behaviour.lock:
                    delay = receiver._behaviour.delay
                    failing = receiver._behaviour.failures_left > 0
                    status = receiver._behaviour.failure_status
                    if failing:
                        receiver._behaviour.failures_left -= 1
                if delay:
                    time.sleep(delay)
                if failing:
                    receiver._record(None)
                    self.send_response(status)
                    self.end_headers()
                    return
                receiver._record(ReceivedAlert(self.path, dict(self.headers.items()), _parse(self.headers, body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


def _parse(headers: Any, body: bytes) -> dict[str, Any]:
    content_type = headers.get("Content-Type", "")
    text = body.decode("utf-8", errors="replace")
    if "json" in content_type:
        parsed = json.loads(text)
        return parsed if isinstance(parsed, dict) else {"value": parsed}
    if "multipart/form-data" in content_type:
        return _parse_multipart(content_type, body)
    return {key: values[-1] for key, values in parse_qs(text).items()}


def _parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            payload = part.get_payload(decode=True)
            fields[str(name)] = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else ""
    return fields
