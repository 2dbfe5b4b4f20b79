"""Render a ClusterStatus and its Assessment as a table for people or as JSON for scripts."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from mailcow_ha.agent.snapshot import NodeSnapshot
from mailcow_ha.failover.history import FailoverRecord
from mailcow_ha.ops.status import ClusterStatus, MemberStatus
from mailcow_ha.ops.statuscheck import Assessment

COLUMNS = ("NODE", "KEEPALIVED", "HEALTH", "GALERA", "CONTAINERS", "VOLUME", "FIP", "MAINTENANCE", "BREAKER")


def format_time(unix_time: float | None) -> str:
    if unix_time is None:
        return "-"
    return datetime.fromtimestamp(unix_time, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _galera_cell(snapshot: NodeSnapshot) -> str:
    galera = snapshot.galera
    if not galera.reachable:
        return "unreachable"
    size = f" {galera.cluster_size}" if galera.cluster_size is not None else ""
    if galera.cluster_status != "Primary":
        return f"{galera.cluster_status or '?'}{size}"
    return f"{galera.local_state or '?'}{size}"


def _containers_cell(snapshot: NodeSnapshot) -> str:
    if not snapshot.containers:
        return "none"
    running = [c for c in snapshot.containers if c.status == "running"]
    unhealthy = [c for c in running if c.health == "unhealthy"]
    cell = f"{len(running)}/{len(snapshot.containers)} running"
    return f"{cell}, {len(unhealthy)} unhealthy" if unhealthy else cell


def _volume_cell(snapshot: NodeSnapshot) -> str:
    if snapshot.mount is None:
        return "?"
    if not snapshot.mount.mounted:
        return "-"
    return "mounted" if snapshot.mount.marker_ok else "mounted, no marker"


def _fip_cell(snapshot: NodeSnapshot) -> str:
    if not snapshot.floating_ips_on_interface:
        return "-"
    expected = len(snapshot.floating_ips_expected) or len(snapshot.floating_ips_on_interface)
    return f"{len(snapshot.floating_ips_on_interface)}/{expected}"


def _maintenance_cell(snapshot: NodeSnapshot) -> str:
    if snapshot.maintenance.expired_unnoticed:
        return "expired"
    if not snapshot.maintenance.active:
        return "off"
    return "on" if snapshot.maintenance.expires_at is None else f"until {format_time(snapshot.maintenance.expires_at)}"


def _breaker_cell(snapshot: NodeSnapshot) -> str:
    if snapshot.breaker is None:
        return "?"
    if snapshot.breaker.tripped:
        return "TRIPPED"
    return "open" if snapshot.breaker.open else "ok"


def member_row(member: MemberStatus, master: str | None) -> list[str]:
    name = f"{member.name}*" if member.name == master else member.name
    snapshot = member.snapshot
    if snapshot is None:
        return [name, "unreachable", "?", "?", "?", "?", "?", "?", "?"]
    return [
        name,
        snapshot.vrrp_state,
        "ok" if snapshot.healthy else "FAILING",
        _galera_cell(snapshot),
        _containers_cell(snapshot),
        _volume_cell(snapshot),
        _fip_cell(snapshot),
        _maintenance_cell(snapshot),
        _breaker_cell(snapshot),
    ]


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def describe_move(record: FailoverRecord) -> str:
    """Summarise one history record in a line: when, what, which node, outcome and total duration."""
    took = f" in {record.duration:.1f} s" if record.duration is not None else ""
    because = f" ({record.reason})" if record.reason else ""
    return f"{format_time(record.started_at)} {record.kind} onto {record.node}{because}: {record.outcome}{took}"


def render_table(status: ClusterStatus, assessment: Assessment) -> str:
    """Render the human view: header, member table, health reasons, cloud holders, problems."""
    reachable = sum(1 for member in status.members if member.snapshot is not None)
    lines = [
        f"cluster {status.cluster}: {assessment.summary}, master {assessment.master or 'none'}, "
        f"{reachable}/{len(status.members)} members reachable (seen from {status.observer} "
        f"at {format_time(status.observed_at)})",
        "",
    ]
    lines += _table([list(COLUMNS)] + [member_row(member, assessment.master) for member in status.members])
    lines.append("")
    for member in status.members:
        reason = member.snapshot.reason if member.snapshot is not None else member.error
        lines.append(f"{member.name}: {reason}")

    if status.cloud is not None:
        lines.append("")
        cloud = status.cloud
        if cloud.error is not None:
            lines.append(f"cloud API: {cloud.error}")
        else:
            for fip_id, holder in sorted(cloud.floating_ips.items()):
                address = cloud.floating_ip_addresses.get(fip_id, "?")
                lines.append(f"floating IP {fip_id} ({address}) -> {holder or 'no server'}")
            lines.append(f"volume {cloud.volume_id} -> {cloud.volume_holder or 'no server'}")

    lines.append("")
    last = describe_move(status.last_move) if status.last_move is not None else "none recorded"
    lines.append(f"last failover: {last}")
    if assessment.problems:
        lines.append("")
        lines.append("problems:")
        lines += [f"  {p.severity.upper():<8} {p.subject}: {p.message}" for p in assessment.problems]
    return "\n".join(lines)


def status_to_json(status: ClusterStatus, assessment: Assessment) -> dict[str, Any]:
    """Return the whole view as JSON-compatible data: members with their snapshots, cloud, problems."""
    return {
        "cluster": status.cluster,
        "observer": status.observer,
        "observed_at": status.observed_at,
        "summary": assessment.summary,
        "degraded": assessment.degraded,
        "master": assessment.master,
        "members": [
            {
                "name": member.name,
                "index": member.member.index,
                "address": member.member.address,
                "error": member.error,
                "snapshot": member.snapshot.to_dict() if member.snapshot is not None else None,
            }
            for member in status.members
        ],
        "cloud": dataclasses.asdict(status.cloud) if status.cloud is not None else None,
        "last_failover": status.last_move.to_json() if status.last_move is not None else None,
        "problems": [
            {"severity": str(p.severity), "subject": p.subject, "message": p.message} for p in assessment.problems
        ],
    }
