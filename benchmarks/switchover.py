"""Measure how long mail is not served in a switchover, and in an automatic failover, on real keepalived.

Three keepalived daemons run in network namespaces with the production keepalived.conf
(`state BACKUP`, `nopreempt`, unicast). Stand-in agents (tests/harness/switchoverlab.py)
simulate promote and demote with fixed durations, the same in both cases, so only the
orchestration differs:
- switchover: `mailcow-ha switchover`'s coordinator moves the service to the lowest-priority
  standby; the gap runs from the master's demote start to the target serving;
- automatic failover: the master's health fails at t0 (the service is broken from then), its
  agent reports it after `--detection` seconds, keepalived elects another node; the gap runs
  from t0 to the new master serving.

    .venv/bin/python benchmarks/switchover.py [--runs 5] [--promote 0.3] [--demote 0.2] [--detection 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness.keepalived import keepalived_available
from harness.switchoverlab import SwitchoverLab
from mailcow_ha.ops.status import fetch_snapshots
from mailcow_ha.ops.switchover import Coordinator, SwitchoverTimings, plan_switchover

TIMINGS = SwitchoverTimings(hold=60.0, fault=5.0, demote=20.0, election=10.0, promote=20.0)


def settle(lab: SwitchoverLab) -> None:
    for agent in lab:
        agent.failing = None
    lab.wait_master(20)
    lab.wait_states({agent.name: "BACKUP" for agent in lab if agent.vrrp_state != "MASTER"}, 20)
    time.sleep(1.0)


def run_switchover(lab: SwitchoverLab) -> float:
    master = lab.wait_master(10)
    target = next(agent for agent in reversed(lab.agents) if agent is not master)
    plan = plan_switchover(fetch_snapshots(lab.client, lab.members()), target.name)
    started = time.monotonic()
    Coordinator(lab.client, requested_by="benchmark", timings=TIMINGS).run(plan)
    gap = lab.timeline.gap(started)
    assert gap is not None and lab.wait_master(10) is target
    return gap


def run_failover(lab: SwitchoverLab, detection: float) -> float:
    master = lab.wait_master(10)
    broken_at = time.monotonic()
    time.sleep(detection)
    master.failing = "benchmark: simulated container crash"
    lab.wait_states({master.name: "FAULT"}, 10)
    new_master = lab.wait_master(20)
    assert new_master is not master
    serving = [moment for moment, node, event in lab.timeline.since(broken_at) if event == "serving"]
    return serving[0] - broken_at


def describe(label: str, values: list[float]) -> str:
    return f"{label:<20} median {statistics.median(values):.2f} s  min {min(values):.2f} s  max {max(values):.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--promote", type=float, default=0.3, help="simulated promote duration in seconds")
    parser.add_argument("--demote", type=float, default=0.2, help="simulated demote duration in seconds")
    parser.add_argument("--detection", type=float, default=0.5, help="failure detection delay in seconds")
    parser.add_argument("--advert-int", type=float, default=1.0)
    args = parser.parse_args()
    problem = keepalived_available()
    if problem is not None:
        print(f"cannot run: {problem}", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="mcha-switchover-bench-") as directory:
        lab = SwitchoverLab(
            Path(directory),
            size=3,
            advert_int=args.advert_int,
            promote_seconds=args.promote,
            demote_seconds=args.demote,
        )
        try:
            lab.start()
            settle(lab)
            switchovers, failovers = [], []
            for _ in range(args.runs):
                switchovers.append(run_switchover(lab))
                settle(lab)
                failovers.append(run_failover(lab, args.detection))
                settle(lab)
            assert lab.timeline.max_serving_at_once() == 1
        finally:
            lab.close()

    print(
        f"3 nodes, advert_int {args.advert_int:g} s, simulated promote {args.promote:g} s, "
        f"demote {args.demote:g} s, detection {args.detection:g} s, {args.runs} runs each"
    )
    print(describe("switchover", switchovers))
    print(describe("automatic failover", failovers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
