"""The cluster-in-a-box demonstration that `make demo` runs.

Brings a 3-node lab up and shows the elected master and a client sending mail through the
floating IP. Then it crashes a critical container on the master and prints the failover's
timeline, powers the new master's node off and prints the second timeline, and takes the lab
down. Returns 0 only if every invariant held throughout.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from lab import faults
from lab.cluster import Lab, LabOptions
from lab.scenario import Scenario
from lab.shell import LabError

log = logging.getLogger(__name__)

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(options: LabOptions) -> int:
    """Run the whole demonstration; return the process exit status."""
    lab = Lab.create(options)
    _say(f"== bringing up lab {lab.lab_id}: {options.nodes} nodes, the Pulumi program, Galera, podman, keepalived")
    try:
        lab.up()
        for phase, seconds in lab.timings.items():
            _say(f"   {phase:<24} {seconds:6.2f} s")
        return _demonstrate(lab)
    except (LabError, AssertionError) as error:
        _say(f"DEMO FAILED: {error}")
        Scenario.keep_lab_logs(lab, ARTIFACTS / "demo")
        _say(f"logs kept in {ARTIFACTS / 'demo'}")
        return 1
    finally:
        problems = lab.down()
        _say(f"== lab {lab.lab_id} taken down" + (f" with problems: {problems}" if problems else ""))


def _demonstrate(lab: Lab) -> int:
    with Scenario(lab, "demo", ARTIFACTS) as scenario:
        master = scenario.wait_for_service()
        address = lab.floating_addresses()[0]
        served = [attempt for attempt in scenario.mail.attempts() if attempt.ok]
        _say(f"== {master.name} is MASTER; a client sends mail to {address}:25 ({len(served)} accepted so far)")
        for line in lab.status()["lines"]:
            _say(line)

        _say(f"== crashing postfix-mailcow on {master.name}")
        fault_at = scenario.inject("container crash", lambda: faults.crash_container(master))
        second = scenario.wait_for_new_master(master, timeout=90)
        time.sleep(1.0)
        first_timeline = scenario.timeline(
            "== timeline 1: critical container crash", "postfix-mailcow killed", fault_at, master
        )
        _say(first_timeline.render())

        _say(f"== powering off {second.name}")
        power_at = scenario.inject("power off", lambda: faults.power_off(lab, second))
        third = scenario.wait_for_new_master(second, timeout=120)
        time.sleep(1.0)
        second_timeline = scenario.timeline("== timeline 2: node power-off", "power cut", power_at, second)
        _say(second_timeline.render())

        problems = [f"{violation.rule}: {violation.detail}" for violation in scenario.violations()]
        problems += [f"mail lost: {key}" for key in scenario.missing_mails(power_at, third)]
        problems += [f"database row lost: {key}" for key in scenario.missing_rows(power_at)]
        mails = len(scenario.mail.acknowledged())
        rows = len(scenario.writer.acknowledged())
        _say(f"== {mails} mails and {rows} database rows acknowledged; all checked after the faults")
        if problems:
            _say("== INVARIANTS BROKEN:\n  " + "\n  ".join(problems[:20]))
            scenario.keep_artifacts("an invariant was broken")
            return 1
        _say("== every invariant held: one mount, one serving node, the floating IP on the master, no mail or row lost")
        return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_demo(LabOptions(nodes=3))


if __name__ == "__main__":
    sys.exit(main())
