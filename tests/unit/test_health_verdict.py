"""The verdict: consecutive-failure counting and the rules that combine probes, role and modes."""

from __future__ import annotations

import pytest

from mailcow_ha.health.verdict import (
    CONTAINERS,
    FLOATING_IP,
    GALERA,
    MOUNT,
    ProbeRecord,
    ProbeResult,
    Role,
    VerdictInputs,
    decide_verdict,
    record_result,
)


def run(results: list[bool], *, initially_failing: bool = False) -> list[bool]:
    """Feed results into one probe's record and return the failing flag after each."""
    record: ProbeRecord | None = None
    flags = []
    for ok in results:
        record = record_result(
            record,
            ProbeResult(GALERA, ok, "x"),
            failures_to_unhealthy=3,
            successes_to_healthy=2,
            initially_failing=initially_failing,
        )
        flags.append(record.failing)
    return flags


def test_record_needs_consecutive_failures() -> None:
    assert run([False, False, True, False, False]) == [False, False, False, False, False]
    assert run([False, False, False]) == [False, False, True]


def test_record_needs_consecutive_successes() -> None:
    assert run([False, False, False, True, False, True, True]) == [False, False, True, True, True, True, False]


def test_record_initially_failing() -> None:
    assert run([True, True], initially_failing=True) == [True, False]


def records(**states: bool) -> dict[str, ProbeRecord]:
    """Records whose debounced flag is `not ok`, keyed by probe name (underscores for dashes)."""
    built = {}
    for key, ok in states.items():
        name = key.replace("_", "-")
        result = ProbeResult(name, ok, f"{name} {'fine' if ok else 'broken'}")
        built[name] = ProbeRecord(result, 0 if ok else 3, 3 if ok else 0, failing=not ok)
    return built


ALL_PASS = {"galera": True, "containers": True, "mount": True, "floating_ip": True}


@pytest.mark.parametrize(
    ("role", "states", "healthy", "reason"),
    [
        (Role.MASTER, ALL_PASS, True, "master: all probes pass"),
        (Role.MASTER, {**ALL_PASS, "containers": False}, False, "containers: containers broken"),
        (
            Role.MASTER,
            {**ALL_PASS, "mount": False, "floating_ip": False},
            False,
            "floating-ip: floating-ip broken; mount: mount broken",
        ),
        (Role.MASTER, {**ALL_PASS, "galera": False, "mount": False}, False, "galera: galera broken"),
        (Role.STANDBY, {**ALL_PASS, "floating_ip": False}, True, "standby: all probes pass"),
        (Role.STANDBY, {"galera": True, "containers": False, "mount": True}, False, "containers: containers broken"),
        (Role.TRANSITION, {**ALL_PASS, "containers": False, "mount": False}, True, "transition: all probes pass"),
        (Role.TRANSITION, {"galera": False}, False, "galera: galera broken"),
        (Role.UNKNOWN, {"galera": True}, True, "unknown: all probes pass"),
    ],
)
def test_verdict_rules(role: Role, states: dict[str, bool], healthy: bool, reason: str) -> None:
    verdict = decide_verdict(VerdictInputs(role=role, records=records(**states)))

    assert verdict.healthy is healthy
    assert verdict.reason == reason
    assert verdict.decided


def test_verdict_lists_ignored_probes() -> None:
    verdict = decide_verdict(VerdictInputs(role=Role.STANDBY, records=records(**{**ALL_PASS, "floating_ip": False})))

    assert verdict.ignored == (FLOATING_IP,)


def test_maintenance_ignores_role_probes() -> None:
    inputs = VerdictInputs(
        role=Role.MASTER, records=records(**{**ALL_PASS, "containers": False}), maintenance="on until 14:00"
    )

    verdict = decide_verdict(inputs)

    assert verdict.healthy
    assert verdict.reason == "maintenance mode on until 14:00"
    assert verdict.ignored == (CONTAINERS,)


def test_maintenance_keeps_quorum_fence() -> None:
    inputs = VerdictInputs(role=Role.MASTER, records=records(**{**ALL_PASS, "galera": False}), maintenance="on")

    verdict = decide_verdict(inputs)

    assert not verdict.healthy
    assert verdict.reason.startswith("galera:")


def test_failed_promote_is_unhealthy() -> None:
    inputs = VerdictInputs(
        role=Role.TRANSITION, records=records(galera=True), failed_transition="volume move timed out"
    )

    verdict = decide_verdict(inputs)

    assert not verdict.healthy
    assert verdict.reason == "promote failed: volume move timed out"


def test_failed_promote_beats_maintenance() -> None:
    inputs = VerdictInputs(role=Role.TRANSITION, records=records(galera=True), maintenance="on", failed_transition="x")

    assert not decide_verdict(inputs).healthy


def test_grace_ignores_containers_only() -> None:
    with_containers = VerdictInputs(role=Role.MASTER, records=records(**{**ALL_PASS, "containers": False}), grace=True)
    with_mount = VerdictInputs(role=Role.MASTER, records=records(**{**ALL_PASS, "mount": False}), grace=True)

    containers_verdict = decide_verdict(with_containers)
    mount_verdict = decide_verdict(with_mount)

    assert containers_verdict.healthy
    assert containers_verdict.ignored == (CONTAINERS,)
    assert "grace period" in containers_verdict.reason
    assert not mount_verdict.healthy
    assert mount_verdict.reason == "mount: mount broken"


def test_undecided_until_every_probe_ran() -> None:
    verdict = decide_verdict(VerdictInputs(role=Role.MASTER, records=records(galera=True, mount=True)))

    assert not verdict.decided
    assert verdict.reason == "master: waiting for the first run of containers, floating-ip"


def test_failing_probe_decides_before_all_ran() -> None:
    verdict = decide_verdict(VerdictInputs(role=Role.MASTER, records=records(galera=True, mount=False)))

    assert verdict.decided
    assert not verdict.healthy
    assert verdict.reason == f"{MOUNT}: mount broken"


def test_recovering_probe_reason() -> None:
    recovering = ProbeRecord(ProbeResult(MOUNT, True, "mounted"), 0, 1, failing=True)

    verdict = decide_verdict(VerdictInputs(role=Role.MASTER, records={**records(**ALL_PASS), MOUNT: recovering}))

    assert not verdict.healthy
    assert verdict.reason == "mount: recovering, not enough consecutive passes yet"


def test_decided_with_fewer_probes() -> None:
    inputs = VerdictInputs(role=Role.STANDBY, records=records(containers=True), configured=frozenset({CONTAINERS}))

    verdict = decide_verdict(inputs)

    assert verdict.decided
    assert verdict.reason == "standby: all probes pass"
