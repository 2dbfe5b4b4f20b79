"""Membership: learn the cluster's members from the Hetzner API and rewrite the files that list them.

User data never lists peers (so scaling out leaves existing servers' user data unchanged), so
every node learns its peers by label: servers labelled `cluster=<name>`, `role=node` and
`node=<index>`, each with its private address. A sync lists them with one API request, and only
when the members differ from the stored ones does it rewrite keepalived.conf (unicast peers)
and the Galera option file (cluster address), and reload keepalived. The running mariadbd
keeps its old cluster address until its next start. It needs no restart, because a running
Galera member learns new members when they join.

The learned members and this server's id are stored in the state directory, where
`load_membership` reads them for other commands (status, promote).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from mailcow_ha import state
from mailcow_ha.adapters.hetzner import ServerInfo
from mailcow_ha.adapters.keepalived import KeepalivedProcess
from mailcow_ha.config import NodeConfig
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import ConfigError, MailcowHaError
from mailcow_ha.render.galera import render_galera_cnf
from mailcow_ha.render.keepalived import render_keepalived_conf
from mailcow_ha.render.nodeconfig import galera_inputs, keepalived_inputs

log = logging.getLogger(__name__)

ROLE_LABEL = "role"
NODE_ROLE = "node"
INDEX_LABEL = "node"
KEEPALIVED_CHECK_TIMEOUT = 10.0


class MembershipError(MailcowHaError):
    """The API's server list cannot be turned into a valid member list, or a file could not be written."""


class ServerLister(Protocol):
    """The part of the cloud adapter a sync needs (HetznerCloud in production)."""

    def cluster_servers(self, cluster: str, deadline: Deadline) -> list[ServerInfo]: ...


@dataclass(frozen=True, order=True)
class Member:
    """One node of the cluster."""

    index: int
    name: str
    private_ip: str
    server_id: int | None = None


@dataclass(frozen=True)
class Membership:
    """The members as last learned, with this node's server id and where the list came from."""

    members: tuple[Member, ...]
    server_id: int | None
    source: str
    """`api` after a sync, `config` when only the node config's peers are known."""
    synced_at: float | None = None
    problem: str | None = None
    """The reason the stored members could not be read (a corrupt file); the config's peers are used then."""

    def to_json(self) -> dict[str, Any]:
        return {
            "members": [asdict(member) for member in self.members],
            "server_id": self.server_id,
            "source": self.source,
            "synced_at": self.synced_at,
        }

    def same_members(self, members: Sequence[Member]) -> bool:
        """Compare names, indexes and addresses; server ids do not change what the files contain."""
        return _identity(self.members) == _identity(members)


def _identity(members: Iterable[Member]) -> list[tuple[int, str, str]]:
    return sorted((member.index, member.name, member.private_ip) for member in members)


def members_from_servers(servers: Iterable[ServerInfo]) -> tuple[list[Member], list[str]]:
    """Turn the API's servers into members; return them sorted by index and the servers skipped, with why."""
    members: list[Member] = []
    skipped: list[str] = []
    for server in servers:
        if server.labels.get(ROLE_LABEL) != NODE_ROLE:
            continue
        index_text = server.labels.get(INDEX_LABEL, "")
        if not index_text.isdigit() or not 1 <= int(index_text) <= 9:
            skipped.append(f"{server.name}: label {INDEX_LABEL}={index_text!r} is not a node index 1..9")
            continue
        if server.private_ip is None:
            skipped.append(f"{server.name}: no address in a private network yet")
            continue
        members.append(Member(int(index_text), server.name, server.private_ip, server.id))
    return sorted(members), skipped


def validate_members(members: Sequence[Member], own_name: str) -> None:
    """Raise MembershipError unless the list is usable: this node in it, no duplicate index, name or address."""
    for label, values in (
        ("index", [str(member.index) for member in members]),
        ("name", [member.name for member in members]),
        ("private address", [member.private_ip for member in members]),
    ):
        duplicates = sorted({value for value in values if values.count(value) > 1})
        if duplicates:
            raise MembershipError(f"servers share a {label}: {', '.join(duplicates)}; fix the server labels")
    if own_name not in {member.name for member in members}:
        raise MembershipError(
            f"this node {own_name!r} is not among the servers labelled as nodes of the cluster; "
            "check its labels and hetzner.token's project"
        )


def decide_update(stored: Membership, learned: Sequence[Member], files_current: bool) -> tuple[bool, str]:
    """Decide whether to rewrite the files and reload keepalived. Returns (update, reason)."""
    if not stored.same_members(learned):
        before = ", ".join(member.name for member in stored.members) or "none"
        after = ", ".join(member.name for member in learned)
        return True, f"members changed from [{before}] to [{after}]"
    if not files_current:
        return True, "members unchanged, but the rendered files differ from what they should contain"
    return False, "members unchanged"


def load_membership(config: NodeConfig, *, move_corrupt: bool = True) -> Membership:
    """Return the stored members, or the node config's peers when no sync has stored any yet.

    A corrupt members file also gives the config's peers, with the problem in `problem`. It is
    moved aside unless `move_corrupt` is false (read-only commands).
    """
    result = state.read_json(
        config.paths.state_dir / state.MEMBERS_FILE, None, validate=_valid_document, move_corrupt=move_corrupt
    )
    if result.value is not None:
        document = result.value
        return Membership(
            members=tuple(sorted(Member(**member) for member in document["members"])),
            server_id=document.get("server_id"),
            source=str(document.get("source", "api")),
            synced_at=document.get("synced_at"),
        )
    peers = tuple(sorted(Member(peer.index, peer.name, str(peer.private_ip)) for peer in config.peers))
    return Membership(peers, config.hetzner.server_id, "config", problem=result.problem)


def _valid_document(value: Any) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("members"), list):
        return False
    for member in value["members"]:
        if not isinstance(member, dict) or set(member) - {"index", "name", "private_ip", "server_id"}:
            return False
        if not isinstance(member.get("index"), int) or not isinstance(member.get("name"), str):
            return False
        try:
            ipaddress.IPv4Address(member.get("private_ip"))
        except ValueError:
            return False
    return value.get("server_id") is None or isinstance(value.get("server_id"), int)


def render_files(config: NodeConfig, members: Sequence[Member]) -> dict[Path, str]:
    """Return the text of every file that lists the members, by path. Raises ConfigError on invalid input."""
    addresses = [member.private_ip for member in members]
    return {
        config.paths.keepalived_conf: render_keepalived_conf(keepalived_inputs(config, addresses)),
        config.paths.galera_conf: render_galera_cnf(galera_inputs(config, addresses)),
    }


def file_differs(path: Path, text: str) -> bool:
    try:
        return path.read_text(encoding="utf-8") != text
    except FileNotFoundError:
        return True
    except OSError as error:
        raise MembershipError(f"could not read {path}: {error.strerror}") from None


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `text` atomically (a temporary file in the same directory, renamed over the old one)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temporary, mode)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise MembershipError(f"could not write {path}: {error.strerror}") from None


def check_keepalived_conf(text: str, directory: Path) -> None:
    """Run `keepalived -t` on a rendered config before it replaces the live one."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, prefix=".keepalived-check.", suffix=".conf") as candidate:
        candidate.write(text)
        candidate.flush()
        try:
            result = subprocess.run(
                ["keepalived", "-t", "-e", "-f", candidate.name],
                capture_output=True,
                text=True,
                timeout=KEEPALIVED_CHECK_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise MembershipError(f"keepalived -t could not check the new keepalived.conf: {error}") from None
    if result.returncode != 0:
        detail = " / ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise MembershipError(f"keepalived -t rejected the new keepalived.conf (exit {result.returncode}): {detail}")


@dataclass(frozen=True)
class SyncResult:
    membership: Membership
    updated: bool
    reason: str
    reloaded: bool = False


class MembershipSync:
    """One node's membership sync: list servers, and rewrite and reload only on change."""

    def __init__(
        self,
        config: NodeConfig,
        cloud: ServerLister,
        *,
        keepalived: KeepalivedProcess | None = None,
        check_config: bool = True,
        wall_clock: Any = time.time,
    ) -> None:
        self.config = config
        self.cloud = cloud
        self.keepalived = keepalived or KeepalivedProcess(
            config.paths.keepalived_pid_file, config.paths.keepalived_data_file
        )
        self.check_config = check_config
        self._wall_clock = wall_clock

    def sync(self, deadline: Deadline) -> SyncResult:
        """List the cluster's servers once and bring the files and the stored members up to date."""
        servers = self.cloud.cluster_servers(self.config.cluster, deadline)
        learned, skipped = members_from_servers(servers)
        for problem in skipped:
            log.warning("membership sync skipped a server: %s", problem)
        validate_members(learned, self.config.node.name)
        own = next(member for member in learned if member.name == self.config.node.name)
        if own.private_ip != str(self.config.node.private_ip):
            raise MembershipError(
                f"the API lists {own.name} with private address {own.private_ip}, but node.private_ip is "
                f"{self.config.node.private_ip}; fix the node config"
            )
        try:
            files = render_files(self.config, learned)
        except ConfigError as error:
            raise MembershipError(f"cannot render files for members {[m.name for m in learned]}: {error}") from None

        stored = load_membership(self.config)
        changed_files = {path: text for path, text in files.items() if file_differs(path, text)}
        update, reason = decide_update(stored, learned, files_current=not changed_files)
        membership = Membership(tuple(learned), own.server_id, "api", self._wall_clock())
        reloaded = False
        if update:
            reloaded = self._apply(changed_files)
            log.info("membership updated: %s%s", reason, "; keepalived reloaded" if reloaded else "")
        else:
            log.debug("membership sync: %s", reason)
        if update or stored.source != "api" or stored.server_id != own.server_id:
            state.write_json(self.config.paths.state_dir / state.MEMBERS_FILE, membership.to_json())
        return SyncResult(membership, update, reason, reloaded)

    def _apply(self, changed_files: dict[Path, str]) -> bool:
        keepalived_conf = self.config.paths.keepalived_conf
        if self.check_config and keepalived_conf in changed_files:
            check_keepalived_conf(changed_files[keepalived_conf], keepalived_conf.parent)
        for path, text in changed_files.items():
            write_file(path, text)
            log.info("rewrote %s", path)
        if keepalived_conf in changed_files and self.keepalived.running():
            self.keepalived.reload()
            return True
        return False
