"""The mailcow-ha Pulumi program: validate the stack config, then declare the cluster.

Validation runs before any resource is declared, so a bad value stops `pulumi preview` with
every problem listed and nothing planned. So does a change that would harm the running cluster
(see existing.py), which the program checks through the API with the provider's token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
from pydantic import SecretStr

from cluster import Cluster, ClusterArgs
from existing import change_problems, read_existing
from mailcow_ha.errors import CloudError, ConfigError
from mailcow_ha.stack import KEYS_BY_NAME, PROJECT, StackConfig, parse_stack
from mailcow_ha.stack_git import resolve_runtime_ref, unpublished_warning

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_ENDPOINT = "https://api.hetzner.cloud/v1"


def read_config() -> tuple[dict[str, Any], set[str]]:
    """Return the project's config values (secrets in clear, for validation only) and the secret keys."""
    prefix = f"{PROJECT}:"
    names = {*pulumi.runtime.config.CONFIG.get(), *pulumi.runtime.get_config_env()}
    secret_names = {*pulumi.runtime.get_config_secret_keys_env()}
    values: dict[str, Any] = {}
    secret_keys: set[str] = set()
    for full_name in sorted(names | {prefix + key for key in KEYS_BY_NAME}):
        if not full_name.startswith(prefix):
            continue
        value = pulumi.runtime.get_config(full_name)
        if value is None:
            continue
        key = full_name[len(prefix) :]
        values[key] = value
        if pulumi.runtime.is_config_secret(full_name) or full_name in secret_names:
            secret_keys.add(key)
    return values, secret_keys


def secret_output(stack: StackConfig, key: str) -> pulumi.Output[str] | None:
    value = getattr(stack, key)
    if not isinstance(value, SecretStr):
        return None
    return pulumi.Output.secret(value.get_secret_value())


def check_running_cluster(stack: StackConfig) -> None:
    """Reject a change that would harm the cluster as it runs now; see existing.py."""
    token = pulumi.runtime.get_config("hcloud:token")
    if not token:
        pulumi.log.warn(
            "hcloud:token is not in the stack config, so this change is not checked against the running cluster "
            "(scale-in, location, addresses); set it with `pulumi config set --secret hcloud:token`"
        )
        return
    endpoint = pulumi.runtime.get_config("hcloud:endpoint") or DEFAULT_ENDPOINT
    try:
        existing = read_existing(stack.cluster_name, token, endpoint)
    except CloudError as error:
        raise pulumi.RunError(str(error)) from None
    problems = change_problems(stack, existing)
    if problems:
        lines = [f"stack {stack.stack!r}: this change would harm the running cluster {stack.cluster_name}:"]
        lines.extend(f"  {problem}" for problem in problems)
        raise pulumi.RunError("\n".join(lines))


def main() -> None:
    values, secret_keys = read_config()
    try:
        stack = parse_stack(values, secret_keys, stack=pulumi.get_stack())
        stack, _ = resolve_runtime_ref(stack, REPOSITORY, allow_dirty=False)
    except ConfigError as error:
        raise pulumi.RunError(str(error)) from None
    warning = unpublished_warning(stack, REPOSITORY)
    if warning:
        pulumi.log.warn(warning)
    check_running_cluster(stack)

    token = secret_output(stack, "hcloud_token")
    if token is None:
        raise pulumi.RunError(f"{PROJECT}:hcloudToken is missing; set it with `pulumi config set --secret hcloudToken`")
    alert_urls = pulumi.Output.secret(
        [url.get_secret_value() for url in stack.alert_urls if isinstance(url, SecretStr)]
    )
    cluster = Cluster(
        stack.cluster_name,
        ClusterArgs(
            stack=stack,
            static_dir=REPOSITORY / "cloud-init",
            hcloud_token=token,
            alert_urls=alert_urls,
            galera_password=secret_output(stack, "galera_password"),
            status_api_secret=secret_output(stack, "status_api_secret"),
        ),
    )
    for name, value in cluster.outputs.items():
        pulumi.export(name, value)


main()
