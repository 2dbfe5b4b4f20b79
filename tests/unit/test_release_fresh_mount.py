"""The release wait trusts a holder's "unmounted" only from a mount table read after its last chance to mount.

The holder's agent reports the mount flag of its mount probe, which reads the mount table every
`health.system_interval` seconds. A promote mounts between two reads, so a holder whose promote
runs, or ran since the last read, can report "unmounted" with the volume mounted.
"""

from __future__ import annotations

from mailcow_ha.failover.release import Holder, HolderReport, ReleaseOutcome, decide_release, unmount_report_problem

HOLDER = Holder(202, "mailcow-2", "10.0.1.12")


def unmounted(**changes: object) -> HolderReport:
    values: dict[str, object] = {
        "node": "mailcow-2",
        "mounted": False,
        "vrrp_state": "BACKUP",
        "transition_running": None,
        "mount_read_at": 1000.0,
    }
    values.update(changes)
    return HolderReport(**values)  # type: ignore[arg-type]


def test_running_promote_waited_for() -> None:
    answer = unmounted(vrrp_state="MASTER", transition_running="MASTER", transition_started_at=990.0)

    decision = decide_release(202, HOLDER, answer, expired=False)

    assert decision.wait
    assert "promote" in decision.reason


def test_read_before_demote_start_waits() -> None:
    # A superseded promote mounted the volume after the last read; the demote that follows has not unmounted it yet.
    answer = unmounted(vrrp_state="FAULT", transition_running="FAULT", transition_started_at=1000.5)

    decision = decide_release(202, HOLDER, answer, expired=False)

    assert decision.wait
    assert "FAULT transition started" in decision.reason


def test_read_during_demote_trusted() -> None:
    answer = unmounted(vrrp_state="FAULT", transition_running="FAULT", transition_started_at=999.0)

    decision = decide_release(202, HOLDER, answer, expired=False)

    assert decision.outcome is ReleaseOutcome.RELEASED


def test_read_before_transition_end_waits() -> None:
    answer = unmounted(vrrp_state="MASTER", last_state="MASTER", last_outcome="ok", last_finished_at=1001.0)

    decision = decide_release(202, HOLDER, answer, expired=False)

    assert decision.wait
    assert "MASTER" in decision.reason


def test_no_mount_read_waits() -> None:
    # An agent that just started, or whose role just changed, has no mount probe result yet.
    decision = decide_release(202, HOLDER, unmounted(vrrp_state="UNKNOWN", mount_read_at=None), expired=False)

    assert decision.wait
    assert "not read its mount table" in decision.reason


def test_read_after_transition_trusted() -> None:
    answer = unmounted(vrrp_state="BACKUP", last_state="BACKUP", last_outcome="ok", last_finished_at=999.0)

    assert unmount_report_problem(answer) is None
    assert decide_release(202, HOLDER, answer, expired=False).outcome is ReleaseOutcome.RELEASED


def test_stale_unmount_times_out() -> None:
    answer = unmounted(transition_running="MASTER")

    decision = decide_release(202, HOLDER, answer, expired=True)

    assert decision.outcome is ReleaseOutcome.TIMED_OUT
    assert "unmounted" in decision.reason
