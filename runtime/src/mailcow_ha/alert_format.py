"""The text of alert messages: every message names the cluster, the node, the event and its reason."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from mailcow_ha.alert_events import AlertEvent
from mailcow_ha.alert_ratelimit import SUBJECT_DETAIL, RateEntry, rate_key

_NOTIFY_TYPES = {
    AlertEvent.FAILOVER_SUCCEEDED: "success",
    AlertEvent.FAILOVER_STARTED: "info",
    AlertEvent.HEALTH_CHANGED: "info",
    AlertEvent.GC_REPAIRED: "info",
    AlertEvent.MAINTENANCE_EXPIRED: "warning",
    AlertEvent.DRIFT: "warning",
}
"""Apprise notify type per event; every other event is a failure."""


def notify_type(event: str) -> str:
    """Return the Apprise notify type (info, success, warning, failure) of an event."""
    try:
        return _NOTIFY_TYPES.get(AlertEvent(event), "failure")
    except ValueError:
        return "warning"


def _timestamp(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Message:
    """One formatted alert, ready for every URL."""

    title: str
    body: str
    notify_type: str
    key: str


def format_alert(
    cluster: str,
    node: str,
    event: str,
    reason: str,
    *,
    details: Mapping[str, str] | None,
    now: float,
    suppressed: int = 0,
    suppressed_since: float | None = None,
) -> Message:
    """Format one alert; every message names the cluster, the node, the event and its reason."""
    title = f"mailcow-ha {cluster}: {event} on {node}"
    lines = [reason, "", f"cluster: {cluster}", f"node: {node}", f"event: {event}", f"time: {_timestamp(now)}"]
    for name, value in sorted((details or {}).items()):
        lines.append(f"{name}: {value}")
    if suppressed:
        since = f" since {_timestamp(suppressed_since)}" if suppressed_since is not None else ""
        lines.append("")
        lines.append(f"{suppressed} earlier alert(s) of this kind were suppressed{since}.")
    return Message(title, "\n".join(lines), notify_type(event), rate_key(event, details))


def format_digest(cluster: str, node: str, key: str, entry: RateEntry, *, interval: float, now: float) -> Message:
    """Format the message that reports repeats suppressed during one rate-limit interval."""
    since = _timestamp(entry.first_suppressed if entry.first_suppressed is not None else entry.last_sent)
    title = f"mailcow-ha {cluster}: {entry.event} repeated on {node}"
    subject = key.partition("|")[2]
    lines = [
        f"{entry.suppressed} more alert(s) of this kind were suppressed between {since} and {_timestamp(now)} "
        f"(at most one alert per {interval:.0f} s).",
        f"Latest reason: {entry.last_reason}",
        "",
        f"cluster: {cluster}",
        f"node: {node}",
        f"event: {entry.event}",
        f"time: {_timestamp(now)}",
    ]
    if subject:
        lines.append(f"{SUBJECT_DETAIL}: {subject}")
    return Message(title, "\n".join(lines), notify_type(entry.event), key)
