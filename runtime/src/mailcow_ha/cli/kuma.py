"""`mailcow-ha kuma plan|sync`: external monitors in Uptime Kuma from the stack outputs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from mailcow_ha.cli.argtypes import int_between, positive_seconds
from mailcow_ha.errors import ConfigError, ExitCode
from mailcow_ha.mailcow import kuma

URL_ENV = "KUMA_URL"
USERNAME_ENV = "KUMA_USERNAME"
PASSWORD_ENV = "KUMA_PASSWORD"  # noqa: S105 (the name of an environment variable, not a password)
MIN_INTERVAL = 20
MAX_INTERVAL = 86400
"""The check intervals in seconds that Uptime Kuma accepts."""


def register(subparsers: Any) -> None:
    group = subparsers.add_parser("kuma", help="external monitoring in Uptime Kuma from the stack outputs")
    commands = group.add_subparsers(dest="kuma_command", metavar="SUBCOMMAND", required=True)

    plan = commands.add_parser("plan", help="print the monitors that sync would create or update")
    _add_plan_arguments(plan)
    plan.set_defaults(handler=run_plan)

    sync = commands.add_parser(
        "sync",
        help="create or update the monitors (and a notification channel) in Uptime Kuma",
        description=(
            "Read `pulumi stack output --json` and make Uptime Kuma contain the cluster's monitors: HTTPS on the "
            f"mail hostname, SMTP/SMTPS/submission/IMAPS on the floating IP and a ping per node. The password is "
            f"read from ${PASSWORD_ENV} or --password-file, never from the command line. Running it again "
            "changes nothing unless the outputs changed."
        ),
    )
    _add_plan_arguments(sync)
    sync.add_argument("--url", default=os.environ.get(URL_ENV), help=f"Uptime Kuma's URL (default: ${URL_ENV})")
    sync.add_argument(
        "--username", default=os.environ.get(USERNAME_ENV, "admin"), help=f"login (default: ${USERNAME_ENV} or admin)"
    )
    sync.add_argument("--password-file", type=Path, help=f"file containing the password (default: ${PASSWORD_ENV})")
    sync.add_argument(
        "--notification",
        type=Path,
        metavar="FILE",
        help='JSON file of a notification channel to attach to every monitor: {"name", "type", provider fields}',
    )
    sync.add_argument("--prune", action="store_true", help="delete monitors of this cluster that are no longer planned")
    sync.add_argument(
        "--timeout", type=positive_seconds, default=10.0, help="seconds to wait for each reply (default: 10)"
    )
    sync.set_defaults(handler=run_sync)


def _add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outputs", type=Path, required=True, help="file with `pulumi stack output --json`")
    parser.add_argument(
        "--interval",
        type=int_between(MIN_INTERVAL, MAX_INTERVAL),
        default=60,
        help=f"seconds between checks, {MIN_INTERVAL} to {MAX_INTERVAL} (default: 60)",
    )


def run_plan(args: argparse.Namespace) -> ExitCode:
    outputs = kuma.load_outputs(args.outputs)
    for spec in kuma.plan_monitors(outputs, interval=_interval(args)):
        target = spec.url or f"{spec.hostname}" + (f":{spec.port}" if spec.port else "")
        print(f"{spec.name}: {spec.type} {target} every {spec.interval} s")
    return ExitCode.OK


def run_sync(args: argparse.Namespace) -> ExitCode:
    from mailcow_ha.mailcow import kuma_client  # noqa: PLC0415 (socketio loads only when a sync runs)

    outputs = kuma.load_outputs(args.outputs)
    notification = kuma.load_notification(args.notification) if args.notification else None
    if not args.url:
        raise ConfigError(f"no Uptime Kuma URL; pass --url or set ${URL_ENV}")
    password = _password(args.password_file)
    planned = kuma.plan_monitors(outputs, interval=_interval(args))
    with kuma_client.connect(args.url, args.username, password, timeout=args.timeout) as api:
        report = kuma.sync(api, planned, kuma.monitor_prefix(outputs), notification=notification, prune=args.prune)
    print(
        f"Uptime Kuma at {args.url}: {report.count(kuma.ChangeKind.CREATE)} created, "
        f"{report.count(kuma.ChangeKind.UPDATE)} updated, {report.count(kuma.ChangeKind.UNCHANGED)} unchanged, "
        f"{len(report.pruned)} deleted, {report.count(kuma.ChangeKind.STALE) - len(report.pruned)} stale kept"
    )
    return ExitCode.OK


def _interval(args: argparse.Namespace) -> int:
    return int(args.interval)


def _password(path: Path | None) -> str:
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(f"password file {path} could not be read: {error.strerror}") from None
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        raise ConfigError(f"no Uptime Kuma password; set ${PASSWORD_ENV} or pass --password-file")
    return password
