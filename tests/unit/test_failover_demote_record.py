"""Demote history record: its start and duration cover the demote's steps."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from harness.failovernode import RecordingAlerter
from harness.nodeconfig import node_config_dict
from mailcow_ha.config import parse_config
from mailcow_ha.deadline import Deadline
from mailcow_ha.failover.containers import ProjectContainers
from mailcow_ha.failover.demote import Demoter
from mailcow_ha.failover.history import HistoryStore, RecordKind
from mailcow_ha.failover.storage import SharedVolume


class FakeClock:
    """A clock that moves only when a step advances it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SlowContainers:
    """A ProjectContainers stand-in whose stop takes `seconds` on the fake clock."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds

    def stop(self, deadline: Deadline) -> list[str]:
        self.clock.now += self.seconds
        return ["postfix-mailcow"]


class ReleasedVolume:
    """A SharedVolume stand-in with nothing mounted."""

    def release(self, deadline: Deadline) -> list[str]:
        return []


def test_demote_record_covers_steps(tmp_path: Path) -> None:
    clock = FakeClock()
    config = parse_config(node_config_dict())
    history = HistoryStore(tmp_path, clock=clock)
    demoter = Demoter(
        config,
        volume=cast(SharedVolume, ReleasedVolume()),
        containers=cast(ProjectContainers, SlowContainers(clock, 2.5)),
        history=history,
        alerter=RecordingAlerter(),
        clock=clock,
    )

    demoter.run(reason="keepalived reported FAULT")

    [record] = history.read().records
    assert record.kind == RecordKind.DEMOTE
    assert record.started_at == 1000.0
    assert record.duration == 2.5
