"""The lab's cloud: the fake Hetzner Cloud API, plus the hooks that make its state physical.

Run inside the lab's cloud namespace as
`python -m lab.cloudhost --lab-dir DIR --listen ADDRESS:PORT --router-ns NS`. It serves the fake
API (`harness.fakecloud`) to the nodes and, from the fake's own event log, in the thread that
completes each action:

- volume created: makes the image file (formatted if the API was asked to format it);
- volume attached or detached: plugs or unplugs the node's loop device (lab.volumes);
- floating IP created, assigned or unassigned: points the router's route for it at the server.

So a device appears, and the router follows, before the API reports the action as finished to
the next poll. Every hook result is appended to `cloud/events.jsonl` with its time, which the
timelines read.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from harness.fakecloud import FakeCloud, FakeCloudServer
from lab.manifest import Manifest
from lab.shell import LabError, ip
from lab.volumes import VolumeStore

log = logging.getLogger(__name__)

CLOUD_DIR = "cloud"
TOKEN_FILE = "token"
STATE_FILE = "state.json"
EVENTS_FILE = "events.jsonl"
READY_FILE = "ready"


class CloudHooks:
    """Applies the fake's state changes to the lab's volumes and router."""

    def __init__(self, fake: FakeCloud, lab_dir: Path, router_ns: str) -> None:
        self.fake = fake
        self.router_ns = router_ns
        self.volumes = VolumeStore(lab_dir, Manifest(lab_dir))
        self.events_path = lab_dir / CLOUD_DIR / EVENTS_FILE
        self._write_lock = threading.Lock()

    def handle(self, event: dict[str, Any]) -> None:
        """Apply one fake event; a failing hook is logged and recorded, never raised into the fake."""
        kind = event["kind"]
        try:
            detail = self._apply(kind, event)
        except (LabError, OSError) as error:
            log.error("hook for %s failed: %s", kind, error)
            self._note(kind, event, error=str(error))
            return
        if detail is not None:
            self._note(kind, event, **detail)

    def _apply(self, kind: str, event: dict[str, Any]) -> dict[str, Any] | None:
        if kind == "volume.created":
            volume = self.fake.get_volume(event["volume"])
            self.volumes.create(volume.id, volume.size, volume.format)
            if volume.server is None:
                return {}
            return self._attach(volume.id, volume.server)
        if kind == "volume.attached":
            return self._attach(event["volume"], event["server"])
        if kind == "volume.detached":
            detached = self.volumes.detach(event["volume"])
            return {"node": detached.node, "device": detached.device} if detached else {}
        if kind in ("floating_ip.created", "floating_ip.assigned", "floating_ip.unassigned"):
            return self._route(event["floating_ip"])
        return None

    def _attach(self, volume_id: int, server_id: int) -> dict[str, Any]:
        server = self.fake.get_server(server_id)
        attachment = self.volumes.attach(volume_id, server.name)
        return {"node": server.name, "device": attachment.device}

    def _route(self, floating_ip_id: int) -> dict[str, Any]:
        floating_ip = self.fake.get_floating_ip(floating_ip_id)
        if floating_ip.type != "ipv4":
            # NOTE: the lab's networks are IPv4 only, so an IPv6 floating IP is not routed anywhere.
            return {"skipped": "ipv6"}
        address = str(ipaddress.ip_interface(floating_ip.ip).ip)
        public_ip = None
        if floating_ip.server is not None:
            public_ip = self.fake.get_server(floating_ip.server).public_ipv4
        if public_ip is None:
            ip("route", "replace", "unreachable", f"{address}/32", netns=self.router_ns)
        else:
            ip("route", "replace", f"{address}/32", "via", public_ip, "dev", "eth0", "onlink", netns=self.router_ns)
        return {"ip": address, "next_hop": public_ip}

    def _note(self, kind: str, event: dict[str, Any], **detail: Any) -> None:
        record = {"time": time.time(), "kind": kind, "seq": event.get("seq"), **event, **detail}
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self._write_lock, open(self.events_path, "a", encoding="utf-8") as stream:
            stream.write(line)


def read_hook_events(lab_dir: Path) -> list[dict[str, Any]]:
    """Return every hook record written so far, oldest first."""
    path = lab_dir / CLOUD_DIR / EVENTS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the lab's fake cloud API and apply its state to the lab.")
    parser.add_argument("--lab-dir", type=Path, required=True, help="the lab directory")
    parser.add_argument("--listen", type=_parse_listen, required=True, help="ADDRESS:PORT to serve the API on")
    parser.add_argument("--router-ns", required=True, help="network namespace of the lab's router")
    parser.add_argument("--action-latency", type=float, default=0.0, help="seconds every action runs (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    cloud_dir = args.lab_dir / CLOUD_DIR
    token = (cloud_dir / TOKEN_FILE).read_text(encoding="utf-8").strip()
    fake = FakeCloud(action_latency=args.action_latency, state_file=cloud_dir / STATE_FILE)
    hooks = CloudHooks(fake, args.lab_dir, args.router_ns)
    fake.subscribe(hooks.handle)
    host, port = args.listen
    server = FakeCloudServer(fake, token, host, port).start()

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    ready = cloud_dir / READY_FILE
    ready.with_suffix(".tmp").write_text(f"{server.url}\n{os.getpid()}\n", encoding="utf-8")
    ready.with_suffix(".tmp").replace(ready)
    log.info("fake cloud API listening on %s", server.url)
    stop.wait()
    server.stop()
    fake.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
