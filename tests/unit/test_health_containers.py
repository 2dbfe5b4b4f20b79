"""The container probe: critical services on the master, nothing on a standby, restarts within tolerance."""

from __future__ import annotations

import pytest

from mailcow_ha.adapters.engine import ContainerEvent, ContainerInfo
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import EngineError
from mailcow_ha.health.containers import (
    ContainerProbe,
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
                "postfix-mailcow", container(status="exited", exit_code=137), died_for=0.1, stopped_on_purpose=True
            ),
            "postfix-mailcow: exited (exit code 137)",
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


def test_tracker_marks_stop_on_purpose() -> None:
    clock = FakeClock()
    tracker = RestartTracker(window=100.0, clock=clock)

    tracker.note_event(event("kill"))
    tracker.note_event(event("die"))
    stopped = tracker.state("postfix-mailcow", container(status="exited"))
    tracker.note_event(event("start"))
    clock.now += 1
    tracker.note_event(event("die"))
    crashed = tracker.state("postfix-mailcow", container(status="exited"))

    assert stopped.stopped_on_purpose
    assert not crashed.stopped_on_purpose


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
