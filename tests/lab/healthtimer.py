"""Run the health checks of a node's containers, as the systemd timers that podman creates would.

    python -m lab.healthtimer --socket PATH [--interval S]

Without systemd, podman never runs a container's health check on its own, so `State.Health`
stays `starting`. This loop, started inside each lab node, asks podman's API to run the check
(`GET /libpod/containers/{name}/healthcheck`) for every running container that has one, every
`interval` seconds, which is what podman's per-container timer does on a systemd host.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import socket
import sys
import time
from typing import Any

log = logging.getLogger(__name__)

_LIBPOD = "/v4.0.0/libpod"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _get(path: str, url: str, timeout: float = 10.0) -> Any:
    connection = _UnixConnection(path, timeout)
    try:
        connection.request("GET", url)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    return json.loads(body) if body else None


def check_once(socket_path: str) -> int:
    """Run the health check of every running container that defines one; return how many ran."""
    containers = _get(socket_path, f"{_LIBPOD}/containers/json") or []
    ran = 0
    for container in containers:
        if container.get("State") != "running":
            continue
        name = container["Names"][0]
        result = _get(socket_path, f"{_LIBPOD}/containers/{name}/healthcheck")
        if isinstance(result, dict) and "Status" in result:
            ran += 1
    return ran


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run podman health checks the way its systemd timers would.")
    parser.add_argument("--socket", required=True, help="path of podman's API socket")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between two rounds (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    while True:
        started = time.monotonic()
        try:
            check_once(args.socket)
        except (OSError, http.client.HTTPException, ValueError) as error:
            log.warning("health check round failed: %s", error)
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))


if __name__ == "__main__":
    sys.exit(main())
