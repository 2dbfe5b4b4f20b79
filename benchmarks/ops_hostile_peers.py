"""Measure how the status API and the alerter cope with peers that stall.

Two cases, both on loopback:
- status API: the latency of `GET /v1/status` through StatusClient, alone and while N clients
  hold connections open by trickling a POST body one byte at a time;
- alerts: N alerts with distinct subjects sent to a receiver that never responds in time (Apprise's
  json:// scheme, alert timeout T), and how long the queue takes to be handled.

    .venv/bin/python benchmarks/ops_hostile_peers.py [--slow-clients 50] [--alerts 50] [--alert-timeout 1]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness.alertreceiver import AlertReceiver
from mailcow_ha.adapters.alerts import AppriseAlerter
from mailcow_ha.agent.snapshot import NodeSnapshot
from mailcow_ha.agent.statusapi import StatusApi
from mailcow_ha.agent.statusclient import StatusClient
from mailcow_ha.alert_events import AlertEvent

SECRET = "benchmark-secret"


def snapshot() -> NodeSnapshot:
    return NodeSnapshot(
        cluster="bench",
        node="node-1",
        node_index=1,
        private_ip="127.0.0.1",
        agent_version="bench",
        agent_started_at=0.0,
        taken_at=time.time(),
        vrrp_state="MASTER",
        healthy=True,
        reason="benchmark",
    )


def read_latencies(client: StatusClient, count: int) -> list[float]:
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        client.status("127.0.0.1")
        durations.append(time.perf_counter() - started)
    return durations


def trickle(port: int, stop: threading.Event) -> None:
    """Keep one POST open, sending a body byte every 0.5 s, reconnecting when the server drops it."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
                connection.sendall(b"POST /v1/actions/x HTTP/1.1\r\nHost: a\r\nContent-Length: 60000\r\n\r\n")
                while not stop.wait(0.5):
                    connection.sendall(b"x")
        except OSError:
            stop.wait(0.1)


def status_api_case(slow_clients: int) -> None:
    api = StatusApi(
        address="127.0.0.1", port=0, cluster="bench", node="node-1", secret=SecretStr(SECRET), snapshot=snapshot
    )
    api.start()
    port = api.address[1]
    client = StatusClient(cluster="bench", secret=SecretStr(SECRET), port=port, timeout=5.0)
    try:
        quiet = read_latencies(client, 200)
        stop = threading.Event()
        threads = [threading.Thread(target=trickle, args=(port, stop), daemon=True) for _ in range(slow_clients)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        try:
            loaded = read_latencies(client, 200)
        except Exception as error:
            print(f"status API with {slow_clients} slow clients: reads failed: {error}")
            loaded = []
        stop.set()
        for thread in threads:
            thread.join(5)
    finally:
        api.stop()
    median, worst = statistics.median(quiet) * 1000, max(quiet) * 1000
    print(f"status read, no other clients: median {median:.2f} ms, max {worst:.2f} ms")
    if loaded:
        print(
            f"status read, {slow_clients} slow clients: median {statistics.median(loaded) * 1000:.2f} ms, "
            f"max {max(loaded) * 1000:.2f} ms"
        )


def alerts_case(count: int, timeout: float) -> None:
    with AlertReceiver() as receiver, tempfile.TemporaryDirectory() as state_dir:
        receiver.set_delay(30.0)
        alerter = AppriseAlerter(
            "bench", "node-1", [SecretStr(receiver.json_url())], Path(state_dir), timeout=timeout, retry_delays=()
        )
        started = time.monotonic()
        for number in range(count):
            alerter.send(AlertEvent.DRIFT, f"benchmark alert {number}", {"subject": f"resource {number}"})
        handled = alerter.flush(count * timeout * 3)
        elapsed = time.monotonic() - started
        alerter.close(1.0)
    state = "handled" if handled else "NOT handled"
    print(f"{count} distinct alerts to a hung receiver (timeout {timeout:g} s): {state} after {elapsed:.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow-clients", type=int, default=50)
    parser.add_argument("--alerts", type=int, default=50)
    parser.add_argument("--alert-timeout", type=float, default=1.0)
    args = parser.parse_args()
    status_api_case(args.slow_clients)
    alerts_case(args.alerts, args.alert_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
