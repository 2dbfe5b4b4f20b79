"""The immutable snapshot of one node's state that its agent hands to the status API.

The agent builds a new `NodeSnapshot` after every evaluation and hands it out by reference, so a
reader never sees a half-updated view. Every value is plain (strings, numbers, booleans, None)
so that `to_dict()` is JSON-ready and `from_dict()` rebuilds the same snapshot on another node.
Timestamps are Unix seconds (wall clock), because they are compared across nodes and shown to
administrators; durations are seconds.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

SNAPSHOT_FORMAT = 1
"""Version of the JSON layout. A reader rejects a snapshot with a format it does not know."""

VRRP_STATES = ("MASTER", "BACKUP", "FAULT", "STOP", "UNKNOWN")
"""Values of `NodeSnapshot.vrrp_state`. UNKNOWN lasts until the agent has learned keepalived's state."""


@dataclass(frozen=True)
class ProbeSnapshot:
    """The latest result of one health probe and its counters."""

    name: str
    """Probe name: `containers`, `galera`, `mount` or `floating-ip`."""
    ok: bool
    detail: str
    """One-line reason for the result (e.g. `postfix-mailcow is exited`)."""
    counted: bool = True
    """False when the probe's result does not count now (grace period, transition running)."""
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    duration: float = 0.0
    checked_at: float = 0.0


@dataclass(frozen=True)
class GaleraSnapshot:
    """The local MariaDB Galera member as the last probe saw it."""

    reachable: bool = False
    ready: bool | None = None
    """`wsrep_ready` ON."""
    cluster_status: str | None = None
    """`wsrep_cluster_status`: Primary, non-Primary or Disconnected."""
    local_state: str | None = None
    """`wsrep_local_state_comment`: Synced, Donor/Desynced, Joining, Joined, ..."""
    cluster_size: int | None = None
    cluster_uuid: str | None = None
    """`wsrep_cluster_state_uuid`, the history the member belongs to."""
    last_committed: int | None = None
    """`wsrep_last_committed`, the sequence number of the last applied write set."""
    error: str | None = None


@dataclass(frozen=True)
class ContainerSnapshot:
    """One container of the mailcow compose project on this node."""

    service: str
    name: str
    status: str
    """Docker's `State.Status`: running, exited, restarting, ..."""
    health: str | None = None
    """Docker's `State.Health.Status` (healthy, unhealthy, starting), None without a health check."""
    restarts_in_window: int = 0


@dataclass(frozen=True)
class MountSnapshot:
    """The shared data volume's mount point on this node."""

    mount_point: str
    mounted: bool
    marker_ok: bool = False
    """The marker file `<mount>/.mailcow-ha/volume.json` exists and names this cluster."""
    detail: str = ""


@dataclass(frozen=True)
class MaintenanceSnapshot:
    """Maintenance mode, during which no health failure fails the node over."""

    active: bool = False
    since: float | None = None
    expires_at: float | None = None
    """None while active means: until switched off."""
    reason: str = ""
    expired_unnoticed: bool = False
    """The mode ran past its expiry while on; the agent alerted once and ignores it now."""


@dataclass(frozen=True)
class BreakerSnapshot:
    """The circuit breaker against failover loops, as the failover core reports it."""

    tripped: bool = False
    """The breaker refused an automatic failover onto this node within the window: a failover loop."""
    open: bool = False
    """The next automatic failover onto this node would be refused (normal for a while after one)."""
    closes_at: float | None = None
    """When an open breaker allows a failover again by itself."""
    failovers_in_window: int = 0
    window: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class TransitionSnapshot:
    """The promote or demote running now and the outcome of the last one."""

    running: str | None = None
    """The VRRP state whose transition runs now. MASTER runs promote, the other states run demote."""
    started_at: float | None = None
    last_state: str | None = None
    last_outcome: str | None = None
    """Outcome of the last transition: ok, failed or superseded."""
    last_finished_at: float | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class NodeSnapshot:
    """This node's state as its agent saw it at `taken_at`."""

    cluster: str
    node: str
    node_index: int
    private_ip: str
    agent_version: str
    agent_started_at: float
    taken_at: float
    vrrp_state: str = "UNKNOWN"
    """keepalived's state of this node's VRRP instance: one of VRRP_STATES."""
    vrrp_state_since: float | None = None
    healthy: bool = False
    """The verdict written to keepalived's track file (True writes 0)."""
    reason: str = "agent starting"
    verdict_since: float | None = None
    grace_until: float | None = None
    """End of the grace period after a failover started, or None outside it."""
    probes: tuple[ProbeSnapshot, ...] = ()
    galera: GaleraSnapshot = field(default_factory=GaleraSnapshot)
    containers: tuple[ContainerSnapshot, ...] = ()
    mount: MountSnapshot | None = None
    floating_ips_expected: tuple[str, ...] = ()
    floating_ips_on_interface: tuple[str, ...] = ()
    """The configured floating IPs that the public interface carries now."""
    maintenance: MaintenanceSnapshot = field(default_factory=MaintenanceSnapshot)
    breaker: BreakerSnapshot | None = None
    transition: TransitionSnapshot | None = None
    members: tuple[str, ...] = ()
    """Names of the cluster's members as this node last learned them."""

    def to_dict(self) -> dict[str, Any]:
        """Return the snapshot as JSON-compatible data, tagged with SNAPSHOT_FORMAT."""
        data = dataclasses.asdict(self)
        data["format"] = SNAPSHOT_FORMAT
        return data

    def to_json(self) -> str:
        """Return the snapshot as a JSON document (sorted keys, no indentation)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeSnapshot:
        """Rebuild a snapshot from `to_dict()` output, e.g. one fetched from another node.

        Raises ValueError naming the problem when the data is not a snapshot of a known format.
        Keys this version does not know are ignored, so an older reader accepts a newer writer.
        """
        if not isinstance(data, dict):
            raise ValueError(f"node snapshot: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"node snapshot: unsupported format {data.get('format')!r}, expected {SNAPSHOT_FORMAT}")
        try:
            values = _known_fields(cls, data)
            values["probes"] = tuple(ProbeSnapshot(**_known_fields(ProbeSnapshot, p)) for p in data.get("probes", ()))
            values["containers"] = tuple(
                ContainerSnapshot(**_known_fields(ContainerSnapshot, c)) for c in data.get("containers", ())
            )
            values["galera"] = GaleraSnapshot(**_known_fields(GaleraSnapshot, data.get("galera") or {}))
            values["maintenance"] = MaintenanceSnapshot(
                **_known_fields(MaintenanceSnapshot, data.get("maintenance") or {})
            )
            values["mount"] = _optional(MountSnapshot, data.get("mount"))
            values["breaker"] = _optional(BreakerSnapshot, data.get("breaker"))
            values["transition"] = _optional(TransitionSnapshot, data.get("transition"))
            for name in ("floating_ips_expected", "floating_ips_on_interface", "members"):
                values[name] = tuple(data.get(name, ()))
            return cls(**values)
        except (TypeError, AttributeError) as error:
            raise ValueError(f"node snapshot: invalid field ({error})") from None


def _known_fields(cls: type[Any], data: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} must be an object, got {type(data).__name__}")
    names = {item.name for item in dataclasses.fields(cls)}
    return {key: value for key, value in data.items() if key in names}


def _optional(cls: type[Any], data: Any) -> Any:
    return None if data is None else cls(**_known_fields(cls, data))
