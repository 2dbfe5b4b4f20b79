"""The runtime commit that nodes install: taken from the local checkout, checked against its remote.

Nodes fetch `runtimeRef` from `runtimeRepository` at first boot, so a commit that exists only in
the checkout where `pulumi up` runs would stop every new node's first boot.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

from mailcow_ha.errors import ConfigError
from mailcow_ha.stack import StackConfig

_SCP_LIKE = re.compile(r"^[^@/\s]+@([^:/\s]+):(.+)$")


def resolve_runtime_ref(config: StackConfig, repository: Path, *, allow_dirty: bool) -> tuple[StackConfig, str | None]:
    """Fill in an empty runtimeRef with the commit checked out in `repository`.

    Returns the config and a warning, if any. A working tree with uncommitted changes is
    rejected unless `allow_dirty` (the offline review), because nodes install the commit, not
    the changes. Raises ConfigError when git cannot tell the commit.
    """
    if config.runtime_ref:
        return config, None
    head = _git(repository, "rev-parse", "HEAD")
    changes = _git(repository, "status", "--porcelain", "--untracked-files=no")
    warning = None
    if changes:
        message = (
            f"runtimeRef is empty and {repository} has uncommitted changes; nodes would install {head} "
            "without them. Commit them, or set runtimeRef to the commit to deploy"
        )
        if not allow_dirty:
            raise ConfigError(message)
        warning = message
    return dataclasses.replace(config, runtime_ref=head), warning


def _git(repository: Path, *arguments: str) -> str:
    try:
        result = subprocess.run(
            ["git", "-C", str(repository), *arguments], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ConfigError(f"git {arguments[0]} in {repository} failed ({error}); set runtimeRef explicitly") from None
    if result.returncode != 0:
        raise ConfigError(
            f"git {arguments[0]} in {repository} failed: {result.stderr.strip()}; set runtimeRef explicitly"
        )
    return result.stdout.strip()


def unpublished_warning(config: StackConfig, repository: Path) -> str | None:
    """Return a warning when `repository` does not show runtimeRef on a branch of runtimeRepository.

    The check reads the remote-tracking branches as last fetched and reaches no network, so it
    can only warn: a commit pushed from another clone looks unpublished until `git fetch`.
    """
    url = config.runtime_repository
    try:
        remotes = _git(repository, "remote", "-v").splitlines()
    except ConfigError:
        return None
    names = sorted(
        {
            fields[0]
            for fields in (line.split() for line in remotes)
            if len(fields) >= 2 and repository_identity(fields[1]) == repository_identity(url)
        }
    )
    if not names:
        return (
            f"no git remote of {repository} is runtimeRepository {url}; make sure commit {config.runtime_ref} is "
            "pushed there, because new nodes fetch it from there at first boot"
        )
    try:
        branches = _git(repository, "branch", "-r", "--contains", config.runtime_ref).split()
    except ConfigError:
        branches = []
    if any(branch.startswith(f"{name}/") for branch in branches for name in names):
        return None
    return (
        f"commit {config.runtime_ref} is on no branch of remote {names[0]} ({url}) as last fetched; push it, or run "
        "`git fetch` if it was pushed from elsewhere, because new nodes fetch it from there at first boot"
    )


def repository_identity(url: str) -> str:
    """Return `host/path` of a git URL, so that its https, ssh and scp-like forms compare equal."""
    match = _SCP_LIKE.match(url)
    if match:
        host, path = match.groups()
    else:
        without_scheme = url.split("://", 1)[-1]
        authority, _, path = without_scheme.partition("/")
        host = authority.rsplit("@", 1)[-1].split(":", 1)[0]
    return f"{host.lower()}/{path.strip('/').removesuffix('.git')}"
