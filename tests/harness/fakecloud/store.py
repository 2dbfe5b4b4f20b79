"""The fake cloud's state and rules: resources, asynchronous actions, locks, events.

Every method is thread-safe. Mutating API operations return an action, which runs for the
latency configured for its operation and then ends in `success` (its effect applies at that
moment) or, when a fault requests it, in `error` or never. With a latency of 0 the effect applies at
once and the action is returned already finished.
"""

from __future__ import annotations

import dataclasses
import heapq
import ipaddress
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.fakecloud import queries
from harness.fakecloud import resources as res
from harness.fakecloud.catalog import LOCATIONS, SERVER_TYPES
from harness.fakecloud.errors import ApiError, invalid_field, not_found
from harness.fakecloud.faults import Fault, FaultBook
from harness.fakecloud.ledger import EventLog, RateLimit, RequestLedger

Effect = Callable[[], list[tuple[str, dict[str, Any]]]]
"""Applies an action's result under the store lock and returns the events it caused."""


class FakeCloud:
    """One fake Hetzner Cloud project."""

    def __init__(
        self,
        *,
        action_latency: float = 0.0,
        latencies: dict[str, float] | None = None,
        rate_limit: int = 3600,
        state_file: Path | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self._wake = threading.Condition(self.lock)
        self.servers: dict[int, res.Server] = {}
        self.volumes: dict[int, res.Volume] = {}
        self.floating_ips: dict[int, res.FloatingIp] = {}
        self.networks: dict[int, res.Network] = {}
        self.actions: dict[int, res.Action] = {}
        self._effects: dict[int, Effect] = {}
        self._pending: list[tuple[float, int]] = []
        self._next_ids = {"server": 1001, "volume": 2001, "floating_ip": 3001, "network": 4001, "action": 9001}
        self.default_latency = action_latency
        self.latencies: dict[str, float] = dict(latencies or {})
        self.events = EventLog()
        self.requests = RequestLedger()
        self.rate_limit = RateLimit(rate_limit)
        self.faults = FaultBook()
        self.state_file = state_file
        self._closed = False
        if state_file is not None and state_file.exists():
            self._load(state_file)
        self._scheduler = threading.Thread(target=self._run_scheduler, name="fakecloud-actions", daemon=True)
        self._scheduler.start()

    # --- configuration ---------------------------------------------------------------------------

    def set_action_latency(self, operation: str | None, seconds: float) -> None:
        """Set how long actions of `operation` (such as `volume.attach`) run; None sets the default."""
        if seconds < 0:
            raise ValueError(f"action latency must not be negative, got {seconds}")
        with self.lock:
            if operation is None:
                self.default_latency = seconds
            else:
                self.latencies[operation] = seconds

    def inject(self, fault: Fault | None = None, **fields: Any) -> Fault:
        """Add a fault (see harness.fakecloud.faults.Fault), given whole or as its fields."""
        return self.faults.add(fault if fault is not None else Fault(**fields))

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call `callback(event)` after every state change; return a function that unsubscribes it."""
        return self.events.subscribe(callback)

    def close(self) -> None:
        with self.lock:
            self._closed = True
            self._wake.notify_all()
        self._scheduler.join(timeout=5)

    # --- creation (no action, as a Pulumi program or the console would leave things) -------------

    def _new_id(self, kind: str, wanted: int | None, existing: dict[int, Any]) -> int:
        if wanted is not None:
            if wanted in existing:
                raise ApiError("uniqueness_error", f"{kind} with ID {wanted} already exists")
            self._next_ids[kind] = max(self._next_ids[kind], wanted + 1)
            return wanted
        new_id = self._next_ids[kind]
        self._next_ids[kind] += 1
        return new_id

    def create_network(
        self,
        name: str,
        ip_range: str = "10.0.0.0/16",
        *,
        subnet: str = "10.0.1.0/24",
        network_zone: str = "eu-central",
        labels: dict[str, str] | None = None,
        id: int | None = None,
    ) -> res.Network:
        with self.lock:
            network_id = self._new_id("network", id, self.networks)
            gateway = str(next(ipaddress.ip_network(ip_range).hosts()))
            subnets = [{"type": "cloud", "ip_range": subnet, "network_zone": network_zone, "gateway": gateway}]
            network = res.Network(network_id, name, ip_range, subnets, dict(labels or {}), time.time())
            self.networks[network_id] = network
        self._changed("network.created", network=network_id)
        return network

    def create_server(
        self,
        name: str,
        *,
        location: str = "fsn1",
        server_type: str = "cx22",
        labels: dict[str, str] | None = None,
        status: str = "running",
        public_ipv4: str | None = None,
        public_ipv6: str | None = None,
        network_id: int | None = None,
        private_ip: str | None = None,
        id: int | None = None,
    ) -> res.Server:
        if location not in LOCATIONS:
            raise invalid_field("location", f"unknown location {location!r}")
        if server_type not in SERVER_TYPES:
            raise invalid_field("server_type", f"unknown server type {server_type!r}")
        if status not in res.SERVER_STATUSES:
            raise invalid_field("status", f"unknown server status {status!r}")
        with self.lock:
            if any(server.name == name for server in self.servers.values()):
                raise ApiError("uniqueness_error", f"server name {name!r} is already used")
            server_id = self._new_id("server", id, self.servers)
            server = res.Server(server_id, name, location, server_type, status, dict(labels or {}))
            server.public_ipv4 = public_ipv4 or f"198.51.100.{server_id % 250 + 1}"
            server.public_ipv6 = public_ipv6 or f"2001:db8:0:{server_id:x}::/64"
            server.created = time.time()
            if network_id is not None:
                if network_id not in self.networks:
                    raise not_found("network", network_id)
                if private_ip is None:
                    raise invalid_field("private_ip", "required when network_id is given")
                mac = f"86:00:00:{server_id >> 16 & 0xFF:02x}:{server_id >> 8 & 0xFF:02x}:{server_id & 0xFF:02x}"
                server.private_net.append(res.PrivateNet(network_id, private_ip, [], mac))
            self.servers[server_id] = server
        self._changed("server.created", server=server_id)
        return server

    def create_volume(
        self,
        name: str,
        *,
        size: int = 10,
        location: str = "fsn1",
        server_id: int | None = None,
        labels: dict[str, str] | None = None,
        format: str | None = "ext4",
        id: int | None = None,
    ) -> res.Volume:
        if not 10 <= size <= 10240:
            raise invalid_field("size", f"size must be between 10 and 10240 GB, got {size}")
        if location not in LOCATIONS:
            raise invalid_field("location", f"unknown location {location!r}")
        with self.lock:
            if server_id is not None:
                server = self.get_server(server_id)
                if server.location != location:
                    raise invalid_field("server", "the server must be in the volume's location")
            volume_id = self._new_id("volume", id, self.volumes)
            volume = res.Volume(volume_id, name, location, size, server_id, dict(labels or {}), format)
            volume.created = time.time()
            self.volumes[volume_id] = volume
        self._changed("volume.created", volume=volume_id, server=server_id)
        return volume

    def create_floating_ip(
        self,
        name: str | None = None,
        *,
        type: str = "ipv4",
        ip: str | None = None,
        home_location: str = "fsn1",
        server_id: int | None = None,
        labels: dict[str, str] | None = None,
        description: str | None = None,
        id: int | None = None,
    ) -> res.FloatingIp:
        if type not in ("ipv4", "ipv6"):
            raise invalid_field("type", f"type must be ipv4 or ipv6, got {type!r}")
        if home_location not in LOCATIONS:
            raise invalid_field("home_location", f"unknown location {home_location!r}")
        with self.lock:
            if server_id is not None:
                self.get_server(server_id)
            fip_id = self._new_id("floating_ip", id, self.floating_ips)
            if ip is None:
                ip = f"203.0.113.{fip_id % 250 + 1}" if type == "ipv4" else f"2001:db8:f:{fip_id:x}::/64"
            address = ip.split("/")[0] if type == "ipv4" else str(next(ipaddress.ip_network(ip).hosts()))
            floating_ip = res.FloatingIp(fip_id, name or f"floating-ip-{fip_id}", type, ip, home_location, server_id)
            floating_ip.labels = dict(labels or {})
            floating_ip.description = description
            floating_ip.dns_ptr = {address: None}
            floating_ip.created = time.time()
            self.floating_ips[fip_id] = floating_ip
        self._changed("floating_ip.created", floating_ip=fip_id, server=server_id)
        return floating_ip

    # --- direct changes for the lab (no action, no lock check) -----------------------------------

    def set_server_status(self, server_id: int, status: str) -> None:
        """Change a server's status at once, as a crash or a console power switch does."""
        if status not in res.SERVER_STATUSES:
            raise invalid_field("status", f"unknown server status {status!r}")
        with self.lock:
            self.get_server(server_id).status = status
        self._changed("server.status_changed", server=server_id, status=status)

    def set_volume_server(self, volume_id: int, server_id: int | None) -> None:
        """Attach or detach a volume at once, bypassing the API's rules (to set up a scenario)."""
        with self.lock:
            volume = self.get_volume(volume_id)
            if server_id is not None:
                self.get_server(server_id)
            previous, volume.server = volume.server, server_id
        if previous is not None:
            self._changed("volume.detached", volume=volume_id, server=previous)
        if server_id is not None:
            self._changed("volume.attached", volume=volume_id, server=server_id)

    def set_floating_ip_server(self, floating_ip_id: int, server_id: int | None) -> None:
        """Assign or unassign a floating IP at once, bypassing the API's rules."""
        with self.lock:
            floating_ip = self.get_floating_ip(floating_ip_id)
            if server_id is not None:
                self.get_server(server_id)
            previous, floating_ip.server = floating_ip.server, server_id
        kind = "floating_ip.assigned" if server_id is not None else "floating_ip.unassigned"
        self._changed(kind, floating_ip=floating_ip_id, server=server_id, previous_server=previous, ip=floating_ip.ip)

    def finish_action(self, action_id: int, outcome: str = "success") -> None:
        """End a running action now (such as one a fault made never end) with `success` or `error`."""
        with self.lock:
            action = self.actions.get(action_id)
            if action is None:
                raise not_found("action", action_id)
            if action.status != "running":
                return
            action.outcome = outcome
        self._complete(action_id)

    # --- lookups (callers hold the lock) ---------------------------------------------------------

    def get_server(self, server_id: int) -> res.Server:
        server = self.servers.get(server_id)
        if server is None:
            raise not_found("server", server_id)
        return server

    def get_volume(self, volume_id: int) -> res.Volume:
        volume = self.volumes.get(volume_id)
        if volume is None:
            raise not_found("volume", volume_id)
        return volume

    @staticmethod
    def network_zone(location: str) -> str:
        return str(LOCATIONS[location]["network_zone"])

    def get_floating_ip(self, floating_ip_id: int) -> res.FloatingIp:
        floating_ip = self.floating_ips.get(floating_ip_id)
        if floating_ip is None:
            raise not_found("floating_ip", floating_ip_id)
        return floating_ip

    def snapshot(self) -> dict[str, Any]:
        """Return every resource as plain data (also the format of the state file)."""
        with self.lock:
            return {
                "servers": [dataclasses.asdict(server) for server in self.servers.values()],
                "volumes": [dataclasses.asdict(volume) for volume in self.volumes.values()],
                "floating_ips": [dataclasses.asdict(fip) for fip in self.floating_ips.values()],
                "networks": [dataclasses.asdict(network) for network in self.networks.values()],
                "next_ids": dict(self._next_ids),
            }

    # --- actions ---------------------------------------------------------------------------------

    def locked_resources(self) -> set[tuple[str, int]]:
        """Return the resources that running actions lock (the first resource of each)."""
        with self.lock:
            return {
                (action.resources[0]["type"], action.resources[0]["id"])
                for action in self.actions.values()
                if action.status == "running"
            }

    def check_unlocked(self, *resources: tuple[str, int]) -> None:
        locked = self.locked_resources()
        for kind, resource_id in resources:
            if (kind, resource_id) in locked:
                raise ApiError("locked", f"{kind} {resource_id} is locked by a running action")

    def start_action(
        self,
        operation: str,
        command: str,
        resources: list[tuple[str, int]],
        effect: Effect,
        fault: Fault | None = None,
    ) -> dict[str, Any]:
        """Create an action that applies `effect` when it ends, and return its JSON."""
        with self.lock:
            action_id = self._new_id("action", None, self.actions)
            latency = self.latencies.get(operation, self.default_latency)
            now = time.monotonic()
            never = fault is not None and fault.action == "never"
            action = res.Action(
                id=action_id,
                command=command,
                resources=[{"id": resource_id, "type": kind} for kind, resource_id in resources],
                started=time.time(),
                started_monotonic=now,
                finishes_at=None if never else now + latency,
            )
            if fault is not None and fault.action == "error":
                action.outcome = "error"
                action.error_code = fault.action_error_code
                action.error_message = fault.action_error_message
            self.actions[action_id] = action
            self._effects[action_id] = effect
            if action.finishes_at is not None and latency > 0:
                heapq.heappush(self._pending, (action.finishes_at, action_id))
                self._wake.notify_all()
        if action.finishes_at is not None and latency <= 0:
            self._complete(action_id)
        return queries.action_json(self, action_id)

    def _complete(self, action_id: int) -> None:
        """End an action: apply its effect, run the event callbacks, then report it finished.

        The callbacks run while the action still shows `running`, so whatever they do (the lab
        plugs a device, moves a route) is done before a poll can see the action finished.
        """
        events: list[tuple[str, dict[str, Any]]] = []
        with self.lock:
            action = self.actions[action_id]
            effect = self._effects.pop(action_id, None)
            if action.status != "running" or effect is None:
                return
            if action.outcome == "success":
                events = effect()
        for kind, ids in events:
            self._changed(kind, **ids)
        with self.lock:
            if action.outcome == "success":
                action.status = "success"
            else:
                action.status = "error"
                action.error = {"code": action.error_code, "message": action.error_message}
            action.finished = time.time()
        self._changed("action.finished", action=action_id, command=action.command, status=action.status)

    def _run_scheduler(self) -> None:
        while True:
            with self.lock:
                if self._closed:
                    return
                due: list[int] = []
                now = time.monotonic()
                while self._pending and self._pending[0][0] <= now:
                    due.append(heapq.heappop(self._pending)[1])
                if not due:
                    timeout = self._pending[0][0] - now if self._pending else None
                    self._wake.wait(timeout)
                    continue
            for action_id in due:
                self._complete(action_id)

    # --- persistence -----------------------------------------------------------------------------

    def _changed(self, kind: str, **ids: Any) -> None:
        if self.state_file is not None:
            self._save(self.state_file)
        self.events.record(kind, **ids)

    def _save(self, path: Path) -> None:
        text = json.dumps(self.snapshot(), indent=1, sort_keys=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)

    def _load(self, path: Path) -> None:
        data = json.loads(path.read_text(encoding="utf-8"))
        for raw in data.get("networks", []):
            self.networks[raw["id"]] = res.Network(**raw)
        for raw in data.get("servers", []):
            private = [res.PrivateNet(**entry) for entry in raw.pop("private_net", [])]
            self.servers[raw["id"]] = res.Server(**raw, private_net=private)
        for raw in data.get("volumes", []):
            self.volumes[raw["id"]] = res.Volume(**raw)
        for raw in data.get("floating_ips", []):
            self.floating_ips[raw["id"]] = res.FloatingIp(**raw)
        self._next_ids.update(data.get("next_ids", {}))
