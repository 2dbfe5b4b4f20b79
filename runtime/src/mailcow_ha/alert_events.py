"""What the runtime alerts about, and the interface every sender implements.

The sender behind this interface (Apprise, in mailcow_ha.adapters.alerts) must never block or
raise into a failover: it sends with a short timeout, logs and counts its own errors, and
rate-limits repeats of the same event.
"""

from __future__ import annotations

import enum
import logging
from typing import Protocol

log = logging.getLogger(__name__)


class AlertEvent(enum.StrEnum):
    """Every event the runtime alerts about. The values appear in messages and state files."""

    FAILOVER_STARTED = "failover-started"
    FAILOVER_SUCCEEDED = "failover-succeeded"
    FAILOVER_FAILED = "failover-failed"
    DEMOTE_FAILED = "demote-failed"
    BREAKER_TRIPPED = "breaker-tripped"
    QUORUM_LOST = "quorum-lost"
    HEALTH_CHANGED = "health-changed"
    MAINTENANCE_EXPIRED = "maintenance-expired"
    GC_REPAIRED = "gc-repaired"
    DRIFT = "drift"
    STATE_CORRUPT = "state-corrupt"


class Alerter(Protocol):
    """Sends one alert. Implementations add the cluster and node names to every message."""

    def send(self, event: AlertEvent, reason: str, details: dict[str, str] | None = None) -> None:
        """Queue or send the alert and return at once; never raise."""


class NoAlerter:
    """An Alerter for read-only commands, which must not touch the alert state file.

    Unlike the Apprise sender, it reads and writes nothing. A read-only command that still sends
    an alert has a bug, so the call logs a warning and sends nothing.
    """

    def send(self, event: AlertEvent, reason: str, details: dict[str, str] | None = None) -> None:
        log.warning("alert %s not sent by a read-only command: %s", event, reason)
