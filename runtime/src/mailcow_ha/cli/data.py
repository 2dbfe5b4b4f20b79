"""`mailcow-ha init-data` and `mailcow-ha compose-override`: prepare the volume and mailcow's compose file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mailcow_ha.cli.argtypes import int_between
from mailcow_ha.config import load_config
from mailcow_ha.errors import ExitCode
from mailcow_ha.mailcow import override_file
from mailcow_ha.mailcow.initdata import InitRequest, init_data

MAX_MMP_INTERVAL = 300
"""Maximum ext4 multi-mount protection update interval, in seconds, that `init-data` accepts."""


def register(subparsers: Any) -> None:
    init = subparsers.add_parser(
        "init-data",
        help="prepare the new shared volume once: multi-mount protection, marker, directory layout",
        description=(
            "Turn on ext4 multi-mount protection on the shared volume, write the marker that promote requires "
            "and create mailcow's directory layout. Run once, on node 1, with the volume attached and unmounted. "
            "Rejects a volume of another cluster or one that already contains data; never formats."
        ),
    )
    init.add_argument("--device", type=Path, help="the volume's device (default: from the node config)")
    init.add_argument(
        "--mmp-interval",
        type=int_between(1, MAX_MMP_INTERVAL),
        default=5,
        help=f"ext4 multi-mount protection update interval in seconds, 1 to {MAX_MMP_INTERVAL} (default: 5)",
    )
    init.set_defaults(handler=run_init_data)

    override = subparsers.add_parser(
        "compose-override",
        help="write mailcow's docker-compose.override.yml for this cluster",
        description=(
            "Render docker-compose.override.yml from the node config and mailcow's docker-compose.yml, check "
            "that mailcow.conf pins the expected compose project name, and write the file with mode 0600."
        ),
    )
    override.add_argument(
        "--project-dir", type=Path, help="the mailcow-dockerized checkout (default: mailcow.project_dir)"
    )
    override.add_argument("--stdout", action="store_true", help="print the override instead of writing it")
    override.set_defaults(handler=run_compose_override)


def run_init_data(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    request = InitRequest(
        device=args.device or config.volume_device,
        cluster=config.cluster,
        volume_id=config.hetzner.shared_volume_id,
        project_name=config.mailcow.project_name,
        mmp_update_interval=args.mmp_interval,
        work_dir=config.paths.run_dir,
    )
    decision = init_data(request)
    print(f"init-data: {decision.action} on {request.device}: {decision.reason}")
    return ExitCode.OK


def run_compose_override(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    project_dir: Path = args.project_dir or config.mailcow.project_dir
    if args.stdout:
        sys.stdout.write(override_file.render_for_checkout(config, project_dir))
        return ExitCode.OK
    print(f"wrote {override_file.write_override(config, project_dir)}")
    return ExitCode.OK
