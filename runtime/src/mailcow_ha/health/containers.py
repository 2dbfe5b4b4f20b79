"""The container probe: on the master every critical container runs and is healthy; on a standby none runs.

mailcow's own watchdog and the engine's restart policies restart containers, so a restart is
tolerated up to `restart_tolerance` times inside `restart_window`. Every death counts once,
from the engine's `die` events and, for restarts the event stream missed, from the containers'
RestartCount. A container that died stays tolerated for up to `restart_wait` seconds while a
start is expected. The events around its death tell whether one is:
- a `restart` event means the engine starts it again. podman sends it before the death,
  Docker after the new start;
- a `stop` event means a start may follow. Docker sends it after the death, both for
  `docker stop` and for `docker restart`, which differ only in the start that follows;
- a plain `die` is a crash, or a stop through podman 4.3's API, which reports nothing else.
  The engine restarts it only under an `always`, `unless-stopped` or failing `on-failure` policy;
- a `kill` without the events above (`docker kill`, `podman kill`) is a kill on purpose.
  Nothing restarts the container, so the service fails at once.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from mailcow_ha.adapters.engine import ContainerEvent, ContainerInfo, Engine
from mailcow_ha.deadline import Clock, Deadline
from mailcow_ha.errors import MailcowHaError
from mailcow_ha.health.verdict import CONTAINERS, ProbeResult, Role

RESTARTING_POLICIES = ("always", "unless-stopped")
EVENT_MATCH_WINDOW = 15.0
"""Seconds between a `stop` or `restart` event and a `die` of the same container that tie them.

Docker waits up to the stop timeout (10 s by default) between the stop signal and the death,
and sends `stop` after the death. The window leaves room for that."""
KILL_MATCH_WINDOW = 2.0
"""Seconds from a `kill` event to a `die` that it caused.

A signal that kills (SIGKILL) ends the container at once. A longer gap means another signal,
such as the SIGHUP that reloads a service, and a later death is then judged as a crash."""
KILL_LATE_WINDOW = 1.0
"""Seconds a `kill` event may follow the `die` it caused.

podman writes `kill` once the signal was sent, and its cleanup process, which writes `die`, can
get there first when SIGKILL ends the container at once."""


class DeathCause(enum.StrEnum):
    """The cause of a container's latest death, as the engine's events show it."""

    CRASH = "crash"
    """A plain `die`: a crash, or a stop that podman 4.3 reported as nothing but `die`."""
    KILLED = "killed"
    """A `kill` without a stop or restart: nothing starts the container again."""
    STOPPING = "stopping"
    """A `stop`: Docker sends it for a stop and for a restart, so a start may follow."""
    RESTARTING = "restarting"
    """A `restart` event: the engine starts the container again."""


@dataclass(frozen=True)
class ServiceState:
    """The probe's view of one critical compose service."""

    service: str
    container: ContainerInfo | None
    restarts: int = 0
    """Deaths of the service's containers inside the restart window."""
    died_for: float | None = None
    """Seconds since the latest death, None if none was seen."""
    cause: DeathCause | None = None
    """The cause that the events around the latest death show, None if no death was seen."""


def policy_restarts(container: ContainerInfo) -> bool:
    """Return whether the container's restart policy makes the engine start it again after a crash."""
    if container.restart_policy in RESTARTING_POLICIES:
        return True
    return container.restart_policy == "on-failure" and container.exit_code != 0


def start_expected(container: ContainerInfo, cause: DeathCause | None) -> bool:
    """Return whether a start may still follow the death of this stopped container."""
    if cause is DeathCause.KILLED:
        return False
    if cause in (DeathCause.RESTARTING, DeathCause.STOPPING):
        return True
    return policy_restarts(container)


def evaluate_service(state: ServiceState, *, tolerance: int, window: float, restart_wait: float) -> str | None:
    """Return why the service fails on the master, or None when it passes."""
    container = state.container
    if container is None:
        return f"{state.service}: no container"
    if state.restarts > tolerance:
        return f"{state.service}: restarted more than {tolerance} times in {window:g} s"
    if container.running:
        return f"{state.service}: unhealthy" if container.health == "unhealthy" else None
    restarting = container.status == "restarting" or (
        state.died_for is not None and state.died_for <= restart_wait and start_expected(container, state.cause)
    )
    if restarting:
        return None
    return f"{state.service}: {container.status} (exit code {container.exit_code})"


def evaluate_master(
    states: Sequence[ServiceState], *, tolerance: int, window: float, restart_wait: float
) -> tuple[bool, str]:
    """Judge the critical services on the master; the detail lists every failing one."""
    problems = [
        problem
        for state in states
        if (problem := evaluate_service(state, tolerance=tolerance, window=window, restart_wait=restart_wait))
    ]
    if problems:
        return False, ", ".join(sorted(problems))
    restarting = [state.service for state in states if state.container is not None and not state.container.running]
    if restarting:
        return True, f"{len(states)} critical services, restarting: {', '.join(sorted(restarting))}"
    return True, f"{len(states)} critical services running"


def evaluate_standby(containers: Iterable[ContainerInfo]) -> tuple[bool, str]:
    """Judge a standby, which must run no container of the project (it would write to a volume it does not own)."""
    running = sorted(container.name for container in containers if container.status in ("running", "restarting"))
    if running:
        return False, f"running on a standby: {', '.join(running)}"
    return True, "no project container runs"


def pick_container(candidates: Sequence[ContainerInfo]) -> ContainerInfo | None:
    """Choose the container that represents a service: a ready one, else a running one, else the first."""
    for accept in (lambda c: c.ready, lambda c: c.running, lambda c: True):
        for container in candidates:
            if accept(container):
                return container
    return None


class RestartTracker:
    """Deaths per service inside a sliding window, from events and from RestartCount.

    Events arrive on the agent's main thread while a probe run polls on a worker thread, so
    every method holds one lock.
    """

    def __init__(self, window: float, clock: Clock = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._counting = True
        self._deaths: defaultdict[str, deque[float]] = defaultdict(deque)
        self._restart_counts: dict[str, int] = {}
        self._deaths_since_poll: defaultdict[str, int] = defaultdict(int)
        self._requests: defaultdict[str, dict[str, float]] = defaultdict(dict)
        """Container id -> the latest `kill`, `stop` and `restart` event times, cleared by a `start`."""
        self._latest_death: dict[str, tuple[str, float]] = {}
        self._service_of: dict[str, str] = {}

    def set_counting(self, counting: bool) -> None:
        """Count deaths only while the node serves as master; switching counting on starts from zero.

        A demote's stops and a promote's starts are no restarts. podman 4.3 reports a stop only
        as `die`, without the `stop` or `kill` event Docker sends, so a stop outside a settled
        master role looks like a crash, and deaths there are not counted.
        """
        with self._lock:
            if counting and not self._counting:
                self._deaths.clear()
                self._restart_counts.clear()
                self._deaths_since_poll.clear()
                self._latest_death.clear()
            self._counting = counting

    def note_event(self, event: ContainerEvent) -> None:
        with self._lock:
            self._note_event(event)

    def _note_event(self, event: ContainerEvent) -> None:
        now = self._clock()
        service = event.service or self._service_of.get(event.container_id, "")
        if event.action in ("kill", "stop", "restart"):
            self._requests[event.container_id][event.action] = now
        elif event.action == "die" and service and self._counting:
            self._deaths[service].append(now)
            self._deaths_since_poll[event.container_id] += 1
            self._latest_death[service] = (event.container_id, now)
        elif event.action == "start":
            # Docker sends `restart` right after the start that ends a restart; that one is kept,
            # and a later death matches it only inside EVENT_MATCH_WINDOW.
            self._requests.pop(event.container_id, None)

    def note_poll(self, containers: Iterable[ContainerInfo]) -> None:
        """Count restarts that RestartCount shows but no `die` event reported."""
        with self._lock:
            self._note_poll(containers)

    def _note_poll(self, containers: Iterable[ContainerInfo]) -> None:
        now = self._clock()
        for container in containers:
            self._service_of[container.id] = container.service
            previous = self._restart_counts.get(container.id)
            self._restart_counts[container.id] = container.restart_count
            if previous is None or not self._counting:
                continue
            unseen = container.restart_count - previous - self._deaths_since_poll.pop(container.id, 0)
            for _ in range(max(0, unseen)):
                self._deaths[container.service].append(now)

    def state(self, service: str, container: ContainerInfo | None) -> ServiceState:
        with self._lock:
            return self._state(service, container)

    def _state(self, service: str, container: ContainerInfo | None) -> ServiceState:
        now = self._clock()
        deaths = self._deaths[service]
        while deaths and deaths[0] < now - self.window:
            deaths.popleft()
        latest = self._latest_death.get(service)
        if latest is None:
            return ServiceState(service, container, len(deaths))
        container_id, died_at = latest
        cause = classify_death(self._requests.get(container_id, {}), died_at)
        return ServiceState(service, container, len(deaths), now - died_at, cause)


def classify_death(requests: dict[str, float], died_at: float) -> DeathCause:
    """Tell from the `kill`, `stop` and `restart` event times of a container why it died at `died_at`.

    `restart` and `stop` count before and after the death, because the engines order them
    differently. `kill` counts only shortly before it (or just after, as podman may report it),
    because it is what ends the container.
    """

    def near(action: str) -> bool:
        at = requests.get(action)
        return at is not None and abs(at - died_at) <= EVENT_MATCH_WINDOW

    if near("restart"):
        return DeathCause.RESTARTING
    if near("stop"):
        return DeathCause.STOPPING
    killed_at = requests.get("kill")
    if killed_at is not None and died_at - KILL_MATCH_WINDOW <= killed_at <= died_at + KILL_LATE_WINDOW:
        return DeathCause.KILLED
    return DeathCause.CRASH


class ContainerProbe:
    """Reads the compose project's containers through the engine and judges them for the role.

    A full read (list, then inspect each container) runs at least every `interval` seconds. In
    between, a run inspects only the containers that engine events named and those that failed
    the last run, so the runs that confirm a container's death cost one request each instead of
    one per container.
    """

    name = CONTAINERS

    def __init__(
        self,
        engine: Engine,
        *,
        project: str,
        critical_services: Sequence[str],
        interval: float,
        tolerance: int,
        window: float,
        restart_wait: float,
        clock: Clock = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.project = project
        self.critical_services = tuple(critical_services)
        self.interval = interval
        self.tolerance = tolerance
        self.window = window
        self.restart_wait = restart_wait
        self.tracker = RestartTracker(window, clock)
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._cache: dict[str, ContainerInfo] = {}
        self._named: set[str] = set()
        """Containers named by events since the last run."""
        self._full_read_at: float | None = None
        self.last_containers: tuple[ContainerInfo, ...] = ()
        self.last_states: tuple[ServiceState, ...] = ()
        self.full_reads = 0
        self.partial_reads = 0

    def note_event(self, event: ContainerEvent) -> None:
        """Record an engine event (thread-safe: `check` may run meanwhile on a probe worker)."""
        self.tracker.note_event(event)
        with self._lock:
            self._named.add(event.container_id)

    def check(self, role: Role, deadline: Deadline) -> ProbeResult:
        started = self._clock()
        try:
            containers = self._read()
        except MailcowHaError as error:
            with self._lock:
                self._full_read_at = None
            return ProbeResult(
                CONTAINERS, False, f"engine unreachable: {error}", self._wall_clock(), self._clock() - started
            )
        self.last_containers = tuple(containers)
        if role is Role.MASTER:
            by_service: defaultdict[str, list[ContainerInfo]] = defaultdict(list)
            for container in containers:
                by_service[container.service].append(container)
            states = tuple(
                self.tracker.state(service, pick_container(by_service.get(service, [])))
                for service in self.critical_services
            )
            self.last_states = states
            ok, detail = evaluate_master(
                states, tolerance=self.tolerance, window=self.window, restart_wait=self.restart_wait
            )
        else:
            self.last_states = ()
            ok, detail = evaluate_standby(containers)
        return ProbeResult(CONTAINERS, ok, detail, self._wall_clock(), self._clock() - started)

    def _read(self) -> list[ContainerInfo]:
        with self._lock:
            named, self._named = self._named, set()
            fresh = self._full_read_at is not None and self._clock() - self._full_read_at < self.interval
            suspects = {container.id for container in self._cache.values() if not container.ready}
        if not fresh or not named <= set(self._cache):
            containers = self.engine.project_containers(self.project)
            self.tracker.note_poll(containers)
            with self._lock:
                self._cache = {container.id: container for container in containers}
                self._full_read_at = self._clock()
            self.full_reads += 1
            return sorted(containers, key=lambda container: container.name)
        for container_id in sorted(named | suspects):
            try:
                updated = self.engine.inspect(container_id)
            except MailcowHaError:
                # Removed since the last read, or the engine failed: the next full read decides.
                with self._lock:
                    self._full_read_at = None
                return self._read()
            self.tracker.note_poll([updated])
            with self._lock:
                self._cache[container_id] = updated
        self.partial_reads += 1
        with self._lock:
            return sorted(self._cache.values(), key=lambda container: container.name)
