"""Garbage collection decisions: what `mailcow-ha gc` cleans, repairs or reports, and why.

`plan_gc` is a pure function of a GcInputs snapshot. The rules:
- A node in the middle of a transition (the transition lock is held, or its agent reports a
  promote or demote running) is not touched at all.
- On any node: history records left `running` by a process that died are closed as
  `interrupted`, and stale temporary and corrupt files are removed. File systems whose volume
  grew are grown online: the database volume on every node, the shared volume on the master.
- On a standby: mailcow containers that run and a mounted shared volume are removed by a demote.
- On the master: a floating IP routed elsewhere is assigned back. The shared volume attached
  elsewhere is taken back by re-running promote (which moves, mounts and starts, all checked),
  but only when no other member is MASTER or promoting, so GC never fights a failover.
- In maintenance mode nothing that affects the service is changed, only reported.
- With the role unknown (agent and keepalived unreachable) only file cleanup runs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailcow_ha.agent.snapshot import NodeSnapshot
from mailcow_ha.ops.fsgrow import GrowCandidate, needs_growth


class Role(enum.StrEnum):
    MASTER = "master"
    STANDBY = "standby"
    UNKNOWN = "unknown"


class ActionKind(enum.StrEnum):
    """Kind of GC action. REPORT_DRIFT only alerts."""

    DEMOTE_STANDBY = "demote-standby"
    ASSIGN_FLOATING_IPS = "assign-floating-ips"
    REPROMOTE = "repromote"
    CLOSE_RECORDS = "close-interrupted-records"
    REMOVE_FILE = "remove-file"
    GROW_FILESYSTEM = "grow-filesystem"
    REPORT_DRIFT = "report-drift"


@dataclass(frozen=True)
class StaleFile:
    path: Path
    reason: str


@dataclass(frozen=True)
class CloudView:
    """The cloud's holders as server ids, read on the master only."""

    server_id: int
    floating_ips: Mapping[int, int | None]
    volume_id: int
    volume_holder: int | None
    names: Mapping[int, str]
    """Server id -> node name, for messages."""

    def name(self, server_id: int | None) -> str:
        if server_id is None:
            return "no server"
        return self.names.get(server_id, f"server {server_id}")


@dataclass(frozen=True)
class GcInputs:
    """Everything GC decides from, read once at the start of a run."""

    node: str
    role: Role
    role_source: str
    """Source of the role (the agent's snapshot or keepalived's data dump), or the reason it is unknown."""
    busy: str | None
    """Reason a transition counts as running now, None when the node is idle."""
    maintenance: str | None
    volume_mounted: bool
    running_services: tuple[str, ...] | None
    """Compose services of the mailcow project that run here; None when the engine did not respond."""
    interrupted_records: int
    stale_files: tuple[StaleFile, ...] = ()
    grow: tuple[GrowCandidate, ...] = ()
    cloud: CloudView | None = None
    peers_busy: str | None = None
    """On the master: another member that is MASTER or promoting, which forbids taking the volume back."""
    state_problems: tuple[str, ...] = ()
    """Corrupt state files found while reading; shown as notes, never acted on."""


@dataclass(frozen=True)
class GcAction:
    kind: ActionKind
    subject: str
    """Target of the action: a path, a resource or the node."""
    reason: str


@dataclass(frozen=True)
class GcPlan:
    actions: tuple[GcAction, ...]
    notes: tuple[str, ...]
    """Reasons parts of GC did not run (transition, maintenance, unknown role)."""


def plan_gc(inputs: GcInputs) -> GcPlan:
    """Return what GC does on this node now, each action with its reason."""
    if inputs.busy is not None:
        return GcPlan((), (f"nothing done: {inputs.busy}", *inputs.state_problems))
    notes = list(inputs.state_problems)
    actions = [*_file_actions(inputs), *_grow_actions(inputs)]
    if inputs.role is Role.UNKNOWN:
        notes.append(f"role unknown ({inputs.role_source}); only file cleanup runs")
    elif inputs.role is Role.STANDBY:
        actions += _standby_actions(inputs, notes)
    else:
        actions += _master_actions(inputs, notes)
    return GcPlan(tuple(actions), tuple(notes))


def _file_actions(inputs: GcInputs) -> Iterator[GcAction]:
    if inputs.interrupted_records:
        yield GcAction(
            ActionKind.CLOSE_RECORDS,
            "history",
            f"{inputs.interrupted_records} record(s) still `running` while no transition runs; their process died",
        )
    for stale in inputs.stale_files:
        yield GcAction(ActionKind.REMOVE_FILE, str(stale.path), stale.reason)


def _grow_actions(inputs: GcInputs) -> Iterator[GcAction]:
    for candidate in inputs.grow:
        if candidate.label == "shared volume" and inputs.role is not Role.MASTER:
            continue
        if needs_growth(candidate):
            spare = (candidate.device_bytes - candidate.filesystem_bytes) / 2**20
            yield GcAction(
                ActionKind.GROW_FILESYSTEM,
                candidate.mount_point,
                f"{candidate.label} {candidate.device} is {spare:.0f} MiB larger than its file system "
                f"({candidate.filesystem_bytes / 2**30:.2f} GiB of {candidate.device_bytes / 2**30:.2f} GiB)",
            )


def _standby_actions(inputs: GcInputs, notes: list[str]) -> list[GcAction]:
    leftovers = []
    if inputs.running_services:
        leftovers.append(f"mailcow containers run ({', '.join(sorted(inputs.running_services))})")
    if inputs.volume_mounted:
        leftovers.append("the shared volume is mounted")
    if inputs.running_services is None:
        notes.append("the container engine did not respond; running containers unknown")
    if not leftovers:
        return []
    reason = f"{' and '.join(leftovers)} on a standby ({inputs.role_source})"
    if inputs.maintenance is not None:
        notes.append(f"not cleaned because maintenance mode is on ({inputs.maintenance}): {reason}")
        return [GcAction(ActionKind.REPORT_DRIFT, inputs.node, f"{reason}; left alone in maintenance mode")]
    return [GcAction(ActionKind.DEMOTE_STANDBY, inputs.node, reason)]


def _master_actions(inputs: GcInputs, notes: list[str]) -> list[GcAction]:
    cloud = inputs.cloud
    if cloud is None:
        notes.append("cloud holders not read; drift not checked")
        return []
    wrong_fips = sorted(fip for fip, holder in cloud.floating_ips.items() if holder != cloud.server_id)
    volume_elsewhere = cloud.volume_holder != cloud.server_id
    if not wrong_fips and not volume_elsewhere:
        return []

    drift = [f"floating IP {fip} routed to {cloud.name(cloud.floating_ips[fip])}" for fip in wrong_fips]
    if volume_elsewhere:
        drift.append(f"volume {cloud.volume_id} attached to {cloud.name(cloud.volume_holder)}")
    reason = f"{'; '.join(drift)} while {inputs.node} is MASTER"
    if inputs.maintenance is not None:
        return [GcAction(ActionKind.REPORT_DRIFT, inputs.node, f"{reason}; not repaired in maintenance mode")]
    if not volume_elsewhere:
        return [GcAction(ActionKind.ASSIGN_FLOATING_IPS, ", ".join(map(str, wrong_fips)), reason)]
    return [_volume_action(inputs, reason)]


def _volume_action(inputs: GcInputs, reason: str) -> GcAction:
    """Decide about the shared volume attached elsewhere while this node is MASTER."""
    if inputs.peers_busy is not None:
        return GcAction(ActionKind.REPORT_DRIFT, inputs.node, f"{reason}; not repaired because {inputs.peers_busy}")
    if inputs.volume_mounted:
        return GcAction(
            ActionKind.REPORT_DRIFT,
            inputs.node,
            f"{reason}, but the volume is still mounted here: the mount is stale and mail data unreachable; "
            "run `mailcow-ha demote` here so another node takes over",
        )
    return GcAction(ActionKind.REPROMOTE, inputs.node, f"{reason}; promote runs again to take it back")


@dataclass(frozen=True)
class EarlyCloud:
    """The cloud view read before the transition lock, and the role it was read for."""

    role_mark: tuple[Any, ...]
    cloud: CloudView | None
    peers_busy: str | None


def transition_running(snapshot: NodeSnapshot) -> bool:
    """Return whether the agent reports a promote or demote running."""
    return snapshot.transition is not None and bool(snapshot.transition.running)


def role_mark(snapshot: NodeSnapshot) -> tuple[Any, ...]:
    """Return what changes whenever this node's role changes or one of its transitions ends."""
    transition = snapshot.transition
    finished = None if transition is None else (transition.last_state, transition.last_finished_at)
    return (snapshot.vrrp_state, snapshot.vrrp_state_since, finished)


def role_of(vrrp_state: str) -> Role:
    """Return the GC role of a keepalived state; UNKNOWN and anything unexpected give Role.UNKNOWN."""
    if vrrp_state == "MASTER":
        return Role.MASTER
    if vrrp_state in ("BACKUP", "FAULT", "STOP"):
        return Role.STANDBY
    return Role.UNKNOWN
