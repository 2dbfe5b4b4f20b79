"""Switchover with real keepalived in network namespaces: the requested node, and only it, takes over.

Every node is `state BACKUP` with `nopreempt`, as rendered for production. The stand-in agents
(harness.switchoverlab) simulate promote and demote; elections, FAULT and advertisements are
keepalived's own.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.keepalived import keepalived_available
from harness.nodeconfig import node_config_dict, write_node_config
from harness.switchoverlab import CLUSTER, SECRET, SwitchoverLab
from mailcow_ha.cli import main
from mailcow_ha.errors import ExitCode, MailcowHaError, Refused
from mailcow_ha.ops.status import fetch_snapshots
from mailcow_ha.ops.switchover import (
    Coordinator,
    SwitchoverFailed,
    SwitchoverPlan,
    SwitchoverResult,
    SwitchoverTimings,
    plan_switchover,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(keepalived_available() is not None, reason=str(keepalived_available())),
]

TIMINGS = SwitchoverTimings(hold=30.0, fault=5.0, demote=10.0, election=8.0, promote=10.0)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[SwitchoverLab]:
    running = SwitchoverLab(tmp_path_factory.mktemp("switchover"), size=3)
    try:
        running.start()
        running.wait_master(15)
        yield running
    finally:
        running.close()


@pytest.fixture
def healthy_lab(lab: SwitchoverLab) -> SwitchoverLab:
    """The shared lab with every fault cleared and a single serving master."""
    for agent in lab:
        agent.failing = None
        agent.maintenance = False
        agent.demote_error = None
    lab.wait_master(15)
    lab.wait_states({agent.name: "BACKUP" for agent in lab if agent.vrrp_state != "MASTER"}, 10)
    return lab


def switchover(lab: SwitchoverLab, target: str | None):
    statuses = fetch_snapshots(lab.client, lab.members())
    plan = plan_switchover(statuses, target)
    return Coordinator(lab.client, requested_by="test", timings=TIMINGS).run(plan)


def test_switchover_elects_requested_node(healthy_lab):
    lab = healthy_lab
    master = lab.wait_master(5)
    target = next(agent for agent in reversed(lab.agents) if agent is not master)
    bystander = next(agent for agent in lab.agents if agent not in (master, target))
    started = time.monotonic()

    result = switchover(lab, target.name)

    assert lab.wait_master(10) is target
    assert target.promote_kinds[-1] == "switchover"
    assert result.plan.bystanders == (next(m for m in lab.members() if m.name == bystander.name),)
    lab.wait_states({master.name: "BACKUP", bystander.name: "BACKUP"}, 10)
    assert lab.timeline.max_serving_at_once() == 1
    gap = lab.timeline.gap(started)
    assert gap is not None
    assert result.interruption is not None
    assert set(result.steps) == {"prepare target", "hold standbys", "master demote", "election", "target promote"}


def test_higher_priority_node_does_not_take_back(healthy_lab):
    lab = healthy_lab
    lowest = lab.agents[-1]
    if lab.wait_master(5) is not lowest:
        switchover(lab, lowest.name)
    lab.wait_states({agent.name: "BACKUP" for agent in lab.agents[:-1]}, 10)

    time.sleep(3.5)

    assert lab.masters() == [lowest]
    assert lowest.serving


def test_switchover_without_target_picks_highest_priority(healthy_lab):
    lab = healthy_lab
    master = lab.wait_master(5)
    expected = min((agent for agent in lab if agent is not master), key=lambda agent: agent.vrrp.index)

    result = switchover(lab, None)

    assert result.plan.target.name == expected.name
    assert lab.wait_master(10) is expected


def test_unhealthy_target_is_refused(healthy_lab):
    lab = healthy_lab
    master = lab.wait_master(5)
    target = next(agent for agent in lab if agent is not master)
    target.failing = "containers: postfix-mailcow exited"
    lab.wait_states({target.name: "FAULT"}, 5)

    with pytest.raises(Refused) as caught:
        switchover(lab, target.name)

    assert f"{target.name} is FAULT, not BACKUP" in str(caught.value)
    assert lab.masters() == [master]


def test_target_failing_after_plan_changes_nothing(healthy_lab):
    """The target re-checks itself when asked to prepare, so a plan that went stale is refused."""
    lab = healthy_lab
    master = lab.wait_master(5)
    target = next(agent for agent in lab if agent is not master)
    plan = plan_switchover(fetch_snapshots(lab.client, lab.members()), target.name)
    target.maintenance = True

    with pytest.raises(Refused) as caught:
        Coordinator(lab.client, requested_by="test", timings=TIMINGS).run(plan)

    assert "maintenance mode" in str(caught.value)
    assert lab.masters() == [master]
    assert master.serving


def test_failed_demote_releases_holds(healthy_lab):
    lab = healthy_lab
    master = lab.wait_master(5)
    target = next(agent for agent in lab if agent is not master)
    master.demote_error = "unmount of /srv/mailcow-data failed: target is busy"

    with pytest.raises(SwitchoverFailed) as caught:
        switchover(lab, target.name)

    assert "target is busy" in str(caught.value)
    lab.wait_states({agent.name: "BACKUP" for agent in lab if agent is not master}, 10)
    assert lab.masters() == [master]
    for agent in lab:
        assert agent.participant.health_override() is None


def test_expired_hold_returns_node_to_election(healthy_lab):
    lab = healthy_lab
    master = lab.wait_master(5)
    bystander = next(agent for agent in lab if agent is not master)

    lab.client.call(
        bystander.address,
        "switchover-hold",
        {"id": "abandoned", "healthy": False, "reason": "coordinator died", "seconds": 1.0},
        timeout=5,
    )
    lab.wait_states({bystander.name: "FAULT"}, 5)

    lab.wait_states({bystander.name: "BACKUP"}, 5)
    assert bystander.participant.health_override() is None


def test_automatic_failover_still_works(healthy_lab):
    lab = healthy_lab
    master = lab.wait_master(5)

    master.failing = "containers: dovecot-mailcow exited"
    lab.wait_states({master.name: "FAULT"}, 5)
    new_master = lab.wait_master(15)

    assert new_master is not master
    assert new_master.promote_kinds[-1] == "failover"
    assert lab.timeline.max_serving_at_once() == 1
    master.failing = None


def test_concurrent_switchovers_one_proceeds(healthy_lab):
    lab = healthy_lab
    master = lab.wait_master(5)
    target = next(agent for agent in reversed(lab.agents) if agent is not master)
    plans = [plan_switchover(fetch_snapshots(lab.client, lab.members()), target.name) for _ in range(2)]
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def run(plan: SwitchoverPlan) -> None:
        coordinator = Coordinator(lab.client, requested_by="test", timings=TIMINGS)
        start.wait(5)
        try:
            outcomes.append(coordinator.run(plan))
        except MailcowHaError as error:
            outcomes.append(error)

    threads = [threading.Thread(target=run, args=(plan,)) for plan in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    results = [outcome for outcome in outcomes if isinstance(outcome, SwitchoverResult)]
    rejections = [outcome for outcome in outcomes if isinstance(outcome, Refused)]
    assert len(results) == 1, outcomes
    assert len(rejections) == 1, outcomes
    assert "takes part in switchover" in str(rejections[0])
    assert lab.wait_master(10) is target
    assert target.promote_kinds[-1] == "switchover"
    assert lab.timeline.max_serving_at_once() == 1
    lab.wait_states({agent.name: "BACKUP" for agent in lab if agent is not target}, 10)
    for agent in lab:
        assert agent.participant.health_override() is None


def write_lab_config(lab: SwitchoverLab, directory: Path) -> Path:
    """Write a node config for node 1 whose peers are the lab's stand-in agents."""
    first = lab.agents[0]
    document = node_config_dict(
        cluster=CLUSTER,
        node={"name": first.name, "index": first.vrrp.index, "private_ip": first.address},
        peers=[{"name": a.name, "index": a.vrrp.index, "private_ip": a.address} for a in lab.agents],
        status_api={"port": lab.port, "secret": SECRET},
        paths={"state_dir": str(directory / "state"), "run_dir": str(directory / "run")},
        deadlines={
            "transition_lock": 5.0,
            "containers_stop": 5.0,
            "holders_term": 1.0,
            "unmount": 5.0,
            "promote": 20.0,
        },
    )
    return write_node_config(directory / "node.yaml", document)


def test_cli_switchover_status_history(healthy_lab, tmp_path, capsys):
    lab = healthy_lab
    config = str(write_lab_config(lab, tmp_path))
    master = lab.wait_master(5)
    target = next(agent for agent in lab if agent is not master)

    switched = main(["--config", config, "switchover", "--to", target.name, "--yes", "--json"])
    result = json.loads(capsys.readouterr().out)

    assert switched == ExitCode.OK
    assert result["master"] == master.name
    assert result["target"] == target.name
    assert lab.wait_master(10) is target
    lab.wait_states({agent.name: "BACKUP" for agent in lab if agent is not target}, 10)

    status_code = main(["--config", config, "status", "--no-cloud", "--json"])
    status = json.loads(capsys.readouterr().out)

    assert status_code == ExitCode.OK
    assert status["master"] == target.name
    assert status["problems"] == []
    assert [member["name"] for member in status["members"]] == [agent.name for agent in lab]

    assert main(["--config", config, "status", "--no-cloud", "--prometheus"]) == ExitCode.OK
    metrics = capsys.readouterr().out
    assert f'mailcow_ha_vrrp_state{{node="{target.name}",state="MASTER"}} 1' in metrics
    assert 'mailcow_ha_has_master{cluster="switchover-lab"} 1' in metrics

    listed = main(["--config", config, "history"])
    history = capsys.readouterr().out

    assert listed == ExitCode.DEGRADED
    assert "no failovers or switchovers recorded" in history
    # Stand-in agents serve no history, so node 1's command reads its own (empty) file for node 1.
    assert f"history of {lab.agents[0].name} incomplete" not in history
    for agent in lab.agents[1:]:
        assert f"history of {agent.name} incomplete: history of {agent.name}" in history


def test_cli_switchover_rejected_exit_code(healthy_lab, tmp_path, capsys):
    lab = healthy_lab
    config = str(write_lab_config(lab, tmp_path))
    master = lab.wait_master(5)

    code = main(["--config", config, "switchover", "--to", master.name, "--yes"])

    assert code == ExitCode.REFUSED
    assert lab.masters() == [master]


def test_cli_switchover_needs_yes_without_terminal(healthy_lab, tmp_path, capsys, monkeypatch):
    lab = healthy_lab
    config = str(write_lab_config(lab, tmp_path))
    master = lab.wait_master(5)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))

    code = main(["--config", config, "switchover"])

    assert code == ExitCode.USAGE
    assert "add --yes" in capsys.readouterr().err
    assert lab.masters() == [master]
