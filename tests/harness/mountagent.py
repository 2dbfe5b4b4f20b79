"""The real agent process whose promote mounts a real block device, for tests of long mounts.

`python -m harness.mountagent --config NODE.yaml --control DIR --device DEV` runs the agent's
real main loop, FIFO reader, track file, guardian and signal handling (through
`cli.agent.serve`), like `harness.agentproc`. Promote mounts DEV on `paths.mount_point` with
`adapters.blockdev.mount`, as the failover core does, and demote unmounts it. Everything else
comes from the node config; the probes are scripted through files in DIR (see harness.agentproc).

Start it in the test's own mount namespace (`harness.loopdev.private_mount_namespace`), so the
mount stays out of every other namespace.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.agentproc import ALERTS_LOG, PROBE_NAMES, TRANSITIONS_LOG, FileAlerter, FileProbe
from mailcow_ha.adapters import blockdev
from mailcow_ha.adapters.keepalived import UNHEALTHY, HealthFile, KeepalivedProcess
from mailcow_ha.agent.main import Agent, AgentParts
from mailcow_ha.agent.wiring import build_guardian
from mailcow_ha.alert_events import Alerter
from mailcow_ha.cli.agent import serve
from mailcow_ha.config import NodeConfig, load_config
from mailcow_ha.failover.transitions import CancelToken, TransitionOutcome, TransitionRunner
from mailcow_ha.health.monitor import HealthMonitor
from mailcow_ha.health.runner import Probe
from mailcow_ha.logsetup import configure_logging

MOUNT_TIMEOUT = 60.0


def _log_transition(control: Path, line: str) -> None:
    with (control / TRANSITIONS_LOG).open("a", encoding="utf-8") as stream:
        stream.write(f"{line}\n")


def mount_transitions(
    control: Path, device: Path, mount_point: Path
) -> tuple[Callable[[CancelToken], None], Callable[[CancelToken], None]]:
    """Return a promote that mounts `device` and a demote that unmounts it, both logged to the control dir."""
    number = blockdev.block_device(device).number

    def mounted() -> bool:
        entries = blockdev.mounts_at(mount_point, blockdev.read_mountinfo())
        return bool(entries) and entries[-1].device_number == number

    def promote(token: CancelToken) -> None:
        _log_transition(control, "promote")
        token.enter_step("mount")
        if not mounted():
            started = time.monotonic()
            blockdev.mount(
                blockdev.block_device(device), mount_point, fstype="ext4", options="noatime", timeout=MOUNT_TIMEOUT
            )
            _log_transition(control, f"mounted after {time.monotonic() - started:.1f} s")
        token.enter_step("after the mount")

    def demote(token: CancelToken) -> None:
        _log_transition(control, "demote")
        if mounted():
            blockdev.unmount(mount_point, timeout=MOUNT_TIMEOUT)
            _log_transition(control, "unmounted")

    return promote, demote


def mount_builder(control: Path, device: Path) -> Callable[[NodeConfig, Alerter], Agent]:
    def build(config: NodeConfig, alerter: Alerter) -> Agent:
        health_file = HealthFile(config.paths.health_file)
        probes: list[Probe] = [FileProbe(name, control / name, config.health.galera_interval) for name in PROBE_NAMES]
        monitor = HealthMonitor(probes, config.health, initially_failing=health_file.read() == UNHEALTHY)
        promote, demote = mount_transitions(control, device, config.paths.mount_point)

        def runner_factory(on_outcome: Callable[[TransitionOutcome], None]) -> TransitionRunner:
            return TransitionRunner(promote, demote, on_outcome=on_outcome)

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
    parser = argparse.ArgumentParser(prog="harness.mountagent", description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--control", type=Path, required=True)
    parser.add_argument("--device", type=Path, required=True, help="the block device that promote mounts")
    args = parser.parse_args(argv)
    configure_logging("DEBUG")
    logging.getLogger("harness").setLevel(logging.DEBUG)
    config = load_config(args.config)
    control: Path = args.control
    return int(
        serve(
            config,
            build=mount_builder(control, args.device),
            make_alerter=lambda _: FileAlerter(control / ALERTS_LOG),
        )
    )


if __name__ == "__main__":
    sys.exit(main())
