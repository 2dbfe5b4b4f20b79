"""`mailcow-ha promote`, `demote` and `breaker status|reset`: the failover core by hand.

promote and demote take the same transition lock as the agent, so they never run at the same
time as an automatic transition. They are meant for recovery, with the agent stopped or its
node in maintenance. While the agent runs, keepalived decides the master, and
`mailcow-ha switchover` moves it on purpose.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from mailcow_ha.adapters.alerts import AppriseAlerter
from mailcow_ha.alert_events import NoAlerter
from mailcow_ha.cli.argtypes import non_negative_seconds
from mailcow_ha.config import NodeConfig, load_config
from mailcow_ha.errors import ExitCode
from mailcow_ha.failover.breaker import CircuitBreaker
from mailcow_ha.failover.history import FailoverRecord, HistoryStore, RecordKind
from mailcow_ha.failover.lock import TransitionLock
from mailcow_ha.failover.transitions import CancelToken
from mailcow_ha.failover.wiring import Failover, build_failover

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    promote = subparsers.add_parser(
        "promote",
        help="make this node the master: move the floating IPs and the shared volume here, start mailcow",
        description=(
            "Promote this node by hand (for recovery with the agent stopped). Takes the transition lock, "
            "checks the circuit breaker, moves the floating IPs and the shared volume here, mounts it and "
            "starts mailcow's containers. On failure it releases what it took and exits non-zero: 1 failed, "
            "5 rejected by a safety rule (breaker, marker, project data), 6 interrupted by a signal."
        ),
    )
    promote.add_argument(
        "--ignore-breaker",
        action="store_true",
        help="promote even if the circuit breaker is open (the breaker is not reset)",
    )
    _add_lock_timeout(promote)
    promote.set_defaults(handler=run_promote)

    demote = subparsers.add_parser(
        "demote",
        help="stop mailcow's containers and unmount the shared volume on this node",
        description=(
            "Demote this node by hand: stop the compose project's containers, stop processes still using "
            "the shared volume (TERM, then KILL), sync and unmount. Exits 1 when the volume stays mounted."
        ),
    )
    _add_lock_timeout(demote)
    demote.set_defaults(handler=run_demote)

    breaker = subparsers.add_parser("breaker", help="show or reset the circuit breaker")
    actions = breaker.add_subparsers(dest="breaker_command", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status",
        help=(
            "show whether the next automatic failover onto this node would be rejected (open), "
            "and whether it rejected one within the window (tripped, exit 4)"
        ),
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(handler=run_breaker_status)
    reset = actions.add_parser("reset", help="close the breaker: earlier failovers no longer count")
    reset.set_defaults(handler=run_breaker_reset)


def _add_lock_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lock-timeout",
        type=non_negative_seconds,
        default=None,
        metavar="SECONDS",
        help="seconds to wait for a running transition to finish, 0 to give up at once "
        "(default: deadlines.transition_lock)",
    )


@contextmanager
def _cancel_on_signals(token: CancelToken) -> Iterator[None]:
    """Turn SIGTERM and SIGINT into a cancellation, so that the transition stops at its next step."""

    def handle(signal_number: int, frame: FrameType | None) -> None:
        name = signal.Signals(signal_number).name
        log.warning("%s received; stopping at the next step", name)
        token.cancel(f"{name} received")

    previous = {number: signal.signal(number, handle) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def _locked_failover(
    config: NodeConfig, action: str, lock_timeout: float | None
) -> Iterator[tuple[Failover, CancelToken]]:
    alerter = AppriseAlerter.from_config(config)
    failover = build_failover(config, alerter)
    token = CancelToken(f"mailcow-ha {action} run by hand")
    lock = TransitionLock.in_run_dir(config.paths.run_dir)
    timeout = config.deadlines.transition_lock if lock_timeout is None else lock_timeout
    try:
        with _cancel_on_signals(token):
            lock.acquire(action, timeout, cancelled=token.check, sleep=token.wait)
            with lock:
                yield failover, token
    finally:
        failover.close()
        if not alerter.flush(config.alerts.timeout + 1.0):
            log.warning("some alerts were not sent before exit")
        alerter.close()


def run_promote(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    with _locked_failover(config, "promote", args.lock_timeout) as (failover, token):
        record = failover.promoter.run(token, kind=RecordKind.MANUAL_PROMOTE, ignore_breaker=args.ignore_breaker)
    print(f"promote of {config.node.name} succeeded: {_format_steps(record)}", file=sys.stdout)
    return ExitCode.OK


def run_demote(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    with _locked_failover(config, "demote", args.lock_timeout) as (failover, token):
        done = failover.demoter.run(token, reason="mailcow-ha demote run by hand")
    summary = "; ".join(done) if done else "nothing was running or mounted"
    print(f"demote of {config.node.name} succeeded: {summary}", file=sys.stdout)
    return ExitCode.OK


def _breaker(config: NodeConfig) -> tuple[CircuitBreaker, AppriseAlerter]:
    alerter = AppriseAlerter.from_config(config)
    history = HistoryStore(config.paths.state_dir)
    return CircuitBreaker(config.paths.state_dir, config.breaker, history, alerter), alerter


def run_breaker_status(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    # A read-only command: no alert sender (it would read and rewrite the alert state file), and
    # corrupt files stay where they are.
    history = HistoryStore(config.paths.state_dir)
    breaker = CircuitBreaker(config.paths.state_dir, config.breaker, history, NoAlerter())
    status = breaker.status(move_corrupt=False)
    if args.json:
        print(json.dumps(status.to_json(), indent=2), file=sys.stdout)
    else:
        word = "closed"
        if status.tripped:
            word = "tripped"
        elif status.open:
            word = "open"
        print(f"circuit breaker: {word}", file=sys.stdout)
        print(f"  {status.reason}", file=sys.stdout)
        if status.tripped_at is not None:
            print(f"  last tripped: {_when(status.tripped_at)}", file=sys.stdout)
        if status.reset_at is not None:
            print(f"  last reset: {_when(status.reset_at)}", file=sys.stdout)
        for problem in status.problems:
            print(f"  problem: {problem}", file=sys.stdout)
    # Open after a failover onto this node is normal; a refused failover needs an operator.
    return ExitCode.DEGRADED if status.tripped else ExitCode.OK


def run_breaker_reset(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    breaker, alerter = _breaker(config)
    try:
        breaker.reset()
    finally:
        alerter.close()
    print(f"circuit breaker of {config.node.name} reset; earlier failovers no longer count", file=sys.stdout)
    return ExitCode.OK


def _format_steps(record: FailoverRecord) -> str:
    steps = ", ".join(f"{step.name} {step.seconds:.2f} s" for step in record.steps)
    return f"{record.duration or 0.0:.2f} s ({steps})"


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(timestamp))
