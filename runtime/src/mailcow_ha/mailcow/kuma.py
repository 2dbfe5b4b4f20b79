"""External monitoring in Uptime Kuma, planned from the Pulumi stack's outputs.

`mailcow-ha kuma sync --outputs FILE` reads the JSON of `pulumi stack output --json` and creates
or updates the planned monitors in Uptime Kuma. They are HTTPS on the mail hostname, SMTP (25),
SMTPS (465), submission (587) and IMAPS (993) on the floating IPv4 address, and a ping per node. Every
monitor name starts with `mailcow-ha <mail hostname>`, which is how a later run finds the
monitors it created and updates them instead of adding duplicates. The plan and the comparison
with what Uptime Kuma returns are pure functions; mailcow_ha.mailcow.kuma_client talks to it.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mailcow_ha.errors import ConfigError, MailcowHaError

log = logging.getLogger(__name__)

MAIL_PORTS = (("SMTP", 25), ("SMTPS", 465), ("Submission", 587), ("IMAPS", 993))
REQUIRED_OUTPUTS = ("mailHostname", "floatingIpv4", "nodes")
COMPARED_FIELDS = ("type", "url", "hostname", "port", "interval", "maxretries")
_DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
"""One label of a host name: letters, digits and inner hyphens, at most 63 characters."""


class KumaError(MailcowHaError):
    """Uptime Kuma could not be reached, rejected the login, or rejected a change."""


@dataclass(frozen=True)
class StackOutputs:
    """The stack outputs the monitor plan needs."""

    mail_hostname: str
    floating_ipv4: str
    nodes: tuple[tuple[str, str], ...]
    """(node name, public IPv4 address) in node index order."""


@dataclass(frozen=True)
class MonitorSpec:
    """One monitor as Uptime Kuma's `add_monitor` takes it."""

    name: str
    type: str
    interval: int
    maxretries: int
    url: str | None = None
    hostname: str | None = None
    port: int | None = None

    def fields(self) -> dict[str, Any]:
        """Return the keyword arguments for add_monitor/edit_monitor, without unset values."""
        values: dict[str, Any] = {
            "type": self.type,
            "name": self.name,
            "interval": self.interval,
            "maxretries": self.maxretries,
        }
        for key in ("url", "hostname", "port"):
            if getattr(self, key) is not None:
                values[key] = getattr(self, key)
        return values


@dataclass(frozen=True)
class NotificationSpec:
    """A notification channel: Uptime Kuma's provider type and its provider fields."""

    name: str
    type: str
    options: Mapping[str, Any] = field(default_factory=dict)


class ChangeKind(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"
    STALE = "stale"
    """Named like ours but no longer planned (a removed node); deleted only with --prune."""


@dataclass(frozen=True)
class MonitorChange:
    kind: ChangeKind
    name: str
    monitor_id: int | None = None
    spec: MonitorSpec | None = None
    differences: tuple[str, ...] = ()


def load_outputs(path: Path) -> StackOutputs:
    """Read `pulumi stack output --json` output; raise ConfigError naming what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"stack outputs file {path} not found; write it with `pulumi stack output --json > {path.name}`"
        ) from None
    except OSError as error:
        raise ConfigError(f"stack outputs file {path} could not be read: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"stack outputs file {path} is not JSON ({error.msg} at line {error.lineno})") from None
    return parse_outputs(data, source=str(path))


def parse_outputs(data: Any, *, source: str = "stack outputs") -> StackOutputs:
    """Validate the outputs of a mailcow-ha stack."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} is not a JSON object; pass the output of `pulumi stack output --json`")
    missing = [key for key in REQUIRED_OUTPUTS if key not in data]
    if missing:
        raise ConfigError(
            f"{source} lacks {', '.join(missing)}, so it is not the output of a mailcow-ha stack "
            f"(it has {', '.join(sorted(data)) or 'no keys'}); run `pulumi stack output --json` in this project"
        )
    hostname = data["mailHostname"]
    if not isinstance(hostname, str) or not _is_host_name(hostname):
        raise ConfigError(f"{source}: mailHostname {hostname!r} is not a host name")
    floating_ipv4 = _ipv4(data["floatingIpv4"], f"{source}: floatingIpv4")
    raw_nodes = data["nodes"]
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise ConfigError(f"{source}: nodes must be a non-empty list")
    nodes = []
    for position, node in enumerate(raw_nodes):
        if not isinstance(node, dict) or not isinstance(node.get("name"), str) or not node["name"]:
            raise ConfigError(f"{source}: nodes[{position}] has no name")
        index = node.get("index", position + 1)
        if isinstance(index, bool) or not isinstance(index, int) or index < 1:
            raise ConfigError(f"{source}: nodes[{position}].index {index!r} is not a node index (1, 2, ...)")
        address = _ipv4(node.get("publicIpv4"), f"{source}: nodes[{position}].publicIpv4")
        nodes.append((index, node["name"], address))
    for label, values in (("name", [name for _, name, _ in nodes]), ("index", [str(i) for i, _, _ in nodes])):
        duplicates = sorted({value for value in values if values.count(value) > 1})
        if duplicates:
            raise ConfigError(
                f"{source}: nodes share the {label} ({', '.join(duplicates)}); each node needs its own monitor"
            )
    ordered = tuple((name, address) for _, name, address in sorted(nodes))
    return StackOutputs(hostname, floating_ipv4, ordered)


def _is_host_name(value: str) -> bool:
    labels = value.split(".")
    return len(value) <= 253 and len(labels) >= 2 and all(_DNS_LABEL.fullmatch(label) for label in labels)


def _ipv4(value: Any, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not an IPv4 address") from None


def monitor_prefix(outputs: StackOutputs) -> str:
    return f"mailcow-ha {outputs.mail_hostname}"


def plan_monitors(outputs: StackOutputs, *, interval: int = 60, maxretries: int = 2) -> list[MonitorSpec]:
    """Return the monitors a cluster needs, in a stable order."""
    prefix = monitor_prefix(outputs)
    monitors = [
        MonitorSpec(
            f"{prefix} HTTPS",
            "http",
            interval,
            maxretries,
            url=f"https://{outputs.mail_hostname}/",
        )
    ]
    for label, port in MAIL_PORTS:
        monitors.append(
            MonitorSpec(
                f"{prefix} {label} {port}",
                "port",
                interval,
                maxretries,
                hostname=outputs.floating_ipv4,
                port=port,
            )
        )
    for name, address in outputs.nodes:
        monitors.append(MonitorSpec(f"{prefix} ping {name}", "ping", interval, maxretries, hostname=address))
    return monitors


def diff_monitors(
    planned: Sequence[MonitorSpec], existing: Sequence[Mapping[str, Any]], prefix: str
) -> list[MonitorChange]:
    """Compare the plan with Uptime Kuma's monitors, matched by name.

    Raises KumaError when two existing monitors share a planned name, because updating one of
    them would leave the other behind.
    """
    by_name: dict[str, Mapping[str, Any]] = {}
    for monitor in existing:
        name = str(monitor.get("name", ""))
        if name in by_name and any(spec.name == name for spec in planned):
            raise KumaError(f"Uptime Kuma has two monitors named {name!r}; delete one of them and sync again")
        by_name[name] = monitor

    changes = []
    for spec in planned:
        current = by_name.get(spec.name)
        if current is None:
            changes.append(MonitorChange(ChangeKind.CREATE, spec.name, spec=spec))
            continue
        differences = tuple(
            key for key in COMPARED_FIELDS if key in spec.fields() and _normal(current.get(key)) != spec.fields()[key]
        )
        kind = ChangeKind.UPDATE if differences else ChangeKind.UNCHANGED
        changes.append(MonitorChange(kind, spec.name, int(current["id"]), spec, differences))

    planned_names = {spec.name for spec in planned}
    for name, monitor in sorted(by_name.items()):
        if name.startswith(f"{prefix} ") and name not in planned_names:
            changes.append(MonitorChange(ChangeKind.STALE, name, int(monitor["id"])))
    return changes


def _normal(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    return value


def load_notification(path: Path) -> NotificationSpec:
    """Read a notification channel from a JSON file: {"name": ..., "type": ..., provider fields...}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"notification file {path} could not be read as JSON: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not isinstance(data.get("type"), str):
        raise ConfigError(
            f"notification file {path} must be a JSON object with string keys name and type, "
            'e.g. {"name": "admins", "type": "smtp", "smtpHost": "..."}'
        )
    options = {key: value for key, value in data.items() if key not in ("name", "type")}
    return NotificationSpec(data["name"], data["type"], options)


class KumaApi(Protocol):
    """The calls of uptime_kuma_api.UptimeKumaApi that the sync uses, after login."""

    def get_monitors(self) -> list[dict[str, Any]]: ...
    def add_monitor(self, **kwargs: Any) -> dict[str, Any]: ...
    def edit_monitor(self, id_: int, **kwargs: Any) -> dict[str, Any]: ...
    def delete_monitor(self, id_: int) -> dict[str, Any]: ...
    def get_notifications(self) -> list[dict[str, Any]]: ...
    def add_notification(self, **kwargs: Any) -> dict[str, Any]: ...
    def edit_notification(self, id_: int, **kwargs: Any) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SyncReport:
    changes: tuple[MonitorChange, ...]
    notification_id: int | None
    pruned: tuple[str, ...]

    def count(self, kind: ChangeKind) -> int:
        return sum(1 for change in self.changes if change.kind is kind)


def sync(
    api: KumaApi,
    planned: Sequence[MonitorSpec],
    prefix: str,
    *,
    notification: NotificationSpec | None = None,
    prune: bool = False,
) -> SyncReport:
    """Create or update the planned monitors (and the notification channel) in Uptime Kuma."""
    notification_ids: list[int] = []
    notification_id = None
    if notification is not None:
        notification_id = ensure_notification(api, notification)
        notification_ids = [notification_id]

    existing = api.get_monitors()
    changes = diff_monitors(planned, existing, prefix)
    if notification_id is not None:
        by_id = {int(monitor.get("id", -1)): monitor for monitor in existing}
        changes = [_with_notification(change, by_id, notification_id) for change in changes]
    pruned = []
    for change in changes:
        if change.kind is ChangeKind.CREATE and change.spec is not None:
            log.info("kuma: creating monitor %s", change.name)
            api.add_monitor(**change.spec.fields(), notificationIDList=notification_ids)
        elif change.kind is ChangeKind.UPDATE and change.spec is not None and change.monitor_id is not None:
            log.info("kuma: updating monitor %s (%s)", change.name, ", ".join(change.differences))
            api.edit_monitor(change.monitor_id, **change.spec.fields(), notificationIDList=notification_ids)
        elif change.kind is ChangeKind.STALE and change.monitor_id is not None:
            if prune:
                log.info("kuma: deleting stale monitor %s", change.name)
                api.delete_monitor(change.monitor_id)
                pruned.append(change.name)
            else:
                log.warning("kuma: monitor %s is no longer planned; pass --prune to delete it", change.name)
    return SyncReport(tuple(changes), notification_id, tuple(pruned))


def _with_notification(
    change: MonitorChange, existing: Mapping[int, Mapping[str, Any]], notification_id: int
) -> MonitorChange:
    """Turn an unchanged monitor into an update when it lacks the notification channel."""
    if change.kind is not ChangeKind.UNCHANGED or change.monitor_id is None:
        return change
    attached = {int(value) for value in existing.get(change.monitor_id, {}).get("notificationIDList") or []}
    if notification_id in attached:
        return change
    return MonitorChange(ChangeKind.UPDATE, change.name, change.monitor_id, change.spec, ("notificationIDList",))


def ensure_notification(api: KumaApi, notification: NotificationSpec) -> int:
    """Create the notification channel or update the one with the same name; return its id."""
    fields = {"name": notification.name, "type": notification.type, **notification.options}
    for existing in api.get_notifications():
        if existing.get("name") == notification.name:
            notification_id = int(existing["id"])
            log.info("kuma: updating notification %s", notification.name)
            api.edit_notification(notification_id, **fields)
            return notification_id
    log.info("kuma: creating notification %s", notification.name)
    result = api.add_notification(**fields)
    try:
        return int(result["id"])
    except (KeyError, TypeError, ValueError):
        raise KumaError(f"Uptime Kuma returned no id for the new notification {notification.name!r}") from None
