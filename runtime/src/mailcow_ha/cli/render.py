"""`mailcow-ha render`: write every node's user data and files offline, for review.

Reads `Pulumi.<stack>.yaml`, validates it with the same rules as the Pulumi program, and writes
for every node `OUT/<server name>/user-data.yaml` plus the files inside it, and the keepalived.conf
and Galera config the node renders at first boot with the full member list. Values the cloud
assigns (ids, floating IP addresses) and secrets, which are encrypted in the stack file, appear as
placeholders that name what they stand for.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from mailcow_ha.cli.argtypes import positive_int
from mailcow_ha.config import parse_config
from mailcow_ha.errors import ConfigError, ExitCode, MailcowHaError
from mailcow_ha.render.cloudinit import node_files, render_user_data
from mailcow_ha.render.galera import render_galera_cnf
from mailcow_ha.render.keepalived import priority_for_index, render_keepalived_conf
from mailcow_ha.render.nodeconfig import (
    GALERA_CONF_PATH,
    CloudIds,
    NodeSecrets,
    galera_inputs,
    keepalived_inputs,
    node_config_document,
)
from mailcow_ha.stack import KEYS_BY_NAME, PROJECT, Placeholder, StackConfig, parse_stack
from mailcow_ha.stack_git import resolve_runtime_ref, unpublished_warning
from mailcow_ha.stack_rules import check_node_count

log = logging.getLogger(__name__)

STAND_IN_ID = 1
"""A valid id used only to load a reviewed node config; keepalived and Galera do not read ids."""
REVIEW_MARKER = "user-data.yaml"
"""Every node directory a render writes contains this file; only such directories are replaced."""
OTHER_NAMESPACES = frozenset({"hcloud", "random", "pulumi"})
"""Config namespaces of the providers and of Pulumi itself, which the program does not read."""


class RenderOutputError(MailcowHaError):
    """The output directory cannot take the review files."""

    exit_code = ExitCode.USAGE


class _StackFileLoader(yaml.SafeLoader):
    """A YAML loader that reads a stack file as Pulumi does: every scalar a string, except an empty
    value or null, and a key given twice in one mapping an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StackFileLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag == "tag:yaml.org,2002:null"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "render",
        help="write every node's user data and config files for offline review",
        description=(
            "Read Pulumi.<stack>.yaml and write, for every node, OUT/<server name>/user-data.yaml and the files "
            "it contains, plus the keepalived.conf and Galera config the node renders at first boot."
        ),
    )
    parser.add_argument("--stack", required=True, help="stack name; reads Pulumi.<stack>.yaml")
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    parser.add_argument(
        "--node-count",
        type=_node_count,
        default=None,
        help="render this many nodes (3, 5, 7 or 9) instead of nodeCount",
    )
    parser.add_argument(
        "--project-dir",
        type=Path,
        default=Path.cwd(),
        help="directory with Pulumi.yaml, the stack file and cloud-init/ (default: the current directory)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> ExitCode:
    project_dir: Path = args.project_dir
    stack = load_stack(project_dir, args.stack, node_count=args.node_count)
    stack, warning = resolve_runtime_ref(stack, project_dir, allow_dirty=True)
    for message in (warning, unpublished_warning(stack, project_dir)):
        if message:
            log.warning("%s", message)

    written = render_stack(stack, project_dir / "cloud-init", args.out)
    print(plan_summary(stack, args.out), file=sys.stdout)
    log.info("wrote %d files under %s", written, args.out)
    return ExitCode.OK


def _node_count(text: str) -> int:
    """Parse --node-count with the stack's own rule, so the error names the option, not nodeCount."""
    value = positive_int(text)
    try:
        return check_node_count(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{value} nodes: {error}") from None


def load_stack(project_dir: Path, stack_name: str, *, node_count: int | None = None) -> StackConfig:
    """Read and validate `Pulumi.<stack>.yaml`; secrets become placeholders."""
    path = project_dir / f"Pulumi.{stack_name}.yaml"
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_StackFileLoader) or {}  # noqa: S506
    except FileNotFoundError:
        raise ConfigError(
            f"stack file {path} not found; pass --project-dir or create it with `pulumi stack init`"
        ) from None
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"stack file {path} could not be read: {error}") from None
    config = document.get("config") or {} if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise ConfigError(f"stack file {path} has no `config:` mapping")

    values, secret_keys = stack_file_values(config, path)
    if node_count is not None:
        values["nodeCount"] = node_count
    return parse_stack(values, secret_keys, stack=stack_name)


def stack_file_values(config: dict[str, Any], path: Path | None = None) -> tuple[dict[str, Any], set[str]]:
    """Return the project's values from a stack file's `config:`; encrypted or unset secrets become placeholders.

    Raises ConfigError for a key without a namespace, which Pulumi rejects as well.
    """
    prefix = f"{PROJECT}:"
    values: dict[str, Any] = {}
    secret_keys: set[str] = set()
    for full_name, value in config.items():
        namespace, separator, key = str(full_name).partition(":")
        if not separator:
            raise ConfigError(
                f"stack file {path or 'config'}: key {full_name!r} has no namespace; write it as {prefix}{full_name}"
            )
        if namespace != PROJECT:
            if namespace not in OTHER_NAMESPACES:
                log.warning("stack file %s: key %s is not read by this project (namespace %s)", path, key, namespace)
            continue
        if isinstance(value, dict) and set(value) == {"secure"}:
            values[key] = Placeholder(key)
            secret_keys.add(key)
        else:
            values[key] = value
    for key, spec in KEYS_BY_NAME.items():
        if spec.secret and key not in values:
            values[key] = Placeholder(key)
            secret_keys.add(key)
    return values, secret_keys


def review_cloud_ids(stack: StackConfig, index: int) -> CloudIds:
    """Return placeholders for what the cloud assigns to node `index`'s resources."""
    kinds = ["ipv4", "ipv6"] if stack.floating_ipv6 else ["ipv4"]
    return CloudIds(
        floating_ip_ids=[f"<id-of-floating-ip-{stack.cluster_name}-{kind}>" for kind in kinds],
        floating_ips=[f"<floating-{kind}-address>/{32 if kind == 'ipv4' else 64}" for kind in kinds],
        shared_volume_id=f"<id-of-volume-{stack.cluster_name}-shared-data>",
        db_volume_id=f"<id-of-volume-{stack.node_name(index)}-db>",
    )


def review_secrets(stack: StackConfig) -> NodeSecrets:
    """Return placeholders for every secret, so that no secret reaches the review files."""
    return NodeSecrets(
        hcloud_token=str(Placeholder("hcloudToken")),
        galera_password=str(Placeholder("galeraPassword")),
        status_api_secret=str(Placeholder("statusApiSecret")),
        alert_urls=[str(Placeholder("alertUrls"))] if stack.alert_urls else [],
    )


def render_stack(stack: StackConfig, static_dir: Path, out: Path) -> int:
    """Write every node's review files under `out`; return how many files were written.

    Every file is rendered before the first one is written, so a failure leaves `out` as it was.
    Node directories of an earlier render are replaced, including those of nodes beyond the
    current count, so the directory shows exactly this stack.
    """
    rendered = {stack.node_name(index): render_node(stack, index, static_dir) for index in stack.node_indexes}
    return write_review(out, rendered, stack.cluster_name)


def render_node(stack: StackConfig, index: int, static_dir: Path) -> dict[str, str]:
    """Return node `index`'s review files, keyed by their path relative to the node's directory."""
    members = [str(stack.private_ip(member)) for member in stack.node_indexes]
    secrets = review_secrets(stack)
    cloud = review_cloud_ids(stack, index)
    files: dict[str, str] = {REVIEW_MARKER: render_user_data(stack, index, cloud, secrets, static_dir)}
    for item in node_files(stack, index, cloud, secrets, static_dir):
        files[f"files{item.path}"] = item.content
    config = _loadable_config(node_config_document(stack, index, cloud, secrets))
    files["keepalived.conf"] = render_keepalived_conf(keepalived_inputs(config, members))
    files[PurePosixPath(GALERA_CONF_PATH).name] = render_galera_cnf(galera_inputs(config, members))
    return files


def write_review(out: Path, rendered: dict[str, dict[str, str]], cluster_name: str) -> int:
    """Replace the node directories under `out` with `rendered`; return how many files were written."""
    if out.exists() and not out.is_dir():
        raise RenderOutputError(f"output {out} exists and is not a directory; pass another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        node_dir_name = re.compile(rf"^{re.escape(cluster_name)}-[0-9]+$")
        stale = sorted(
            path.name for path in out.iterdir() if node_dir_name.match(path.name) and path.name not in rendered
        )
        for name in [*rendered, *stale]:
            target = out / name
            if target.exists() and not (target.is_dir() and (target / REVIEW_MARKER).is_file()):
                raise RenderOutputError(
                    f"{target} exists but was not written by `mailcow-ha render` (no {REVIEW_MARKER}); "
                    "move it away or pass another --out"
                )

        written = 0
        for name, files in rendered.items():
            written += _replace_node_dir(out, name, files)
        for name in stale:
            shutil.rmtree(out / name)
            log.info("removed %s, the review of a node beyond the current node count", out / name)
    except OSError as error:
        raise RenderOutputError(f"writing the review files under {out} failed: {error}") from None
    return written


def _replace_node_dir(out: Path, name: str, files: dict[str, str]) -> int:
    staging = out / f".{name}.render-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    for relative, text in files.items():
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    target = out / name
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return len(files)


def plan_summary(stack: StackConfig, out: Path) -> str:
    """Return what `pulumi up` would create for this stack, and where the review files are."""
    floating = "IPv4 and IPv6" if stack.floating_ipv6 else "IPv4"
    lines = [
        f"Stack {stack.stack}: cluster {stack.cluster_name}, {stack.node_count} nodes in {stack.location} "
        f"({stack.network_zone}), server type {stack.server_type}, image {stack.image}",
        f"  network {stack.network_cidr}, subnet {stack.subnet_cidr}, spread placement group, public firewall",
        f"  floating {floating} with reverse DNS {stack.mail_hostname}, assigned to node 1 at creation",
        f"  shared data volume {stack.shared_volume_size} GB (attached to node 1 at creation), "
        f"one {stack.db_volume_size} GB Galera volume per node",
        f"  runtime {stack.runtime_repository} at {stack.runtime_ref}, mailcow-dockerized {stack.mailcow_ref}",
        "  node                      private IP       VRRP priority",
    ]
    for index in stack.node_indexes:
        priority = priority_for_index(index)
        lines.append(f"  {stack.node_name(index):<25} {stack.private_ip(index)!s:<16} {priority}")
    lines.append(f"Review files: {out}/<node>/ (user-data.yaml, keepalived.conf, the Galera config, files/...)")
    return "\n".join(lines)


def _loadable_config(document: dict[str, Any]) -> Any:
    """Load a reviewed node config, with stand-ins for the cloud's ids that the schema requires."""
    hetzner = dict(document["hetzner"])
    hetzner["floating_ip_ids"] = [STAND_IN_ID for _ in hetzner["floating_ip_ids"]]
    hetzner["floating_ips"] = ["192.0.2.1/32"]
    hetzner["shared_volume_id"] = STAND_IN_ID
    return parse_config({**document, "hetzner": hetzner}, source="reviewed node config")
