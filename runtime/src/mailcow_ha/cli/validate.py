"""`mailcow-ha validate`: check a node config file and list every problem."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mailcow_ha.config import load_config
from mailcow_ha.errors import ExitCode


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check the node config file and exit non-zero with the reasons",
        description="Check the node config file (permissions, YAML, schema). Exit 0 when valid, 3 otherwise.",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> ExitCode:
    config = load_config(args.config)
    print(
        f"node config valid: cluster {config.cluster}, node {config.node.name} (index {config.node.index})",
        file=sys.stdout,
    )
    return ExitCode.OK
