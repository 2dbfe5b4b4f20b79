"""`mailcow-ha agent run` and the `mailcow-ha-agent` console script: the resident node agent.

systemd runs the agent with `Restart=always`. It exits 0 after SIGTERM or SIGINT, 3 when the node
config is invalid, and 5 when another agent already runs on this node.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from mailcow_ha import __version__
from mailcow_ha.adapters.alerts import AppriseAlerter
from mailcow_ha.agent.guardian import set_process_name
from mailcow_ha.agent.main import Agent
from mailcow_ha.agent.process import AgentLock
from mailcow_ha.agent.wiring import build_agent
from mailcow_ha.alert_events import Alerter
from mailcow_ha.config import NodeConfig, load_config
from mailcow_ha.errors import ExitCode, MailcowHaError
from mailcow_ha.logsetup import configure_logging
from mailcow_ha.render.keepalived import DEFAULT_AGENT_PROCESS

log = logging.getLogger(__name__)

LOCK_TIMEOUT = 10.0
"""Seconds a starting agent waits for the previous one to release the agent lock."""
ALERT_FLUSH_TIMEOUT = 5.0


def register(subparsers: Any) -> None:
    agent = subparsers.add_parser("agent", help="the resident node agent")
    actions = agent.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run",
        help="run the agent in the foreground until SIGTERM (systemd runs it as mailcow-ha-agent)",
        description=(
            "Run the node agent: read keepalived's transitions from its FIFO, run promote and demote one at a "
            "time, probe the node's health and write the verdict into keepalived's track file, serve the status "
            "API on the private address, and learn new cluster members from the Hetzner API."
        ),
    )
    run.set_defaults(handler=run_agent)


def run_agent(args: argparse.Namespace) -> ExitCode:
    return serve(load_config(args.config))


AgentBuilder = Callable[[NodeConfig, Alerter], Agent]


def serve(
    config: NodeConfig,
    *,
    build: AgentBuilder = build_agent,
    make_alerter: Callable[[NodeConfig], ClosableAlerter] = AppriseAlerter.from_config,
) -> ExitCode:
    """Run the agent for `config` until SIGTERM or SIGINT.

    `build` and `make_alerter` default to the production wiring; test harnesses pass their own.
    """
    set_process_name(config.keepalived.agent_process or DEFAULT_AGENT_PROCESS)
    lock = AgentLock(config.paths.run_dir)
    lock.acquire(LOCK_TIMEOUT)
    alerter = make_alerter(config)
    try:
        agent = build(config, alerter)

        def request_stop(signum: int, frame: FrameType | None) -> None:
            log.info("received %s", signal.Signals(signum).name)
            agent.stop()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        agent.run()
    finally:
        if not alerter.close(ALERT_FLUSH_TIMEOUT):
            log.warning("some alerts were not sent before the agent stopped")
        lock.release()
    return ExitCode.OK


class ClosableAlerter(Alerter, Protocol):
    """An alerter that can flush what it queued before the process exits."""

    def close(self, timeout: float = ...) -> bool: ...


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mailcow-ha-agent` console script."""
    parser = argparse.ArgumentParser(prog="mailcow-ha-agent", description="The mailcow-ha node agent.")
    parser.add_argument("--version", action="version", version=f"mailcow-ha {__version__}")
    parser.add_argument("--config", type=Path, default=None, help="node config file (default: $MAILCOW_HA_CONFIG)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return int(serve(load_config(args.config)))
    except MailcowHaError as error:
        log.error("%s", error)
        return int(error.exit_code)


if __name__ == "__main__":
    sys.exit(main())
