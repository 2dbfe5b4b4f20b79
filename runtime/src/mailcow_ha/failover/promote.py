"""Promote: make this node the master, moving the floating IPs and the shared volume here.

Steps, in order (each timed into the history record):
1. still master: the cancel token is checked before every step and every cloud call;
2. circuit breaker (failover.breaker);
3. record the failover start (the health check's grace period counts from it) and alert;
4. in parallel threads: assign the floating IPs here, and move the shared volume here. Before
   the volume is detached from its holder, wait (bounded) until the holder reports it unmounted
   (failover.release);
5. wait for the volume's device, check it is ext4 (never format), clear a stale MMP block that a
   node of this cluster left (failover.mmpclear), mount it, and check the marker file and the
   compose project's data (failover.storage);
6. start the project's containers and wait until every critical one runs and is healthy;
7. alert success with the measured durations.

Any failure, including a newer keepalived state, releases what was taken (containers stopped,
volume unmounted) through the demoter and raises, so the caller exits non-zero and keepalived
moves the node to FAULT. The floating IPs and the volume stay assigned in the API: the next
master moves them, and moving them back here would cost API calls for nothing. The whole promote
is bounded by `deadlines.promote`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from mailcow_ha.alert_events import Alerter, AlertEvent
from mailcow_ha.config import NodeConfig
from mailcow_ha.deadline import Clock, Deadline
from mailcow_ha.errors import CloudError, MailcowHaError, StateError, Superseded
from mailcow_ha.failover.breaker import BreakerOpen, CircuitBreaker
from mailcow_ha.failover.containers import ProjectContainers
from mailcow_ha.failover.demote import Demoter
from mailcow_ha.failover.history import (
    FailoverRecord,
    HistoryStore,
    RecordKind,
    RecordOutcome,
    StepLog,
    StepOutcome,
    StepTiming,
    write_failover_start,
)
from mailcow_ha.failover.release import ReleaseWaiter
from mailcow_ha.failover.storage import SharedVolume
from mailcow_ha.failover.transitions import CancelToken, TransitionResult, classify_error

log = logging.getLogger(__name__)

Checkpoint = Callable[[], None]
BeforeDetach = Callable[[int, Deadline], None]
StoredServerId = Callable[[], "int | None"]


class CloudOperations(Protocol):
    """The part of adapters.hetzner.HetznerCloud that promote uses."""

    def assign_floating_ips(self, server_id: int, deadline: Deadline, checkpoint: Checkpoint) -> None: ...

    def move_volume_here(
        self,
        volume_id: int,
        server_id: int,
        deadline: Deadline,
        checkpoint: Checkpoint,
        before_detach: BeforeDetach | None = None,
    ) -> None: ...

    def server_id_by_name(self, name: str, deadline: Deadline) -> int: ...


class CloudStepAborted(CloudError):
    """A cloud step stopped because the step running in parallel with it failed."""


_RECORD_OUTCOME = {
    TransitionResult.SUCCEEDED: RecordOutcome.SUCCEEDED,
    TransitionResult.FAILED: RecordOutcome.FAILED,
    TransitionResult.SUPERSEDED: RecordOutcome.SUPERSEDED,
    TransitionResult.REFUSED: RecordOutcome.REFUSED,
}


class Promoter:
    """Runs promote on this node with the adapters it is given (see failover.wiring)."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        cloud: CloudOperations,
        volume: SharedVolume,
        containers: ProjectContainers,
        demoter: Demoter,
        breaker: CircuitBreaker,
        history: HistoryStore,
        alerter: Alerter,
        release: ReleaseWaiter | None = None,
        stored_server_id: StoredServerId | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        """`release` waits for the volume's holder before a detach (None detaches at once).
        `stored_server_id` returns this server's id as the membership sync stored it, or None."""
        self._config = config
        self._cloud = cloud
        self._release = release
        self._stored_server_id = stored_server_id
        self._volume = volume
        self._containers = containers
        self._demoter = demoter
        self._breaker = breaker
        self._history = history
        self._alerter = alerter
        self._clock = clock
        self._wall_clock = wall_clock
        self._server_id = config.hetzner.server_id

    def run(
        self, token: CancelToken, *, kind: RecordKind = RecordKind.FAILOVER, ignore_breaker: bool = False
    ) -> FailoverRecord:
        """Promote this node and return the finished history record; raise on any failure after releasing."""
        node = self._config.node.name
        reason = token.trigger or "promote requested"
        steps = StepLog(self._clock)
        total = Deadline.after(
            f"promote ({self._config.deadlines.promote:g} s)", self._config.deadlines.promote, self._clock
        )
        record: FailoverRecord | None = None
        try:
            token.enter_step("breaker")
            if kind is RecordKind.FAILOVER and self._volume.mounted_here() is not None:
                # The volume is already mounted here: this node is the master and resumes (an
                # agent restart, or a promote that died after mounting). It moves nothing new, so
                # the breaker does not count it and the grace period does not start again.
                kind = RecordKind.RESUME
            log.info("promote of %s starting (%s, %s)", node, kind, reason)
            self._close_interrupted()
            with steps.step("breaker"):
                self._check_breaker(kind, ignore_breaker, reason)

            record = self._history.new_record(kind, node, reason)
            self._write_state("its history record", lambda: self._history.save(record))
            if kind is not RecordKind.RESUME:
                self._write_state(
                    "the failover start time",
                    lambda: write_failover_start(self._config.paths.state_dir, record.started_at, record.id),
                )
                self._alerter.send(AlertEvent.FAILOVER_STARTED, f"promote of {node} started: {reason}")

            self._take_over(token, total, steps)
        except Exception as error:
            self._handle_failure(error, record, steps, kind, reason)
            raise

        assert record is not None
        finished = self._history.ended(record, RecordOutcome.SUCCEEDED, steps.steps)
        self._write_state("its history record", lambda: self._history.save(finished))
        message = f"{node} is now the master; {kind} took {finished.duration or 0.0:.1f} s"
        log.info("%s", message)
        if kind is not RecordKind.RESUME:
            self._alerter.send(AlertEvent.FAILOVER_SUCCEEDED, message, steps.durations())
        return finished

    # --- the steps ------------------------------------------------------------------------------

    def _take_over(self, token: CancelToken, total: Deadline, steps: StepLog) -> None:
        deadlines = self._config.deadlines
        with steps.step("server id", token.enter_step):
            server_id = self._resolve_server_id(total.sooner("looking up this server's id", deadlines.cloud_step))

        with steps.step("cloud", token.enter_step):
            self._move_cloud_resources(server_id, token, total, steps)

        with steps.step("device", token.enter_step):
            device = self._volume.wait_for_device(total.sooner("the volume's device", deadlines.device), token.check)

        with steps.step("file system check", token.enter_step):
            probe = self._volume.check_filesystem(device, total.sooner("probing the volume", deadlines.mount))

        with steps.step("multi-mount protection", token.enter_step) as note:
            mmp = self._volume.settle_mmp(device, probe, total.sooner("checking the MMP block", deadlines.mount))
            note.detail = f"{mmp.action}: {mmp.reason}"

        with steps.step("mount", token.enter_step):
            # An MMP block that promote did not clear makes the kernel wait before it mounts.
            self._volume.mount(device, total.sooner("mounting the volume", deadlines.mount + mmp.kernel_wait))

        with steps.step("marker", token.enter_step):
            self._volume.check_contents()

        containers_deadline = total.sooner("containers running and healthy", deadlines.containers_healthy)
        with steps.step("containers start", token.enter_step):
            self._containers.start(containers_deadline, token.check)

        with steps.step("containers healthy", token.enter_step):
            self._containers.wait_ready(containers_deadline, token.check, token.wait)

    def _resolve_server_id(self, deadline: Deadline) -> int:
        """Return this server's id: from the node config, else as the membership sync stored it, else the API's."""
        if self._server_id is not None:
            return self._server_id
        name = self._config.node.name
        if self._stored_server_id is not None:
            try:
                self._server_id = self._stored_server_id()
            except MailcowHaError as error:
                log.warning("the stored members could not be read for this server's id: %s", error)
            if self._server_id is not None:
                log.info("this server %s has id %d (from the stored members)", name, self._server_id)
                return self._server_id
        self._server_id = self._cloud.server_id_by_name(name, deadline)
        log.info("this server %s has id %d (looked up in the API)", name, self._server_id)
        return self._server_id

    def _move_cloud_resources(self, server_id: int, token: CancelToken, total: Deadline, steps: StepLog) -> None:
        """Assign the floating IPs and move the volume in two threads; the first failure stops the other."""
        seconds = self._config.deadlines.cloud_step
        volume_id = self._config.hetzner.shared_volume_id
        failed = threading.Event()

        def checkpoint() -> None:
            token.check("before a cloud call")
            if failed.is_set():
                raise CloudStepAborted("stopped before its next cloud call because the parallel cloud step failed")

        def timed(name: str, call: Callable[[], None]) -> None:
            started = self._clock()
            try:
                call()
            except Superseded:
                steps.add(StepTiming(name, self._clock() - started, StepOutcome.SUPERSEDED))
                raise
            except BaseException:
                failed.set()
                steps.add(StepTiming(name, self._clock() - started, StepOutcome.FAILED))
                raise
            steps.add(StepTiming(name, self._clock() - started))

        def before_detach(holder: int, deadline: Deadline) -> None:
            self._wait_for_release(holder, deadline, checkpoint, steps)

        fip_deadline = total.sooner(f"assigning the floating IPs ({seconds:g} s)", seconds)
        volume_deadline = total.sooner(f"moving volume {volume_id} ({seconds:g} s)", seconds)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="promote-cloud") as pool:
            futures: list[Future[None]] = [
                pool.submit(
                    timed, "floating IPs", lambda: self._cloud.assign_floating_ips(server_id, fip_deadline, checkpoint)
                ),
                pool.submit(
                    timed,
                    "volume attach",
                    lambda: self._cloud.move_volume_here(
                        volume_id, server_id, volume_deadline, checkpoint, before_detach
                    ),
                ),
            ]
        errors = [error for error in (future.exception() for future in futures) if error is not None]
        for error in errors:
            if isinstance(error, Superseded):
                raise error
        causes = [error for error in errors if not isinstance(error, CloudStepAborted)]
        if len(causes) == 1:
            raise causes[0]
        if causes:
            raise CloudError("; ".join(str(error) for error in causes))

    def _wait_for_release(self, holder: int, deadline: Deadline, checkpoint: Checkpoint, steps: StepLog) -> None:
        """Wait until server `holder` released the volume (bounded by `deadlines.release_wait`); record how it ended."""
        seconds = self._config.deadlines.release_wait
        if self._release is None or seconds <= 0:
            return
        volume_id = self._config.hetzner.shared_volume_id
        wait_deadline = deadline.sooner(f"waiting for server {holder} to release volume {volume_id}", seconds)
        result = self._release.wait(holder, wait_deadline, checkpoint)
        steps.add(StepTiming("release wait", result.seconds, detail=f"{result.outcome}: {result.reason}"))

    # --- breaker, history, failure --------------------------------------------------------------

    def _write_state(self, what: str, write: Callable[[], None]) -> None:
        """Write a state file; a failure is alerted but does not stop the promote.

        A broken state directory must not keep mail down: the data is fenced by the cloud API,
        multi-mount protection and the marker, not by these files.
        """
        try:
            write()
        except StateError as error:
            message = (
                f"promote of {self._config.node.name} could not write {what}: {error}; the promote continues, "
                "but the circuit breaker and the health check's grace period cannot rely on it"
            )
            log.error("%s", message)
            self._alerter.send(AlertEvent.STATE_CORRUPT, message)

    def _close_interrupted(self) -> None:
        """Mark records left `running` by a dead process; alert when the history was corrupt."""
        try:
            read = self._history.read()
            if read.problem is not None:
                # Reading moved the corrupt file aside, so the breaker will find no history.
                self._alerter.send(
                    AlertEvent.STATE_CORRUPT, f"{read.problem}; the circuit breaker allows this failover"
                )
            self._history.close_interrupted()
        except StateError as error:
            log.error("history could not be checked for interrupted transitions: %s", error)

    def _check_breaker(self, kind: RecordKind, ignore_breaker: bool, reason: str) -> None:
        if kind is not RecordKind.FAILOVER and ignore_breaker:
            log.warning("circuit breaker not consulted: %s with --ignore-breaker", kind)
            return
        already_serving = kind is RecordKind.RESUME or self._volume.mounted_here() is not None
        decision = self._breaker.check(already_serving=already_serving)
        if not decision.allowed:
            try:
                record = self._history.start(kind, self._config.node.name, reason)
                self._history.finish(record, RecordOutcome.REFUSED, (), failed_step="breaker", error=decision.reason)
            except StateError as error:
                log.error("rejected promote could not be recorded: %s", error)
            raise BreakerOpen(decision.reason)

    def _handle_failure(
        self, error: Exception, record: FailoverRecord | None, steps: StepLog, kind: RecordKind, reason: str
    ) -> None:
        result, _ = classify_error(error)
        node = self._config.node.name
        if isinstance(error, MailcowHaError):
            log.error("promote of %s %s: %s", node, result, error)
        else:
            log.error("promote of %s failed with an unexpected error", node, exc_info=error)
        try:
            self._demoter.run(reason=f"releasing after a {result} promote")
        except MailcowHaError as release_error:
            # The demoter already logged and alerted DEMOTE_FAILED; the promote's own error is raised.
            log.error("release after the %s promote failed: %s", result, release_error)
        if record is not None:
            ended = self._history.ended(
                record,
                _RECORD_OUTCOME[result],
                steps.steps,
                failed_step=steps.failed_step,
                error=str(error) or type(error).__name__,
            )
            try:
                self._history.save(ended)
            except StateError as state_error:
                log.error("promote history record %s could not be finished: %s", record.id, state_error)
        if isinstance(error, Superseded | BreakerOpen):
            return
        step = steps.failed_step or "start"
        details = steps.durations()
        details["failed step"] = step
        self._alerter.send(
            AlertEvent.FAILOVER_FAILED,
            f"promote of {node} ({kind}, {reason}) failed at step {step}: {error}; the node released what it took "
            "and reports FAULT so that another node can take over",
            details,
        )
