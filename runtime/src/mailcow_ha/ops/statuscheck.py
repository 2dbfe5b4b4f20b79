"""Decide what is wrong with the cluster from a ClusterStatus, as a list of problems with reasons.

Every rule is a small pure function of the gathered state. A CRITICAL problem means mail is at
risk now (no master, two masters, the floating IP or the volume on the wrong node). DEGRADED
means the cluster serves mail but could not fail over as designed (a member down, a tripped
breaker, Galera short of members). NOTICE is shown but does not make `status` exit non-zero
(maintenance mode, a transition running).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from mailcow_ha.agent.snapshot import NodeSnapshot
from mailcow_ha.ops.status import ClusterStatus, MemberStatus


class Severity(enum.StrEnum):
    """Severity of a problem. Members are listed from the worst to the mildest."""

    CRITICAL = "critical"
    DEGRADED = "degraded"
    NOTICE = "notice"


@dataclass(frozen=True)
class Problem:
    severity: Severity
    subject: str
    """The node or resource the problem is about (e.g. `node-b`, `floating IP 201`)."""
    message: str


@dataclass(frozen=True)
class Assessment:
    """The verdict on the whole cluster."""

    master: str | None
    """The single MASTER, or None when there is none or more than one."""
    problems: tuple[Problem, ...]

    @property
    def degraded(self) -> bool:
        return any(problem.severity is not Severity.NOTICE for problem in self.problems)

    @property
    def summary(self) -> str:
        if not self.problems:
            return "healthy"
        worst = min(self.problems, key=lambda problem: list(Severity).index(problem.severity))
        return str(worst.severity)


def assess(status: ClusterStatus) -> Assessment:
    """Return the cluster's master and every problem found, worst first."""
    masters = [m.name for m in status.members if m.snapshot is not None and m.snapshot.vrrp_state == "MASTER"]
    master = masters[0] if len(masters) == 1 else None
    problems = [
        *_member_problems(status.members),
        *_master_problems(status.members, masters),
        *_takeover_problems(status.members, master),
        *_galera_problems(status.members),
        *_cloud_problems(status, master),
        *_state_file_problems(status),
    ]
    order = list(Severity)
    problems.sort(key=lambda problem: order.index(problem.severity))
    return Assessment(master, tuple(problems))


def _member_problems(members: Sequence[MemberStatus]) -> Iterator[Problem]:
    for member in members:
        snapshot = member.snapshot
        if snapshot is None:
            yield Problem(Severity.DEGRADED, member.name, f"status unavailable: {member.error}")
            continue
        if snapshot.vrrp_state in ("FAULT", "STOP", "UNKNOWN"):
            yield Problem(Severity.DEGRADED, member.name, f"keepalived state {snapshot.vrrp_state}: {snapshot.reason}")
        elif not snapshot.healthy:
            yield Problem(Severity.DEGRADED, member.name, f"unhealthy: {snapshot.reason}")
        if snapshot.vrrp_state != "MASTER":
            yield from _standby_problems(member.name, snapshot)
        yield from _node_state_problems(member.name, snapshot)


def _state_file_problems(status: ClusterStatus) -> Iterator[Problem]:
    # A corrupt state file loses what it contained, so the breaker counts no history and the
    # membership falls back to the config's peers. The cluster serves mail, but an operator must look.
    for node, message in status.state_problems:
        yield Problem(Severity.DEGRADED, node, message)


def _standby_problems(name: str, snapshot: NodeSnapshot) -> Iterator[Problem]:
    if snapshot.mount is not None and snapshot.mount.mounted:
        yield Problem(
            Severity.CRITICAL,
            name,
            f"the shared volume is mounted at {snapshot.mount.mount_point} on a {snapshot.vrrp_state} node; "
            "run `mailcow-ha gc` there",
        )
    running = [c.service for c in snapshot.containers if c.status in ("running", "restarting")]
    if running:
        yield Problem(
            Severity.CRITICAL,
            name,
            f"mailcow containers run on a {snapshot.vrrp_state} node ({', '.join(sorted(running))}); "
            "run `mailcow-ha gc` there",
        )


def _utc(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _node_state_problems(name: str, snapshot: NodeSnapshot) -> Iterator[Problem]:
    maintenance = snapshot.maintenance
    if maintenance.expired_unnoticed:
        yield Problem(Severity.DEGRADED, name, "maintenance mode expired while on; run `mailcow-ha maintenance off`")
    elif maintenance.active:
        until = "until switched off" if maintenance.expires_at is None else f"until {_utc(maintenance.expires_at)}"
        yield Problem(Severity.NOTICE, name, f"maintenance mode on ({until}): no automatic failover")
    breaker = snapshot.breaker
    if breaker is not None and breaker.tripped:
        detail = breaker.detail or "failover loop stopped"
        advice = "" if "breaker reset" in detail else "; `mailcow-ha breaker reset` on it once the cause is fixed"
        yield Problem(
            Severity.DEGRADED,
            name,
            f"circuit breaker tripped: it refused a failover onto this node ({detail}); "
            f"this node will not take over{advice}",
        )
    elif breaker is not None and breaker.open and snapshot.vrrp_state != "MASTER":
        until = "" if breaker.closes_at is None else f" until {_utc(breaker.closes_at)}"
        yield Problem(
            Severity.NOTICE,
            name,
            f"will not take over automatically{until}: {breaker.failovers_in_window} failover(s) onto it in the "
            "breaker's window; `mailcow-ha breaker reset` on it allows it now",
        )
    transition = snapshot.transition
    if transition is not None and transition.running:
        yield Problem(Severity.NOTICE, name, f"transition to {transition.running} in progress")
    elif transition is not None and transition.last_outcome == "failed":
        yield Problem(
            Severity.DEGRADED, name, f"last transition to {transition.last_state} failed: {transition.last_error}"
        )


def _master_problems(members: Sequence[MemberStatus], masters: Sequence[str]) -> Iterator[Problem]:
    reachable = [m for m in members if m.snapshot is not None]
    if len(masters) > 1:
        yield Problem(Severity.CRITICAL, "cluster", f"more than one MASTER: {', '.join(masters)}")
        return
    if not masters:
        where = "among the reachable members" if len(reachable) < len(members) else "in the cluster"
        yield Problem(Severity.CRITICAL, "cluster", f"no MASTER {where}; mail is not being served")
        return
    master = next(m for m in reachable if m.name == masters[0])
    snapshot = master.snapshot
    assert snapshot is not None
    if snapshot.mount is not None and not (snapshot.mount.mounted and snapshot.mount.marker_ok):
        detail = snapshot.mount.detail or "not mounted or marker file missing"
        yield Problem(Severity.CRITICAL, master.name, f"MASTER without the shared volume: {detail}")
    missing = sorted(set(snapshot.floating_ips_expected) - set(snapshot.floating_ips_on_interface))
    if missing:
        yield Problem(
            Severity.CRITICAL, master.name, f"MASTER lacks floating IP(s) {', '.join(missing)} on its public interface"
        )


def _takeover_problems(members: Sequence[MemberStatus], master: str | None) -> Iterator[Problem]:
    """With a master, at least one standby must be able to take over automatically."""
    if master is None:
        return
    standbys = [m for m in members if m.name != master]
    ready = [
        m
        for m in standbys
        if m.snapshot is not None
        and m.snapshot.vrrp_state == "BACKUP"
        and m.snapshot.healthy
        and not (m.snapshot.breaker is not None and (m.snapshot.breaker.open or m.snapshot.breaker.tripped))
    ]
    if standbys and not ready:
        yield Problem(
            Severity.DEGRADED,
            "cluster",
            f"no standby can take over automatically if {master} fails (each is unreachable, unhealthy, "
            "not BACKUP or held by its circuit breaker); see the problems of each node",
        )


def _galera_problems(members: Sequence[MemberStatus]) -> Iterator[Problem]:
    sizes = []
    for member in members:
        snapshot = member.snapshot
        if snapshot is None:
            continue
        galera = snapshot.galera
        if not galera.reachable:
            yield Problem(Severity.DEGRADED, member.name, f"Galera unreachable: {galera.error or 'no response'}")
            continue
        if galera.cluster_status != "Primary":
            state = galera.cluster_status or "state unknown"
            yield Problem(Severity.DEGRADED, member.name, f"Galera {state}: outside the primary component")
            continue
        if galera.local_state != "Synced":
            yield Problem(Severity.DEGRADED, member.name, f"Galera {galera.local_state}")
        if galera.cluster_size is not None:
            sizes.append(galera.cluster_size)
    if sizes and max(sizes) < len(members):
        yield Problem(
            Severity.DEGRADED,
            "Galera",
            f"primary component has {max(sizes)} of {len(members)} members; one more loss may stop the database",
        )


def _cloud_problems(status: ClusterStatus, master: str | None) -> Iterator[Problem]:
    cloud = status.cloud
    if cloud is None:
        return
    if cloud.error is not None:
        yield Problem(Severity.DEGRADED, "cloud API", f"holders could not be read: {cloud.error}")
        return
    for fip_id, holder in sorted(cloud.floating_ips.items()):
        subject = f"floating IP {fip_id} ({cloud.floating_ip_addresses.get(fip_id, '?')})"
        if holder is None:
            yield Problem(Severity.CRITICAL, subject, "assigned to no server; clients cannot reach mail")
        elif master is not None and holder != master:
            yield Problem(Severity.CRITICAL, subject, f"routed to {holder}, but the MASTER is {master}")
    subject = f"volume {cloud.volume_id}"
    if cloud.volume_holder is None:
        if master is not None:
            yield Problem(Severity.CRITICAL, subject, f"attached to no server, but the MASTER is {master}")
    elif master is not None and cloud.volume_holder != master:
        yield Problem(Severity.CRITICAL, subject, f"attached to {cloud.volume_holder}, but the MASTER is {master}")
