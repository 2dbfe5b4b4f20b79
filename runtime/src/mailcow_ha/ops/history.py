"""The cluster's failover history for `mailcow-ha history` and `status`: every member's records, merged.

Each node keeps the records of its own transitions (failover.history). This module reads them
from every member's status API in parallel and falls back to this node's own file when its
agent does not respond, so the history is available even with the agent down. Records are
merged by id and sorted by start time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mailcow_ha.agent.statusclient import HistoryLost, StatusClient
from mailcow_ha.errors import MailcowHaError
from mailcow_ha.failover.history import FailoverRecord, HistoryStore, RecordKind, RecordOutcome
from mailcow_ha.ops.status import Member
from mailcow_ha.ops.statusview import format_time

log = logging.getLogger(__name__)

MOVE_KINDS = frozenset({RecordKind.FAILOVER, RecordKind.SWITCHOVER, RecordKind.MANUAL_PROMOTE})
"""Record kinds that moved the service onto a node; `status` shows the newest as the last failover."""


@dataclass(frozen=True)
class ClusterHistory:
    """The merged records, oldest first, and the members whose records could not be read."""

    records: tuple[FailoverRecord, ...]
    unavailable: dict[str, str] = field(default_factory=dict)
    """Member name -> why its history is missing."""
    corrupt: frozenset[str] = frozenset()
    """Members among `unavailable` whose history file is corrupt (not merely unreachable)."""


def merge_records(batches: Sequence[Sequence[FailoverRecord]]) -> tuple[FailoverRecord, ...]:
    """Merge record lists by id (a later batch wins for the same id) and sort by start time."""
    by_id: dict[str, FailoverRecord] = {}
    for batch in batches:
        for record in batch:
            by_id[f"{record.node}/{record.id}"] = record
    return tuple(sorted(by_id.values(), key=lambda record: (record.started_at, record.node)))


def last_move(records: Sequence[FailoverRecord]) -> FailoverRecord | None:
    """Return the newest record that moved (or tried to move) the service onto a node."""
    moves = [record for record in records if record.kind in MOVE_KINDS and record.outcome is not RecordOutcome.REFUSED]
    return max(moves, key=lambda record: record.started_at, default=None)


def collect_history(
    client: StatusClient, members: Sequence[Member], *, local_node: str, local_store: HistoryStore
) -> ClusterHistory:
    """Read every member's history, using this node's own file when its agent does not respond.

    This is a read-only view: a corrupt local file is reported and left in place.
    """

    def fetch(member: Member) -> tuple[str, list[FailoverRecord] | None, str | None, bool]:
        try:
            return member.name, client.history(member.address, node=member.name), None, False
        except HistoryLost as error:
            return member.name, None, str(error), True
        except MailcowHaError as error:
            return member.name, None, str(error), False

    batches: list[list[FailoverRecord]] = []
    unavailable: dict[str, str] = {}
    corrupt: set[str] = set()
    with ThreadPoolExecutor(max_workers=max(1, min(len(members), 9)), thread_name_prefix="history") as pool:
        results = list(pool.map(fetch, members))
    for name, records, error, lost in results:
        if records is not None:
            batches.append(records)
            continue
        if lost:
            corrupt.add(name)
        # The agent that reported its history corrupt read the same file this node would read.
        if name == local_node and not lost:
            try:
                read = local_store.read(move_corrupt=False)
            except MailcowHaError as local_error:
                unavailable[name] = f"{error}; local file: {local_error}"
                continue
            batches.append(read.records)
            if read.problem:
                unavailable[name] = read.problem
                corrupt.add(name)
            log.info("history of %s read from %s because its agent did not respond", name, local_store.path)
            continue
        unavailable[name] = error or "unknown error"
    return ClusterHistory(merge_records(batches), unavailable, frozenset(corrupt))


def _duration(record: FailoverRecord) -> str:
    return "-" if record.duration is None else f"{record.duration:.1f} s"


def _steps(record: FailoverRecord) -> str:
    parts = []
    for step in record.steps:
        mark = "" if step.outcome == "ok" else f" {step.outcome}"
        parts.append(f"{step.name} {step.seconds:.1f}s{mark}")
    return ", ".join(parts) or "-"


def render_history(history: ClusterHistory, *, limit: int) -> str:
    """Render the newest `limit` records, oldest of them first, one block per record."""
    shown = history.records[-limit:] if limit > 0 else history.records
    lines = []
    if not shown:
        lines.append("no failovers or switchovers recorded")
    for record in shown:
        lines.append(
            f"{format_time(record.started_at)}  {record.node:<12} {record.kind:<15} {record.outcome:<12} "
            f"{_duration(record):>8}  {record.reason}"
        )
        lines.append(f"    steps: {_steps(record)}")
        if record.failed_step or record.error:
            lines.append(f"    failed at {record.failed_step or '?'}: {record.error or 'no error recorded'}")
    if len(history.records) > len(shown):
        lines.append(f"({len(history.records) - len(shown)} older record(s) not shown; use --limit 0 for all)")
    for name, reason in sorted(history.unavailable.items()):
        lines.append(f"history of {name} incomplete: {reason}")
    return "\n".join(lines)


def history_to_json(history: ClusterHistory, *, limit: int) -> dict[str, Any]:
    shown = history.records[-limit:] if limit > 0 else history.records
    return {
        "records": [{**record.to_json(), "duration": record.duration} for record in shown],
        "unavailable": history.unavailable,
    }
