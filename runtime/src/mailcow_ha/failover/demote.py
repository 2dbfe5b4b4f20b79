"""Demote: stop the mailcow containers and release the shared volume, idempotently.

Steps: stop every running container of the compose project (bounded by
`deadlines.containers_stop`), stop any process still keeping the volume's file system busy
(SIGTERM, SIGKILL after `deadlines.holders_term`), sync, unmount, and verify with the kernel's
mount table. Every step runs even when an earlier one failed, because each releases more of the
volume. A demote that cannot release the volume raises DemoteFailed and alerts DEMOTE_FAILED.
On a node with no container running and the volume not mounted it changes nothing and
writes no history record.
"""

from __future__ import annotations

import logging
import time

from mailcow_ha.alert_events import Alerter, AlertEvent
from mailcow_ha.config import NodeConfig
from mailcow_ha.deadline import Clock, Deadline
from mailcow_ha.errors import MailcowHaError, StateError
from mailcow_ha.failover.containers import ProjectContainers
from mailcow_ha.failover.history import FailoverRecord, HistoryStore, RecordKind, RecordOutcome, StepLog
from mailcow_ha.failover.storage import SharedVolume
from mailcow_ha.failover.transitions import CancelToken

log = logging.getLogger(__name__)


class DemoteFailed(MailcowHaError):
    """Demote could not stop the containers or release the shared volume."""


class Demoter:
    """Stops the project's containers and releases the shared volume on this node."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        volume: SharedVolume,
        containers: ProjectContainers,
        history: HistoryStore,
        alerter: Alerter,
        clock: Clock = time.monotonic,
    ) -> None:
        self._config = config
        self._volume = volume
        self._containers = containers
        self._history = history
        self._alerter = alerter
        self._clock = clock

    def run(self, token: CancelToken | None = None, *, reason: str = "demote requested") -> list[str]:
        """Demote this node; return what was done (empty when it held nothing).

        `token` only reports the current step: a demote is never cancelled.
        """
        deadlines = self._config.deadlines
        steps = StepLog(self._clock)
        # Written only when the demote did something, but dated from here so that its duration
        # covers the steps.
        record = self._history.new_record(RecordKind.DEMOTE, self._config.node.name, reason)
        enter = None if token is None else token.note_step
        done: list[str] = []
        problems: list[str] = []

        try:
            with steps.step("containers stop", enter):
                stop_deadline = Deadline.after("stopping containers", deadlines.containers_stop, self._clock)
                stopped = self._containers.stop(stop_deadline)
            done.extend(f"stopped {name}" for name in stopped)
        except MailcowHaError as error:
            problems.append(f"containers: {error}")

        try:
            with steps.step("volume release", enter):
                release_seconds = deadlines.holders_term + deadlines.unmount
                release_deadline = Deadline.after("releasing the shared volume", release_seconds, self._clock)
                done.extend(self._volume.release(release_deadline))
        except MailcowHaError as error:
            problems.append(f"volume: {error}")

        if problems:
            message = (
                f"demote of {self._config.node.name} failed and the node may still hold mailcow's data: "
                f"{' | '.join(problems)}. Fix the cause, then run `mailcow-ha demote` again"
            )
            log.critical("%s", message)
            self._alerter.send(AlertEvent.DEMOTE_FAILED, message, steps.durations())
            self._record(record, steps, RecordOutcome.FAILED, message)
            raise DemoteFailed(message)
        if done:
            log.info("demote of %s done: %s", self._config.node.name, "; ".join(done))
            self._record(record, steps, RecordOutcome.SUCCEEDED, None)
        else:
            log.info(
                "demote of %s: no container running and the volume not mounted; nothing to do", self._config.node.name
            )
        return done

    def _record(self, record: FailoverRecord, steps: StepLog, outcome: RecordOutcome, error: str | None) -> None:
        try:
            self._history.finish(record, outcome, steps.steps, failed_step=steps.failed_step, error=error)
        except StateError as failure:
            log.error("demote history record could not be written: %s", failure)
