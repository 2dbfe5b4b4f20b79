"""Decisions, with reasons, on which Galera member may start a new primary component.

Bootstrapping a member that is behind another one discards the other's newer transactions, and
bootstrapping while another member still runs a primary component splits the cluster in two. So
after a total outage only the member with the highest sequence number bootstraps, and only once
every member has reported its position. `--force NODE` overrides the missing reports of
unreachable members and lets members without any Galera data (replaced servers) join, but it
never overrides the order of the reported ones. At first boot, node 1 of a brand-new cluster
bootstraps and every other node joins.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from mailcow_ha.mailcow.positions import ZERO_UUID, MemberPosition, MemberState


@dataclass(frozen=True)
class MemberReport:
    """A member's reported position, or why it could not be read."""

    node: str
    index: int
    position: MemberPosition | None
    error: str | None = None

    def describe(self) -> str:
        if self.position is None:
            return f"{self.node}: unreachable ({self.error})"
        return self.position.describe()


class BootstrapAction(enum.StrEnum):
    BOOTSTRAP = "bootstrap"
    """Start `node` as a new primary component, then have `joiners` join it."""
    JOIN_RUNNING = "join-running"
    """A primary component already runs; only start `joiners`."""
    REJECT = "reject"


@dataclass(frozen=True)
class BootstrapPlan:
    action: BootstrapAction
    reason: str
    node: str | None = None
    joiners: tuple[str, ...] = ()


def positions_table(reports: Sequence[MemberReport]) -> str:
    """Return one line per member, in node index order, for messages."""
    return "\n".join(f"  {report.describe()}" for report in sorted(reports, key=lambda report: report.index))


def plan_bootstrap(reports: Sequence[MemberReport], *, force: str | None = None) -> BootstrapPlan:  # noqa: PLR0911
    """Decide which member bootstraps after a total outage; see the module doc for the rules."""
    table = positions_table(reports)
    names = {report.node for report in reports}
    if force is not None and force not in names:
        return BootstrapPlan(BootstrapAction.REJECT, f"--force names {force}, which is not a member:\n{table}")

    reachable = [report for report in reports if report.position is not None]
    positions = [report.position for report in reachable if report.position is not None]
    stopped = tuple(position.node for position in positions if position.state is MemberState.STOPPED)
    primary = [position for position in positions if position.state is MemberState.PRIMARY]
    if primary:
        return BootstrapPlan(
            BootstrapAction.JOIN_RUNNING,
            f"{primary[0].node} already runs a primary component, so nothing is bootstrapped; "
            f"stopped members join it:\n{table}",
            joiners=stopped,
        )

    unreachable = [report.node for report in reports if report.position is None]
    if unreachable and force is None:
        return BootstrapPlan(
            BootstrapAction.REJECT,
            f"{', '.join(unreachable)} did not report a position, and an unreachable member may hold newer "
            f"transactions; bring it back, or once you know it is down and not ahead, rerun with --force "
            f"naming the member to bootstrap:\n{table}",
        )
    if force is not None and force in unreachable:
        return BootstrapPlan(BootstrapAction.REJECT, f"--force names {force}, which is unreachable:\n{table}")

    empty = [position.node for position in positions if position.brand_new]
    if empty and force is None:
        return BootstrapPlan(
            BootstrapAction.REJECT,
            f"{', '.join(empty)} reported no Galera data at all: a new or replaced member, or one whose database "
            "volume is not mounted (its transactions would then be unknown). If its data directory is meant to "
            "be empty, rerun with --force naming the member to bootstrap; the empty members then join it:\n"
            f"{table}",
        )
    positions = [position for position in positions if not position.brand_new]
    unknown = [position.node for position in positions if not position.known]
    if unknown:
        return BootstrapPlan(
            BootstrapAction.REJECT,
            f"the position of {', '.join(unknown)} is unknown (seqno -1), so the most advanced member cannot "
            f"be chosen; check its error log and run `mariadbd --wsrep-recover` there:\n{table}",
        )
    histories = {position.uuid for position in positions if position.uuid != ZERO_UUID}
    if len(histories) > 1:
        return BootstrapPlan(
            BootstrapAction.REJECT,
            f"the members belong to different cluster histories ({', '.join(sorted(histories))}); "
            f"decide by hand which history to keep:\n{table}",
        )
    if not positions:
        return BootstrapPlan(
            BootstrapAction.REJECT,
            f"no member reported a position with data; a brand-new cluster forms with "
            f"`mailcow-ha galera first-boot`:\n{table}",
        )
    if force is not None and force in empty:
        return BootstrapPlan(
            BootstrapAction.REJECT, f"--force names {force}, which has no Galera data to bootstrap from:\n{table}"
        )

    index_of = {report.node: report.index for report in reports}
    best = max(positions, key=lambda position: (position.seqno, position.safe_to_bootstrap, -index_of[position.node]))
    chosen = best
    if force is not None:
        forced = next(position for position in positions if position.node == force)
        if forced.seqno < best.seqno:
            return BootstrapPlan(
                BootstrapAction.REJECT,
                f"--force names {force} at seqno {forced.seqno}, but {best.node} is at seqno {best.seqno}; "
                f"bootstrapping an older member would discard newer transactions:\n{table}",
            )
        chosen = forced

    joiners = tuple(name for name in stopped if name != chosen.node)
    assumed = f"; {', '.join(unreachable)} assumed not ahead because of --force" if unreachable else ""
    if empty:
        assumed += f"; {', '.join(empty)} without data join as new members because of --force"
    return BootstrapPlan(
        BootstrapAction.BOOTSTRAP,
        f"{chosen.node} has the highest seqno {chosen.seqno}{assumed}:\n{table}",
        node=chosen.node,
        joiners=joiners,
    )


class FirstBootAction(enum.StrEnum):
    BOOTSTRAP = "bootstrap"
    JOIN = "join"
    WAIT = "wait"
    """Ask the peers again later: one is unreachable, or no primary component runs yet."""
    REJECT = "reject"


@dataclass(frozen=True)
class FirstBootDecision:
    action: FirstBootAction
    reason: str


def plan_first_boot(  # noqa: PLR0911
    local: MemberPosition, local_index: int, peers: Sequence[MemberReport]
) -> FirstBootDecision:
    """Decide what this member does when its node boots for the first time.

    Node 1 bootstraps only when it and every peer are brand new and none runs. Any other node
    waits for a primary component and joins it. A member with history never bootstraps here.
    """
    table = positions_table(peers)
    running_primary = [
        report.node for report in peers if report.position is not None and report.position.state is MemberState.PRIMARY
    ]
    if local.state is MemberState.PRIMARY:
        return FirstBootDecision(FirstBootAction.JOIN, "this member already runs in a primary component")
    if running_primary:
        return FirstBootDecision(
            FirstBootAction.JOIN, f"{running_primary[0]} runs a primary component; this member joins it"
        )
    if not local.brand_new:
        return FirstBootDecision(
            FirstBootAction.REJECT,
            f"this member has history ({local.describe()}) and no peer runs a primary component; "
            f"after a total outage use `mailcow-ha galera bootstrap`:\n{table}",
        )
    if local_index != 1:
        return FirstBootDecision(FirstBootAction.WAIT, "waiting for node 1 to bootstrap the new cluster")

    unreachable = [report.node for report in peers if report.position is None]
    if unreachable:
        return FirstBootDecision(
            FirstBootAction.WAIT, f"waiting for {', '.join(unreachable)} to report, so as not to split a cluster"
        )
    running = [
        report.node
        for report in peers
        if report.position is not None and report.position.state is MemberState.NON_PRIMARY
    ]
    if running:
        return FirstBootDecision(
            FirstBootAction.WAIT, f"{', '.join(running)} run without a primary component; waiting for them to stop"
        )
    with_history = [report.node for report in peers if report.position is not None and not report.position.brand_new]
    if with_history:
        return FirstBootDecision(
            FirstBootAction.REJECT,
            f"{', '.join(with_history)} already have history, so this is not a new cluster; "
            f"use `mailcow-ha galera bootstrap`:\n{table}",
        )
    return FirstBootDecision(FirstBootAction.BOOTSTRAP, "every member is brand new and node 1 forms the cluster")
