"""The health verdict: probe results and counters in, healthy or not with one reason out.

Everything here is pure. Each probe's results pass through `record_result`, which counts
consecutive failures and successes. It sets the probe's debounced `failing` flag only after
`failures_to_unhealthy` failures in a row, and clears it only after `successes_to_healthy`
successes, so one slow or flaky run never moves the master. `decide_verdict` combines the probes with the
node's role, maintenance mode, the grace period after a failover and the outcome of the last
transition. The reason it returns is stable while the situation is (no clocks or counters in
it), so the agent logs each change once.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace


class Role(enum.StrEnum):
    """The node's expected shape, from keepalived's state and the transition runner."""

    MASTER = "master"
    """keepalived is MASTER and the promote succeeded: the service must run here."""
    STANDBY = "standby"
    """keepalived is BACKUP, FAULT or STOP and no transition runs: nothing of the service may run here."""
    TRANSITION = "transition"
    """A promote or demote runs or waits: the node is changing and role checks do not count."""
    UNKNOWN = "unknown"
    """The agent has not learned keepalived's state yet."""


GALERA = "galera"
CONTAINERS = "containers"
MOUNT = "mount"
FLOATING_IP = "floating-ip"
PEERS = "peers"
"""On a standby: every other member that responds lists this node (see health.peers). Only the
production agent runs it, so it is not among PROBE_NAMES, the default of `configured`."""
PROBE_NAMES = (GALERA, CONTAINERS, MOUNT, FLOATING_IP)

_ROLE_PROBES: Mapping[Role, frozenset[str]] = {
    Role.MASTER: frozenset({GALERA, CONTAINERS, MOUNT, FLOATING_IP}),
    Role.STANDBY: frozenset({GALERA, CONTAINERS, MOUNT, PEERS}),
    Role.TRANSITION: frozenset({GALERA}),
    Role.UNKNOWN: frozenset({GALERA}),
}
_MAINTENANCE_EXEMPT = frozenset({GALERA})
"""Probes that count even in maintenance mode: quorum is the fence against split brain."""


@dataclass(frozen=True)
class ProbeResult:
    """One run of one probe."""

    name: str
    ok: bool
    detail: str
    """One-line finding. For a failure it names the failing part and stays the same while the fault does."""
    checked_at: float = 0.0
    """Wall-clock time of the run, for the status API."""
    duration: float = 0.0
    quorum_lost: bool = False
    """Galera only: the member is outside any primary component (the cluster lost quorum here)."""


@dataclass(frozen=True)
class ProbeRecord:
    """A probe's latest result with its consecutive counts and the debounced failing flag."""

    last: ProbeResult
    failures: int
    successes: int
    failing: bool


def record_result(
    previous: ProbeRecord | None,
    result: ProbeResult,
    *,
    failures_to_unhealthy: int,
    successes_to_healthy: int,
    initially_failing: bool = False,
) -> ProbeRecord:
    """Add one result to a probe's record.

    A probe turns failing after `failures_to_unhealthy` consecutive failures and passing again
    after `successes_to_healthy` consecutive successes. Without a previous record the probe
    starts as `initially_failing`, which the agent sets when keepalived's track file already
    reported the node unhealthy, so a restart does not skip the recovery count.
    """
    failing = initially_failing if previous is None else previous.failing
    failures = 0 if previous is None else previous.failures
    successes = 0 if previous is None else previous.successes
    if result.ok:
        successes, failures = successes + 1, 0
        if failing and successes >= successes_to_healthy:
            failing = False
    else:
        failures, successes = failures + 1, 0
        if not failing and failures >= failures_to_unhealthy:
            failing = True
    return ProbeRecord(result, failures, successes, failing)


def reset_record(record: ProbeRecord) -> ProbeRecord:
    """Forget a probe's counts, e.g. when the role changed and the probe now checks something else."""
    return replace(record, failures=0, successes=0, failing=False)


def probe_counts(name: str, role: Role) -> bool:
    """Return whether probe `name` takes part in the verdict for `role`."""
    return name in _ROLE_PROBES[role]


@dataclass(frozen=True)
class VerdictInputs:
    """Everything the verdict depends on, read at one moment."""

    role: Role
    records: Mapping[str, ProbeRecord]
    maintenance: str | None = None
    """Description of the active maintenance window, None when off."""
    grace: bool = False
    """A failover started recently and the containers have not passed since: container failures do not count."""
    failed_transition: str | None = None
    """The error of a promote that failed within `failed_transition_hold`, None otherwise."""
    configured: frozenset[str] = frozenset(PROBE_NAMES)
    """The probes this node runs; the verdict waits for the first run of each that counts."""


@dataclass(frozen=True)
class Verdict:
    """Whether keepalived should see this node as healthy, and why."""

    healthy: bool
    reason: str
    ignored: tuple[str, ...] = ()
    """Failing probes that did not count (maintenance mode, grace period, role)."""
    decided: bool = True
    """False until every probe of the role has run once; the agent leaves the track file alone until then."""
    recovering: bool = False
    """Unhealthy only because failing probes pass again but have not reached `successes_to_healthy`."""


def decide_verdict(inputs: VerdictInputs) -> Verdict:
    """Decide the node's health. Rules, in order:

    1. Galera failing (outside the primary component, not ready, not Synced beyond the desync
       tolerance, or its probe hangs) is unhealthy in every role and in maintenance mode.
    2. A promote that failed recently is unhealthy, so that keepalived moves the master away.
    3. In maintenance mode every other failure is ignored.
    4. The role's probes. On the master: the containers (not during the grace period), the
       mount with its marker, and the floating IPs. On a standby: no containers, no mount, and
       every other member that responds lists it (peers).
    """
    failing = {
        name: record for name, record in inputs.records.items() if record.failing and probe_counts(name, inputs.role)
    }
    outside_role = tuple(
        sorted(name for name, record in inputs.records.items() if record.failing and name not in failing)
    )

    galera = failing.pop(GALERA, None)
    if galera is not None:
        recovering = galera.last.ok and all(record.last.ok for record in failing.values())
        return Verdict(False, f"{GALERA}: {_failure(galera)}", outside_role, recovering=recovering)

    if inputs.failed_transition is not None:
        return Verdict(False, f"promote failed: {inputs.failed_transition}", outside_role)

    if inputs.maintenance is not None:
        in_maintenance = tuple(sorted({*failing, *outside_role} - _MAINTENANCE_EXEMPT))
        return Verdict(True, f"maintenance mode {inputs.maintenance}", in_maintenance)

    ignored = list(outside_role)
    in_grace = inputs.grace and failing.pop(CONTAINERS, None) is not None
    if in_grace:
        ignored.append(CONTAINERS)

    if failing:
        reasons = "; ".join(f"{name}: {_failure(failing[name])}" for name in sorted(failing))
        recovering = all(record.last.ok for record in failing.values())
        return Verdict(False, reasons, tuple(sorted(ignored)), recovering=recovering)

    expected = _ROLE_PROBES[inputs.role] & inputs.configured
    missing = [name for name in sorted(expected) if name not in inputs.records]
    if missing:
        reason = f"{inputs.role}: waiting for the first run of {', '.join(missing)}"
        return Verdict(True, reason, tuple(sorted(ignored)), decided=False)
    suffix = " except containers (grace period after a failover)" if in_grace else ""
    return Verdict(True, f"{inputs.role}: all probes pass{suffix}", tuple(sorted(ignored)))


def _failure(record: ProbeRecord) -> str:
    """Describe a failing probe: its failure, or that it passes again but has not recovered yet."""
    if record.last.ok:
        return "recovering, not enough consecutive passes yet"
    return record.last.detail
