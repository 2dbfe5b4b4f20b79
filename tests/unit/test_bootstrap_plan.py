"""Bootstrap and first-boot decisions, grastate.dat and `--wsrep-recover` parsing."""

from __future__ import annotations

import pytest

from mailcow_ha.errors import DatabaseError
from mailcow_ha.mailcow.bootstrap import (
    BootstrapAction,
    FirstBootAction,
    MemberReport,
    plan_bootstrap,
    plan_first_boot,
)
from mailcow_ha.mailcow.positions import (
    ZERO_UUID,
    MemberPosition,
    MemberState,
    parse_grastate,
    parse_recovered,
)

HISTORY = "5a0e4a52-3b7e-11ef-9d3f-0b3c1b4a8f21"


def stopped(node: str, seqno: int, *, safe: bool = False, uuid: str = HISTORY) -> MemberPosition:
    return MemberPosition(node, MemberState.STOPPED, uuid, seqno, safe, "grastate.dat")


def report(index: int, position: MemberPosition | None, error: str | None = None) -> MemberReport:
    return MemberReport(f"node-{index}", index, position, error)


def crashed_cluster(*seqnos: int) -> list[MemberReport]:
    return [report(index, stopped(f"node-{index}", seqno)) for index, seqno in enumerate(seqnos, start=1)]


def test_bootstrap_picks_highest_seqno():
    plan = plan_bootstrap(crashed_cluster(40, 42, 41))

    assert plan.action is BootstrapAction.BOOTSTRAP
    assert plan.node == "node-2"
    assert plan.joiners == ("node-1", "node-3")
    assert "highest seqno 42" in plan.reason


def test_bootstrap_tie_prefers_safe_to_bootstrap():
    reports = [report(1, stopped("node-1", 42)), report(2, stopped("node-2", 42, safe=True))]

    assert plan_bootstrap(reports).node == "node-2"


def test_bootstrap_tie_prefers_lowest_index():
    assert plan_bootstrap(crashed_cluster(42, 42, 42)).node == "node-1"


def test_bootstrap_rejects_unreachable_member():
    reports = [*crashed_cluster(40, 42), report(3, None, "connection refused")]

    plan = plan_bootstrap(reports)

    assert plan.action is BootstrapAction.REJECT
    assert "node-3 did not report a position" in plan.reason
    assert "node-1: stopped, seqno 40" in plan.reason
    assert "node-3: unreachable (connection refused)" in plan.reason


def test_force_overrides_unreachable_member():
    reports = [*crashed_cluster(40, 42), report(3, None, "timed out")]

    plan = plan_bootstrap(reports, force="node-2")

    assert plan.action is BootstrapAction.BOOTSTRAP
    assert plan.node == "node-2"
    assert "node-3 assumed not ahead" in plan.reason


def test_force_never_picks_older_member():
    reports = [*crashed_cluster(40, 42), report(3, None, "timed out")]

    plan = plan_bootstrap(reports, force="node-1")

    assert plan.action is BootstrapAction.REJECT
    assert "would discard newer transactions" in plan.reason


def test_force_of_equal_member_accepted():
    plan = plan_bootstrap(crashed_cluster(42, 42, 40), force="node-2")

    assert plan.node == "node-2"


@pytest.mark.parametrize("force", ["node-3", "node-9"])
def test_force_of_unusable_member_rejected(force):
    reports = [*crashed_cluster(40, 42), report(3, None, "timed out")]

    assert plan_bootstrap(reports, force=force).action is BootstrapAction.REJECT


def test_running_primary_means_join_only():
    running = MemberPosition("node-1", MemberState.PRIMARY, HISTORY, 50, False, "wsrep_last_committed", True)
    reports = [report(1, running), report(2, stopped("node-2", 49)), report(3, None, "timed out")]

    plan = plan_bootstrap(reports)

    assert plan.action is BootstrapAction.JOIN_RUNNING
    assert plan.node is None
    assert plan.joiners == ("node-2",)


def test_unknown_position_rejected():
    plan = plan_bootstrap(crashed_cluster(40, -1, 41))

    assert plan.action is BootstrapAction.REJECT
    assert "position of node-2 is unknown" in plan.reason


def test_diverged_histories_rejected():
    reports = [report(1, stopped("node-1", 40)), report(2, stopped("node-2", 90, uuid="1" * 8 + HISTORY[8:]))]

    plan = plan_bootstrap(reports)

    assert plan.action is BootstrapAction.REJECT
    assert "different cluster histories" in plan.reason


def test_non_primary_member_bootstrapped_in_place():
    lonely = MemberPosition("node-2", MemberState.NON_PRIMARY, HISTORY, 45, False, "wsrep_last_committed")
    reports = [report(1, stopped("node-1", 40)), report(2, lonely), report(3, stopped("node-3", 41))]

    plan = plan_bootstrap(reports)

    assert plan.node == "node-2"
    assert plan.joiners == ("node-1", "node-3")


def fresh(node: str) -> MemberPosition:
    return MemberPosition(node, MemberState.STOPPED, ZERO_UUID, -1, False, "grastate.dat")


def test_first_boot_node_one_bootstraps_new_cluster():
    peers = [report(2, fresh("node-2")), report(3, fresh("node-3"))]

    decision = plan_first_boot(fresh("node-1"), 1, peers)

    assert decision.action is FirstBootAction.BOOTSTRAP


def test_first_boot_other_nodes_wait():
    peers = [report(1, fresh("node-1")), report(3, fresh("node-3"))]

    assert plan_first_boot(fresh("node-2"), 2, peers).action is FirstBootAction.WAIT


def test_first_boot_joins_running_primary():
    running = MemberPosition("node-2", MemberState.PRIMARY, HISTORY, 7, False, "wsrep_last_committed", True)

    decision = plan_first_boot(fresh("node-1"), 1, [report(2, running), report(3, fresh("node-3"))])

    assert decision.action is FirstBootAction.JOIN
    assert "node-2 runs a primary component" in decision.reason


def test_first_boot_waits_for_unreachable_peer():
    decision = plan_first_boot(fresh("node-1"), 1, [report(2, fresh("node-2")), report(3, None, "timed out")])

    assert decision.action is FirstBootAction.WAIT
    assert "node-3" in decision.reason


def test_first_boot_rejects_peer_with_history():
    decision = plan_first_boot(fresh("node-1"), 1, [report(2, stopped("node-2", 12)), report(3, fresh("node-3"))])

    assert decision.action is FirstBootAction.REJECT
    assert "galera bootstrap" in decision.reason


def test_first_boot_rejects_local_history():
    decision = plan_first_boot(stopped("node-1", 3), 1, [report(2, fresh("node-2"))])

    assert decision.action is FirstBootAction.REJECT


def test_first_boot_waits_for_running_peer():
    lonely = MemberPosition("node-2", MemberState.NON_PRIMARY, ZERO_UUID, -1, False, "wsrep_last_committed")

    assert plan_first_boot(fresh("node-1"), 1, [report(2, lonely)]).action is FirstBootAction.WAIT


def test_parse_grastate_after_ordered_stop():
    text = f"# GALERA saved state\nversion: 2.1\nuuid:    {HISTORY}\nseqno:   1234\nsafe_to_bootstrap: 1\n"

    state = parse_grastate(text)

    assert state.uuid == HISTORY
    assert state.seqno == 1234
    assert state.safe_to_bootstrap is True


def test_parse_grastate_rejects_bad_seqno():
    with pytest.raises(DatabaseError, match="invalid seqno"):
        parse_grastate("seqno: twelve\n")


def test_parse_recovered_takes_last_line():
    log_text = f"[Note] WSREP: Recovered position: {HISTORY}:-1\n[Note] WSREP: Recovered position: {HISTORY}:77\n"

    assert parse_recovered(log_text) == (HISTORY, 77)
    assert parse_recovered("nothing here") is None


def test_position_round_trips_as_dict():
    position = stopped("node-1", 9, safe=True)

    assert MemberPosition.from_dict(position.to_dict()) == position


def test_position_from_malformed_dict_rejected():
    with pytest.raises(DatabaseError, match="malformed"):
        MemberPosition.from_dict({"node": "node-1", "state": "sleeping"})


def test_member_without_data_needs_force():
    reports = [report(1, stopped("node-1", 40)), report(2, stopped("node-2", 42)), report(3, fresh("node-3"))]

    plan = plan_bootstrap(reports)

    assert plan.action is BootstrapAction.REJECT
    assert "node-3 reported no Galera data at all" in plan.reason
    assert "rerun with --force" in plan.reason
    assert "wsrep-recover" not in plan.reason


def test_force_lets_empty_member_join():
    reports = [report(1, stopped("node-1", 40)), report(2, stopped("node-2", 42)), report(3, fresh("node-3"))]

    plan = plan_bootstrap(reports, force="node-2")

    assert plan.action is BootstrapAction.BOOTSTRAP
    assert plan.node == "node-2"
    assert plan.joiners == ("node-1", "node-3")
    assert "node-3 without data join as new members because of --force" in plan.reason


def test_force_never_bootstraps_empty_member():
    reports = [report(1, stopped("node-1", 40)), report(2, fresh("node-2"))]

    plan = plan_bootstrap(reports, force="node-2")

    assert plan.action is BootstrapAction.REJECT
    assert "node-2, which has no Galera data" in plan.reason


def test_force_still_rejects_older_member_among_empty():
    reports = [report(1, stopped("node-1", 40)), report(2, stopped("node-2", 42)), report(3, fresh("node-3"))]

    plan = plan_bootstrap(reports, force="node-1")

    assert plan.action is BootstrapAction.REJECT
    assert "would discard newer transactions" in plan.reason


def test_all_members_empty_points_to_first_boot():
    plan = plan_bootstrap([report(1, fresh("node-1")), report(2, fresh("node-2"))], force="node-1")

    assert plan.action is BootstrapAction.REJECT
    assert "galera first-boot" in plan.reason
