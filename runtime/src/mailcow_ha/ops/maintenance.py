"""Maintenance mode: while it is on, no container, mount or floating IP failure fails the node over.

The mode lives in the state directory (`state.MAINTENANCE_FILE`) so that it survives agent
restarts and reboots, and every command and the agent read the same file. It is per node:
switch it on where the work happens (normally the master, for a mailcow update). It expires by
itself: `expires_at` is a wall-clock time, and an expired mode counts as off. The agent alerts
once when a mode expired while it was still switched on, and records that it did, so restarts
do not repeat the alert.

Maintenance never hides a node outside Galera's primary component: quorum is the cluster's fence
against split brain and stays in force.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailcow_ha import state
from mailcow_ha.agent.statusapi import ActionInputError
from mailcow_ha.alert_events import Alerter, AlertEvent
from mailcow_ha.errors import ExitCode, MailcowHaError

log = logging.getLogger(__name__)

ACTION = "maintenance"
"""Name of the status API action that switches maintenance mode on another node."""
MAX_DURATION = 7 * 86400.0
"""The maximum maintenance window `--for` accepts: a week."""
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class MaintenanceInputError(MailcowHaError):
    """A maintenance duration or reason is invalid."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class Maintenance:
    """A maintenance window as stored in the state directory; times are Unix seconds."""

    since: float
    expires_at: float | None
    """None: until switched off."""
    reason: str = ""
    expiry_alerted: bool = False
    """The agent already alerted that this window expired while still on."""

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def expired(self, now: float) -> bool:
        return not self.active(now)

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "expires_at": self.expires_at,
            "reason": self.reason,
            "expiry_alerted": self.expiry_alerted,
        }


def parse_duration(text: str) -> float:
    """Parse a duration such as `90s`, `30m`, `2h`, `1h30m` or `1d` into seconds (a bare number is seconds)."""
    value = text.strip().lower()
    if not value:
        raise MaintenanceInputError("duration is empty; use a value such as 30m, 2h or 1h30m")
    try:
        seconds = float(value)
    except ValueError:
        position = 0
        seconds = 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != position:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            position = match.end()
        if position != len(value):
            raise MaintenanceInputError(
                f"duration {text!r} is invalid; use a number with s, m, h or d, such as 30m, 2h or 1h30m"
            ) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise MaintenanceInputError(f"duration {text!r} must be more than zero seconds")
    if seconds > MAX_DURATION:
        raise MaintenanceInputError(f"duration {text!r} is longer than the maximum of 7 days; switch it on again later")
    return seconds


def _valid_document(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    since = value.get("since")
    expires_at = value.get("expires_at")
    return (
        isinstance(since, int | float)
        and (expires_at is None or isinstance(expires_at, int | float))
        and isinstance(value.get("reason", ""), str)
        and isinstance(value.get("expiry_alerted", False), bool)
    )


def maintenance_path(state_dir: Path) -> Path:
    return state_dir / state.MAINTENANCE_FILE


def read_maintenance(state_dir: Path, *, move_corrupt: bool = True) -> tuple[Maintenance | None, str | None]:
    """Return the stored window (None when off) and a problem message when the file was corrupt.

    A corrupt file counts as off: refusing every failover because of a damaged file would be
    worse than a missed maintenance window, and the caller alerts with the problem. It is moved
    aside by `state.read_json` unless `move_corrupt` is false (read-only commands).
    """
    result = state.read_json(maintenance_path(state_dir), None, validate=_valid_document, move_corrupt=move_corrupt)
    if result.value is None:
        return None, result.problem
    document = result.value
    maintenance = Maintenance(
        since=float(document["since"]),
        expires_at=None if document.get("expires_at") is None else float(document["expires_at"]),
        reason=str(document.get("reason", "")),
        expiry_alerted=bool(document.get("expiry_alerted", False)),
    )
    return maintenance, result.problem


def switch_on(state_dir: Path, *, duration: float | None, reason: str = "", now: float | None = None) -> Maintenance:
    """Store a maintenance window starting now, for `duration` seconds or (None) until switched off."""
    if any(ord(character) < 32 for character in reason) or len(reason) > 200:
        raise MaintenanceInputError("reason must be one line of at most 200 characters")
    started = time.time() if now is None else now
    maintenance = Maintenance(since=started, expires_at=None if duration is None else started + duration, reason=reason)
    state.write_json(maintenance_path(state_dir), maintenance.to_json())
    log.info("maintenance mode switched %s", describe(maintenance, started))
    return maintenance


def switch_off(state_dir: Path) -> bool:
    """Remove the maintenance window; return whether one was stored."""
    removed = state.remove(maintenance_path(state_dir))
    if removed:
        log.info("maintenance mode off")
    return removed


def mark_expiry_alerted(state_dir: Path, maintenance: Maintenance) -> Maintenance:
    """Record that the expiry alert was sent, unless the window was replaced meanwhile."""
    current, _ = read_maintenance(state_dir)
    if current is None or current.since != maintenance.since:
        return maintenance
    updated = Maintenance(maintenance.since, maintenance.expires_at, maintenance.reason, expiry_alerted=True)
    state.write_json(maintenance_path(state_dir), updated.to_json())
    return updated


def describe(maintenance: Maintenance | None, now: float) -> str:
    """Describe the window for logs and `maintenance status`, e.g. `on until 14:30:00 UTC (25 min left)`."""
    if maintenance is None:
        return "off"
    reason = f", reason: {maintenance.reason}" if maintenance.reason else ""
    if maintenance.expires_at is None:
        return f"on since {_clock(maintenance.since)} until switched off{reason}"
    if maintenance.active(now):
        left = _span(maintenance.expires_at - now)
        return f"on until {_clock(maintenance.expires_at)} ({left} left){reason}"
    return f"off: expired at {_clock(maintenance.expires_at)} while still switched on{reason}"


def action_handler(state_dir: Path, node: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """Return the status API handler that switches this node's maintenance mode.

    Parameters: `on` (true or false), `seconds` (the window's length, or null for until switched
    off) and `reason`. Invalid parameters raise ActionInputError, for which the API returns 400.
    """

    def handle(params: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return switch(params)
        except MaintenanceInputError as error:
            raise ActionInputError(str(error)) from None

    def switch(params: Mapping[str, Any]) -> dict[str, Any]:
        on = params.get("on")
        if not isinstance(on, bool):
            raise MaintenanceInputError("parameter 'on' must be true or false")
        if not on:
            removed = switch_off(state_dir)
            return {"node": node, "maintenance": "off", "changed": removed}
        seconds = params.get("seconds")
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= MAX_DURATION
        ):
            raise MaintenanceInputError(f"parameter 'seconds' must be null or a number in (0, {MAX_DURATION:g}]")
        reason = params.get("reason", "")
        if not isinstance(reason, str):
            raise MaintenanceInputError("parameter 'reason' must be a string")
        window = switch_on(state_dir, duration=None if seconds is None else float(seconds), reason=reason)
        return {"node": node, "maintenance": describe(window, time.time()), "changed": True}

    return handle


class MaintenanceWatch:
    """The agent's view of maintenance mode: re-reads the file only when it changed, alerts on problems.

    It alerts once when the stored window expired while still switched on (and records that in
    the file), and when the file was corrupt (it is then moved aside and counts as off).
    """

    def __init__(self, state_dir: Path, alerter: Alerter) -> None:
        self.state_dir = state_dir
        self.alerter = alerter
        self._signature: tuple[int, int] | None = None
        self._cached: Maintenance | None = None

    def current(self, now: float) -> Maintenance | None:
        """Return the stored window (active or expired), None when off or unreadable."""
        try:
            window, problem = self._read()
        except MailcowHaError as error:
            log.error("maintenance mode unreadable, treated as off: %s", error)
            return None
        if problem is not None:
            self.alerter.send(AlertEvent.STATE_CORRUPT, problem)
        if window is not None and window.expired(now) and not window.expiry_alerted:
            reason = f"maintenance mode {describe(window, now)}; failovers are enabled again"
            log.warning("%s", reason)
            self.alerter.send(AlertEvent.MAINTENANCE_EXPIRED, reason)
            try:
                window = mark_expiry_alerted(self.state_dir, window)
            except MailcowHaError as error:
                log.error("could not record the maintenance expiry alert: %s", error)
        return window

    def _read(self) -> tuple[Maintenance | None, str | None]:
        try:
            info = maintenance_path(self.state_dir).stat()
            signature: tuple[int, int] | None = (info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            signature = None
        except OSError:
            signature = (-1, -1)
        if signature is not None and signature == self._signature:
            return self._cached, None
        window, problem = read_maintenance(self.state_dir)
        self._signature = signature
        self._cached = window
        return window, problem


def _clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def _span(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
