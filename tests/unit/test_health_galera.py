"""The Galera probe: Synced passes, Donor/Desynced is tolerated for a while, no quorum fails everywhere."""

from __future__ import annotations

import pytest

from mailcow_ha.adapters.galera import GaleraStatus, parse_status
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import DatabaseError, DeadlineExceeded
from mailcow_ha.health.galera import GaleraProbe, evaluate_galera
from mailcow_ha.health.verdict import Role


def status(cluster_status: str = "Primary", local_state: str = "Synced", ready: bool = True) -> GaleraStatus:
    return GaleraStatus(ready, cluster_status, local_state, 3, "uuid", 10)


@pytest.mark.parametrize(
    ("reading", "desynced_for", "ok", "quorum_lost", "detail"),
    [
        (status(), None, True, False, "Synced, Primary, cluster size 3"),
        (status(local_state="Donor/Desynced"), 30.0, True, False, "Donor/Desynced for 30 s, tolerated up to 600 s"),
        (
            status(local_state="Donor/Desynced"),
            601.0,
            False,
            False,
            "Donor/Desynced for longer than the tolerated 600 s",
        ),
        (
            status("non-Primary", "Initialized", ready=False),
            None,
            False,
            True,
            "outside the primary component (cluster status non-Primary, wsrep_ready OFF)",
        ),
        (status("Disconnected", "Initialized", ready=False), None, False, True, None),
        (
            status(ready=False),
            None,
            False,
            False,
            "wsrep_ready is OFF in the primary component; the member rejects queries",
        ),
        (status(local_state="Joined"), None, False, False, "local state Joined, not Synced"),
    ],
)
def test_evaluate_galera(
    reading: GaleraStatus, desynced_for: float | None, ok: bool, quorum_lost: bool, detail: str | None
) -> None:
    evaluation = evaluate_galera(reading, desynced_for=desynced_for, tolerance=600.0)

    assert evaluation.ok is ok
    assert evaluation.quorum_lost is quorum_lost
    if detail is not None:
        assert evaluation.detail == detail


def test_parse_status_rows() -> None:
    rows = {
        "wsrep_ready": "ON",
        "wsrep_cluster_status": "Primary",
        "wsrep_local_state_comment": "Synced",
        "wsrep_cluster_size": "3",
        "wsrep_cluster_state_uuid": "abc",
        "wsrep_last_committed": "42",
    }

    assert parse_status(rows) == GaleraStatus(True, "Primary", "Synced", 3, "abc", 42)


def test_parse_status_without_wsrep() -> None:
    with pytest.raises(DatabaseError, match="runs without Galera"):
        parse_status({"wsrep_cluster_size": "0"})


class FakeClient:
    def __init__(self, readings: list[GaleraStatus | Exception]) -> None:
        self.readings = readings

    def status(self, deadline: Deadline) -> GaleraStatus:
        reading = self.readings.pop(0)
        if isinstance(reading, Exception):
            raise reading
        return reading


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_probe_tracks_desync_duration() -> None:
    clock = FakeClock()
    desynced = status(local_state="Donor/Desynced")
    client = FakeClient([desynced, desynced, desynced, status(), desynced])
    probe = GaleraProbe(client, interval=1.0, desync_tolerance=10.0, clock=clock)  # type: ignore[arg-type]
    deadline = Deadline.after("test", 5)

    results = []
    for advance in (0.0, 5.0, 6.0, 1.0, 1.0):
        clock.now += advance
        results.append(probe.check(Role.MASTER, deadline))

    assert [result.ok for result in results] == [True, True, False, True, True]
    assert results[2].detail == "Donor/Desynced for longer than the tolerated 10 s"
    assert results[4].detail.startswith("Donor/Desynced for 0 s")


def test_probe_failure_keeps_error() -> None:
    client = FakeClient([DeadlineExceeded("Galera status query on /s timed out (probe); the server may be hung")])
    probe = GaleraProbe(client, interval=1.0, desync_tolerance=10.0)  # type: ignore[arg-type]

    result = probe.check(Role.STANDBY, Deadline.after("test", 5))

    assert not result.ok
    assert not result.quorum_lost
    assert "timed out" in result.detail
    assert probe.last_status is None
    assert probe.last_error is not None
