"""The container probe: critical services on the master, nothing on a standby, restarts within tolerance."""

from __future__ import annotations

import pytest

from mailcow_ha.adapters.engine import ContainerEvent, ContainerInfo
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import EngineError
from mailcow_ha.health.containers import (
    ContainerProbe,
    DeathCause,
    RestartTracker,
    ServiceState,
    evaluate_master,
    evaluate_service,
    evaluate_standby,
    pick_container,
)
from mailcow_ha.health.verdict import Role


def container(
    service: str = "postfix-mailcow",
    *,
    status: str = "running",
    health: str | None = None,
    policy: str = "always",
    exit_code: int = 0,
    restart_count: int = 0,
    container_id: str = "",
) -> ContainerInfo:
    return ContainerInfo(
        id=container_id or f"id-{service}",
        name=f"project-{service}-1",
        service=service,
        status=status,
        health=health,
        restart_policy=policy,
        restart_count=restart_count,
        exit_code=exit_code,
        depends_on=(),
        stop_timeout=10.0,
    )


def judge(state: ServiceState) -> str | None:
    return evaluate_service(state, tolerance=3, window=600.0, restart_wait=10.0)


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        (ServiceState("postfix-mailcow", container()), None),
        (ServiceState("postfix-mailcow", container(health="healthy")), None),
        (ServiceState("postfix-mailcow", container(health="starting")), None),
        (ServiceState("postfix-mailcow", container(health="unhealthy")), "postfix-mailcow: unhealthy"),
        (ServiceState("postfix-mailcow", None), "postfix-mailcow: no container"),
        (ServiceState("postfix-mailcow", container(status="restarting"), restarts=2), None),
        (
            ServiceState("postfix-mailcow", container(status="restarting"), restarts=4),
            "postfix-mailcow: restarted more than 3 times in 600 s",
        ),
        (
            ServiceState("postfix-mailcow", container(), restarts=4),
            "postfix-mailcow: restarted more than 3 times in 600 s",
        ),
        (ServiceState("postfix-mailcow", container(status="exited", exit_code=1), restarts=1, died_for=2.0), None),
        (
            ServiceState("postfix-mailcow", container(status="exited", exit_code=1), restarts=1, died_for=11.0),
            "postfix-mailcow: exited (exit code 1)",
        ),
        (
            ServiceState("postfix-mailcow", container(status="exited", exit_code=137, policy="no"), died_for=0.1),
            "postfix-mailcow: exited (exit code 137)",
        ),
        (
            ServiceState(
                "postfix-mailcow", container(status="exited", exit_code=137), died_for=0.1, cause=DeathCause.KILLED
            ),
            "postfix-mailcow: exited (exit code 137)",
        ),
        (
            ServiceState(
                "postfix-mailcow",
                container(status="exited", policy="no"),
                restarts=1,
                died_for=0.5,
                cause=DeathCause.RESTARTING,
            ),
            None,
        ),
        (
            ServiceState(
                "postfix-mailcow", container(status="exited", policy="no"), died_for=0.5, cause=DeathCause.STOPPING
            ),
            None,
        ),
        (
            ServiceState(
                "postfix-mailcow", container(status="exited", policy="no"), died_for=10.5, cause=DeathCause.STOPPING
            ),
            "postfix-mailcow: exited (exit code 0)",
        ),
        (
            ServiceState(
                "postfix-mailcow", container(status="exited", policy="no"), died_for=0.5, cause=DeathCause.CRASH
            ),
            "postfix-mailcow: exited (exit code 0)",
        ),
        (
            ServiceState("postfix-mailcow", container(status="exited", policy="on-failure", exit_code=2), died_for=1),
            None,
        ),
        (
            ServiceState("postfix-mailcow", container(status="exited", policy="on-failure", exit_code=0), died_for=1),
            "postfix-mailcow: exited (exit code 0)",
        ),
        (ServiceState("postfix-mailcow", container(status="exited")), "postfix-mailcow: exited (exit code 0)"),
    ],
)
def test_evaluate_service(state: ServiceState, problem: str | None) -> None:
    assert judge(state) == problem


def test_master_lists_every_failing_service() -> None:
    states = [
        ServiceState("redis-mailcow", None),
        ServiceState("dovecot-mailcow", container("dovecot-mailcow", health="unhealthy")),
        ServiceState("nginx-mailcow", container("nginx-mailcow")),
    ]

    ok, detail = evaluate_master(states, tolerance=3, window=600, restart_wait=10)

    assert not ok
    assert detail == "dovecot-mailcow: unhealthy, redis-mailcow: no container"


def test_standby_rejects_running_containers() -> None:
    ok, detail = evaluate_standby([container("nginx-mailcow"), container("redis-mailcow", status="exited")])

    assert not ok
    assert detail == "running on a standby: project-nginx-mailcow-1"
    assert evaluate_standby([container(status="exited")]) == (True, "no project container runs")


def test_pick_prefers_ready_container() -> None:
    exited = container(status="exited", container_id="a")
    running = container(health="unhealthy", container_id="b")
    ready = container(container_id="c")

    assert pick_container([exited, running, ready]) is ready
    assert pick_container([exited, running]) is running
    assert pick_container([exited]) is exited
    assert pick_container([]) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def event(action: str, container_id: str = "id-postfix-mailcow", service: str = "postfix-mailcow") -> ContainerEvent:
    return ContainerEvent(action, container_id, "project-postfix-mailcow-1", service, 0.0, None)


def test_tracker_counts_deaths_in_window() -> None:
    clock = FakeClock()
    tracker = RestartTracker(window=100.0, clock=clock)

    for _ in range(3):
        tracker.note_event(event("die"))
        clock.now += 40
    state = tracker.state("postfix-mailcow", container())

    assert state.restarts == 2
    assert state.died_for == 40


def test_tracker_counts_unseen_restarts() -> None:
    clock = FakeClock()
    tracker = RestartTracker(window=100.0, clock=clock)

    tracker.note_poll([container(restart_count=5)])
    tracker.note_event(event("die"))
    tracker.note_poll([container(restart_count=7)])

    assert tracker.state("postfix-mailcow", container()).restarts == 2


@pytest.mark.parametrize(
    ("steps", "cause"),
    [
        # podman 4.3's restart, through the Docker API or the CLI: `restart` comes before the death.
        ([("restart", 0.0), ("die", 0.01)], DeathCause.RESTARTING),
        # podman's restart policy after a crash: `restart` follows the death.
        ([("die", 0.0), ("restart", 0.01)], DeathCause.RESTARTING),
        # Docker's restart and stop look alike until the start: kill (the stop signal), die, stop.
        ([("kill", 0.0), ("die", 0.3), ("stop", 0.31)], DeathCause.STOPPING),
        # Docker's restart of a container that ignores SIGTERM: SIGKILL after the stop timeout.
        ([("kill", 0.0), ("kill", 10.0), ("die", 10.01), ("stop", 10.02)], DeathCause.STOPPING),
        ([("kill", 0.0), ("die", 0.01)], DeathCause.KILLED),
        # podman's cleanup process may report the death before `podman kill` reports the kill.
        ([("die", 0.0), ("kill", 0.02)], DeathCause.KILLED),
        ([("die", 0.0), ("kill", 3.0)], DeathCause.CRASH),
        ([("die", 0.0)], DeathCause.CRASH),
        # A SIGHUP that reloads a service is a `kill` too, and a death long after it is a crash.
        ([("kill", 0.0), ("die", 5.0)], DeathCause.CRASH),
        ([("kill", 0.0), ("start", 0.5), ("die", 1.0)], DeathCause.CRASH),
    ],
)
def test_tracker_classifies_deaths(steps: list[tuple[str, float]], cause: DeathCause) -> None:
    clock = FakeClock()
    start = clock.now
    tracker = RestartTracker(window=100.0, clock=clock)

    for action, at in steps:
        clock.now = start + at
        tracker.note_event(event(action))
    state = tracker.state("postfix-mailcow", container(status="exited", policy="no"))

    assert state.cause is cause
    assert state.restarts == 1


def test_tracker_reports_no_cause_without_death() -> None:
    tracker = RestartTracker(window=100.0, clock=FakeClock())
    tracker.note_event(event("kill"))

    state = tracker.state("postfix-mailcow", container())

    assert state.cause is None
    assert state.died_for is None


def test_tracker_maps_events_without_service() -> None:
    tracker = RestartTracker(window=100.0, clock=FakeClock())
    tracker.note_poll([container()])

    tracker.note_event(event("die", service=""))

    assert tracker.state("postfix-mailcow", container()).restarts == 1


class FakeEngine:
    def __init__(self, containers: list[ContainerInfo] | EngineError) -> None:
        self.containers = containers
        self.lists = 0
        self.inspects: list[str] = []

    def project_containers(self, project: str) -> list[ContainerInfo]:
        self.lists += 1
        if isinstance(self.containers, EngineError):
            raise self.containers
        return self.containers

    def inspect(self, container_id: str) -> ContainerInfo:
        self.inspects.append(container_id)
        assert not isinstance(self.containers, EngineError)
        for candidate in self.containers:
            if candidate.id == container_id:
                return candidate
        raise EngineError(f"inspecting container {container_id} failed: not found")


def probe_with(engine: FakeEngine) -> ContainerProbe:
    return ContainerProbe(
        engine,  # type: ignore[arg-type]
        project="project",
        critical_services=["postfix-mailcow", "redis-mailcow"],
        interval=5.0,
        tolerance=3,
        window=600.0,
        restart_wait=10.0,
    )


def test_probe_judges_by_role() -> None:
    probe = probe_with(FakeEngine([container(), container("redis-mailcow")]))
    deadline = Deadline.after("test", 5)

    master = probe.check(Role.MASTER, deadline)
    standby = probe.check(Role.STANDBY, deadline)

    assert master.ok
    assert master.detail == "2 critical services running"
    assert not standby.ok
    assert [state.service for state in probe.last_states] == []


def test_probe_reports_unreachable_engine() -> None:
    probe = probe_with(FakeEngine(EngineError("connecting to the Docker API failed")))

    result = probe.check(Role.MASTER, Deadline.after("test", 5))

    assert not result.ok
    assert result.detail == "engine unreachable: connecting to the Docker API failed"


def test_tracker_counts_only_while_master() -> None:
    clock = FakeClock()
    tracker = RestartTracker(window=100.0, clock=clock)
    tracker.note_event(event("die"))

    tracker.set_counting(False)
    tracker.note_event(event("die"))
    tracker.note_poll([container(restart_count=1)])
    tracker.note_poll([container(restart_count=4)])
    tracker.set_counting(True)
    fresh = tracker.state("postfix-mailcow", container()).restarts
    tracker.note_event(event("die"))

    assert fresh == 0
    assert tracker.state("postfix-mailcow", container()).restarts == 1


def test_probe_reads_only_named_containers() -> None:
    engine = FakeEngine([container(), container("redis-mailcow")])
    probe = probe_with(engine)
    deadline = Deadline.after("test", 5)
    probe.check(Role.MASTER, deadline)

    engine.containers = [container(status="exited", exit_code=137, policy="no"), container("redis-mailcow")]
    probe.note_event(event("die"))
    died = probe.check(Role.MASTER, deadline)
    again = probe.check(Role.MASTER, deadline)

    assert engine.lists == 1
    assert engine.inspects == ["id-postfix-mailcow", "id-postfix-mailcow"]
    assert not died.ok
    assert not again.ok
    assert died.detail == "postfix-mailcow: exited (exit code 137)"


def test_probe_reads_all_for_unknown_or_gone_containers() -> None:
    engine = FakeEngine([container(), container("redis-mailcow")])
    probe = probe_with(engine)
    deadline = Deadline.after("test", 5)
    probe.check(Role.MASTER, deadline)

    probe.note_event(event("create", container_id="id-new"))
    probe.check(Role.MASTER, deadline)
    engine.containers = [container()]
    probe.note_event(event("destroy", container_id="id-redis-mailcow", service="redis-mailcow"))
    gone = probe.check(Role.MASTER, deadline)

    assert engine.lists == 3
    assert not gone.ok
    assert gone.detail == "redis-mailcow: no container"


def test_probe_tolerates_docker_restart_of_master_container() -> None:
    clock = FakeClock()
    engine = FakeEngine([container(), container("redis-mailcow")])
    probe = ContainerProbe(
        engine,  # type: ignore[arg-type]
        project="project",
        critical_services=["postfix-mailcow", "redis-mailcow"],
        interval=5.0,
        tolerance=3,
        window=600.0,
        restart_wait=10.0,
        clock=clock,
    )
    deadline = Deadline.after("test", 5)
    probe.check(Role.MASTER, deadline)

    # `docker restart` as mailcow's watchdog sends it: the stop signal, the death, then `stop`.
    engine.containers = [container(status="exited", exit_code=0), container("redis-mailcow")]
    for action in ("kill", "die", "stop"):
        probe.note_event(event(action))
    clock.now += 1.0
    between = probe.check(Role.MASTER, deadline)
    clock.now += 9.5
    never_started = probe.check(Role.MASTER, deadline)

    assert between.ok, between.detail
    assert between.detail == "2 critical services, restarting: postfix-mailcow"
    assert not never_started.ok
    assert never_started.detail == "postfix-mailcow: exited (exit code 0)"


def test_probe_fails_killed_master_container_at_once() -> None:
    clock = FakeClock()
    engine = FakeEngine([container(), container("redis-mailcow")])
    probe = ContainerProbe(
        engine,  # type: ignore[arg-type]
        project="project",
        critical_services=["postfix-mailcow", "redis-mailcow"],
        interval=5.0,
        tolerance=3,
        window=600.0,
        restart_wait=10.0,
        clock=clock,
    )
    deadline = Deadline.after("test", 5)
    probe.check(Role.MASTER, deadline)

    engine.containers = [container(status="exited", exit_code=137), container("redis-mailcow")]
    probe.note_event(event("kill"))
    probe.note_event(event("die"))
    killed = probe.check(Role.MASTER, deadline)

    assert not killed.ok
    assert killed.detail == "postfix-mailcow: exited (exit code 137)"
