"""The real agent process with scripted probes and transitions, for tests with real keepalived.

`python -m harness.agentproc --config NODE.yaml --control DIR` runs the agent's real main loop,
FIFO reader, track file writer, keepalived adapter, guardian, single-instance lock and signal
handling (through `cli.agent.serve`). Only the probes and promote/demote are scripted through
files in DIR, so a test decides the verdict without Galera, containers or a cloud:

- `DIR/<probe>` (galera, containers, mount, floating-ip): absent or `ok` passes; any other text
  fails with that text as the detail. `quorum-lost ...` in `DIR/galera` also marks quorum lost.
- `DIR/transitions.log`: one line per promote or demote the agent ran (`promote` / `demote`).
- `DIR/alerts.log`: one line per alert, `EVENT<TAB>reason`.
- `DIR/fail-promote`: when present, promote raises with its text.

Everything else (paths, intervals, maintenance mode in the state directory) comes from the
node config, as in production.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mailcow_ha.adapters.keepalived import UNHEALTHY, HealthFile, KeepalivedProcess
from mailcow_ha.agent.main import Agent, AgentParts
from mailcow_ha.agent.wiring import build_guardian
from mailcow_ha.alert_events import Alerter, AlertEvent
from mailcow_ha.cli.agent import serve
from mailcow_ha.config import NodeConfig, load_config
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import MailcowHaError
from mailcow_ha.failover.transitions import CancelToken, TransitionOutcome, TransitionRunner
from mailcow_ha.health.monitor import HealthMonitor
from mailcow_ha.health.runner import Probe
from mailcow_ha.health.verdict import CONTAINERS, FLOATING_IP, GALERA, MOUNT, ProbeResult, Role
from mailcow_ha.logsetup import configure_logging

PROBE_NAMES = (GALERA, CONTAINERS, MOUNT, FLOATING_IP)
TRANSITIONS_LOG = "transitions.log"
ALERTS_LOG = "alerts.log"
FAIL_PROMOTE = "fail-promote"


class ScriptedFailure(MailcowHaError):
    """The failure of a promote that the test scripted to fail."""


class FileProbe:
    """A probe whose result is the content of one control file."""

    def __init__(self, name: str, path: Path, interval: float) -> None:
        self.name = name
        self.path = path
        self.interval = interval

    def check(self, role: Role, deadline: Deadline) -> ProbeResult:
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            text = "ok"
        ok = text == "ok"
        detail = f"{self.name} passes" if ok else text
        return ProbeResult(self.name, ok, detail, time.time(), 0.0, quorum_lost=text.startswith("quorum-lost"))


class FileAlerter:
    def __init__(self, path: Path) -> None:
        self.path = path

    def send(self, event: AlertEvent, reason: str, details: dict[str, str] | None = None) -> None:
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(f"{event}\t{reason}\n")

    def close(self, timeout: float = 0.0) -> bool:
        return True


def _transition(control: Path, action: str) -> Callable[[CancelToken], None]:
    def run(token: CancelToken) -> None:
        with (control / TRANSITIONS_LOG).open("a", encoding="utf-8") as stream:
            stream.write(f"{action}\n")
        failure = control / FAIL_PROMOTE
        if action == "promote" and failure.exists():
            raise ScriptedFailure(failure.read_text(encoding="utf-8").strip() or "scripted promote failure")

    return run


def scripted_builder(control: Path) -> Callable[[NodeConfig, Alerter], Agent]:
    """Return an agent builder that wires file-scripted probes and transitions into the real agent."""

    def build(config: NodeConfig, alerter: Alerter) -> Agent:
        health_file = HealthFile(config.paths.health_file)
        probes: list[Probe] = [FileProbe(name, control / name, config.health.galera_interval) for name in PROBE_NAMES]
        monitor = HealthMonitor(probes, config.health, initially_failing=health_file.read() == UNHEALTHY)

        def runner_factory(on_outcome: Callable[[TransitionOutcome], None]) -> TransitionRunner:
            return TransitionRunner(
                _transition(control, "promote"), _transition(control, "demote"), on_outcome=on_outcome
            )

        parts = AgentParts(
            config=config,
            monitor=monitor,
            runner_factory=runner_factory,
            health_file=health_file,
            keepalived=KeepalivedProcess(config.paths.keepalived_pid_file, config.paths.keepalived_data_file),
            alerter=alerter,
            guardian=build_guardian(config),
        )
        return Agent(parts)

    return build


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness.agentproc", description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--control", type=Path, required=True)
    args = parser.parse_args(argv)
    configure_logging("DEBUG")
    logging.getLogger("harness").setLevel(logging.DEBUG)
    config = load_config(args.config)
    control: Path = args.control
    return int(serve(config, build=scripted_builder(control), make_alerter=lambda _: FileAlerter(control / ALERTS_LOG)))


if __name__ == "__main__":
    sys.exit(main())
