"""Container decisions: readiness of the critical services and the start order from depends_on."""

from __future__ import annotations

from mailcow_ha.adapters.engine import ContainerInfo
from mailcow_ha.failover.containers import Readiness, assess_readiness, missing_services, start_waves

CRITICAL = ("postfix-mailcow", "dovecot-mailcow")


def container(
    service: str,
    status: str = "running",
    health: str | None = "healthy",
    depends_on: tuple[str, ...] = (),
    restart_policy: str = "always",
) -> ContainerInfo:
    return ContainerInfo(
        id=f"id-{service}",
        name=f"proj-{service}-1",
        service=service,
        status=status,
        health=health,
        restart_policy=restart_policy,
        restart_count=0,
        exit_code=0 if status == "running" else 1,
        depends_on=depends_on,
        stop_timeout=10.0,
    )


def test_all_ready() -> None:
    verdict = assess_readiness([container("postfix-mailcow"), container("dovecot-mailcow")], CRITICAL)

    assert verdict.readiness is Readiness.READY
    assert "2 critical" in verdict.reason


def test_container_without_healthcheck_ready_when_running() -> None:
    verdict = assess_readiness([container("postfix-mailcow", health=None), container("dovecot-mailcow")], CRITICAL)

    assert verdict.readiness is Readiness.READY


def test_starting_health_waits() -> None:
    verdict = assess_readiness(
        [container("postfix-mailcow", health="starting"), container("dovecot-mailcow")], CRITICAL
    )

    assert verdict.readiness is Readiness.WAITING
    assert "proj-postfix-mailcow-1 (running, starting)" in verdict.reason


def test_unhealthy_waits_until_deadline() -> None:
    verdict = assess_readiness(
        [container("postfix-mailcow", health="unhealthy"), container("dovecot-mailcow")], CRITICAL
    )

    assert verdict.readiness is Readiness.WAITING


def test_restarting_waits() -> None:
    verdict = assess_readiness(
        [container("postfix-mailcow", status="restarting"), container("dovecot-mailcow")], CRITICAL
    )

    assert verdict.readiness is Readiness.WAITING


def test_exited_without_restart_fails() -> None:
    containers = [container("postfix-mailcow", status="exited", restart_policy="no"), container("dovecot-mailcow")]

    verdict = assess_readiness(containers, CRITICAL)

    assert verdict.readiness is Readiness.FAILED
    assert "exit code 1" in verdict.reason


def test_missing_service_fails() -> None:
    verdict = assess_readiness([container("postfix-mailcow")], CRITICAL)

    assert verdict.readiness is Readiness.FAILED
    assert "dovecot-mailcow" in verdict.reason
    assert missing_services([container("postfix-mailcow")], CRITICAL) == ["dovecot-mailcow"]


def test_non_critical_not_waited_for() -> None:
    containers = [
        container("postfix-mailcow"),
        container("dovecot-mailcow"),
        container("sogo-mailcow", health="starting"),
    ]

    assert assess_readiness(containers, CRITICAL).readiness is Readiness.READY


def test_waves_follow_depends_on() -> None:
    containers = [
        container("nginx-mailcow", depends_on=("php-fpm-mailcow", "redis-mailcow")),
        container("php-fpm-mailcow", depends_on=("redis-mailcow",)),
        container("redis-mailcow"),
        container("unbound-mailcow"),
        container("postfix-mailcow", depends_on=("unbound-mailcow", "mysql-mailcow")),
    ]

    waves = [[item.service for item in wave] for wave in start_waves(containers)]

    assert waves == [
        ["redis-mailcow", "unbound-mailcow"],
        ["php-fpm-mailcow", "postfix-mailcow"],
        ["nginx-mailcow"],
    ]


def test_waves_with_cycle_end() -> None:
    containers = [container("a", depends_on=("b",)), container("b", depends_on=("a",)), container("c")]

    waves = [[item.service for item in wave] for wave in start_waves(containers)]

    assert waves == [["c"], ["a", "b"]]
