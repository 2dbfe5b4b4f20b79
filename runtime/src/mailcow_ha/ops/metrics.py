"""Prometheus metrics in the text exposition format, for `status --prometheus` and node_exporter.

node_exporter's textfile collector reads `*.prom` files from one directory; `write_textfile`
replaces the file atomically (write, fsync, rename) so the collector never reads half a file.
Metrics carry a `node` label for every member the status run reached, so one node's file
describes the whole cluster as that node saw it. The alert counters are this node's own.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mailcow_ha.agent.snapshot import VRRP_STATES
from mailcow_ha.alert_ratelimit import AlertCounters
from mailcow_ha.errors import StateError
from mailcow_ha.failover.history import FailoverRecord
from mailcow_ha.ops.history import MOVE_KINDS
from mailcow_ha.ops.status import ClusterStatus
from mailcow_ha.ops.statuscheck import Assessment, Severity

PREFIX = "mailcow_ha"


@dataclass
class Metric:
    """One metric family: HELP, TYPE and its samples (labels, value)."""

    name: str
    kind: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, value))


def escape_label(value: str) -> str:
    """Escape a label value as the exposition format requires (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(metrics: Iterable[Metric]) -> str:
    """Render metric families in the Prometheus text format (version 0.0.4)."""
    lines = []
    for metric in metrics:
        name = f"{PREFIX}_{metric.name}"
        lines.append(f"# HELP {name} {metric.help}")
        lines.append(f"# TYPE {name} {metric.kind}")
        for labels, value in metric.samples:
            label_text = ",".join(f'{key}="{escape_label(text)}"' for key, text in sorted(labels.items()))
            braces = f"{{{label_text}}}" if label_text else ""
            lines.append(f"{name}{braces} {_format_value(value)}")
    return "\n".join(lines) + "\n"


def _member_metrics(status: ClusterStatus) -> list[Metric]:
    up = Metric("member_up", "gauge", "1 when the member's status API returned a snapshot.")
    state = Metric("vrrp_state", "gauge", "keepalived state of the member's VRRP instance (1 for the current one).")
    healthy = Metric("healthy", "gauge", "1 when the member's health verdict is healthy.")
    primary = Metric("galera_primary", "gauge", "1 when the member's Galera node is in the primary component.")
    synced = Metric("galera_synced", "gauge", "1 when the member's Galera node is Synced.")
    size = Metric("galera_cluster_size", "gauge", "Galera cluster size as the member sees it.")
    mounted = Metric("volume_mounted", "gauge", "1 when the shared volume is mounted on the member.")
    running = Metric("containers_running", "gauge", "mailcow containers running on the member.")
    maintenance = Metric("maintenance", "gauge", "1 while the member is in maintenance mode.")
    breaker = Metric(
        "breaker_tripped", "gauge", "1 when the member's circuit breaker refused a failover within its window."
    )
    breaker_open = Metric(
        "breaker_open", "gauge", "1 when the member's circuit breaker would refuse the next failover onto it."
    )
    for member in status.members:
        snapshot = member.snapshot
        up.add(1 if snapshot is not None else 0, node=member.name)
        if snapshot is None:
            continue
        for name in VRRP_STATES:
            state.add(1 if snapshot.vrrp_state == name else 0, node=member.name, state=name)
        healthy.add(1 if snapshot.healthy else 0, node=member.name)
        primary.add(1 if snapshot.galera.cluster_status == "Primary" else 0, node=member.name)
        synced.add(1 if snapshot.galera.local_state == "Synced" else 0, node=member.name)
        if snapshot.galera.cluster_size is not None:
            size.add(snapshot.galera.cluster_size, node=member.name)
        mounted.add(1 if snapshot.mount is not None and snapshot.mount.mounted else 0, node=member.name)
        running.add(sum(1 for c in snapshot.containers if c.status == "running"), node=member.name)
        maintenance.add(1 if snapshot.maintenance.active else 0, node=member.name)
        if snapshot.breaker is not None:
            breaker.add(1 if snapshot.breaker.tripped else 0, node=member.name)
            breaker_open.add(1 if snapshot.breaker.open else 0, node=member.name)
    return [up, state, healthy, primary, synced, size, mounted, running, maintenance, breaker, breaker_open]


def _history_metrics(records: Sequence[FailoverRecord]) -> list[Metric]:
    total = Metric("transitions_total", "counter", "Failovers, switchovers and demotes in the history, by outcome.")
    counts: dict[tuple[str, str, str], int] = {}
    for record in records:
        key = (record.node, str(record.kind), str(record.outcome))
        counts[key] = counts.get(key, 0) + 1
    for (node, kind, outcome), count in sorted(counts.items()):
        total.add(count, node=node, kind=kind, outcome=outcome)

    duration = Metric("last_failover_duration_seconds", "gauge", "Duration of the newest finished move onto a node.")
    started = Metric("last_failover_timestamp_seconds", "gauge", "Start time of the newest move onto a node.")
    finished = [r for r in records if r.kind in MOVE_KINDS and r.duration is not None]
    if finished:
        newest = max(finished, key=lambda record: record.started_at)
        assert newest.duration is not None
        duration.add(round(newest.duration, 3), node=newest.node, kind=str(newest.kind), outcome=str(newest.outcome))
        started.add(newest.started_at, node=newest.node, kind=str(newest.kind))
    return [total, duration, started]


def build_metrics(
    status: ClusterStatus,
    assessment: Assessment,
    *,
    records: Sequence[FailoverRecord],
    alert_counters: AlertCounters | None,
) -> list[Metric]:
    """Build every metric family from one status run."""
    cluster = [
        Metric("cluster_degraded", "gauge", "1 when `mailcow-ha status` finds the cluster degraded."),
        Metric("problems", "gauge", "Problems found by `mailcow-ha status`, by severity."),
        Metric("has_master", "gauge", "1 when exactly one member is MASTER."),
        Metric("status_timestamp_seconds", "gauge", "When these metrics were collected."),
    ]
    cluster[0].add(1 if assessment.degraded else 0, cluster=status.cluster)
    for severity in Severity:
        count = sum(1 for problem in assessment.problems if problem.severity is severity)
        cluster[1].add(count, cluster=status.cluster, severity=str(severity))
    cluster[2].add(1 if assessment.master is not None else 0, cluster=status.cluster)
    cluster[3].add(status.observed_at, node=status.observer)

    metrics = cluster + _member_metrics(status) + _history_metrics(records)
    if alert_counters is not None:
        alerts = Metric("alerts_total", "counter", "Alerts handled by this node, by result.")
        for result, count in alert_counters.as_dict().items():
            alerts.add(count, node=status.observer, result=result)
        metrics.append(alerts)
    return metrics


def write_textfile(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, mode 0644 so node_exporter can read it (no secrets inside)."""
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise StateError(
            f"metrics file {path} could not be written: {error.strerror}; check that {path.parent} exists"
        ) from None
