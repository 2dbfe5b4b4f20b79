"""`mailcow-ha upgrade mailcow|runtime`: update mailcow and the runtime without a failover.

The mailcow upgrade runs on the master. It switches maintenance mode on, so that containers
restarting during the update do not fail the node over. Then it runs mailcow's update.sh,
renders the compose override for the new compose file, and adds primary keys to tables the new
schema created without one. Every standby then checks out the master's mailcow commit and pulls
the same images, and maintenance mode goes off. A failed step stops the upgrade and leaves
maintenance mode on until it expires.

Runtime upgrade, run on any node: every node installs the same runtime commit and restarts its
agent, one node at a time, standbys first and the master last, and the next node starts only
after the previous one reports the new version and a healthy verdict.
"""

from __future__ import annotations

import enum
import logging
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailcow_ha.config import NodeConfig
from mailcow_ha.deadline import Deadline, Sleep
from mailcow_ha.errors import DeadlineExceeded, MailcowHaError, Refused
from mailcow_ha.mailcow import override_file
from mailcow_ha.mailcow.galera_ops import ActionRegistry, PeerTransport

log = logging.getLogger(__name__)

ACTION_MAILCOW_CHECKOUT = "mailcow-checkout"
ACTION_RUNTIME_INSTALL = "runtime-install"
COMMAND_TIMEOUT = 3600.0
"""Seconds one update.sh, git or image pull may take."""
_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")


class UpgradeError(MailcowHaError):
    """An upgrade step failed; the message names the step, the node, and what was already done."""


class NodeRole(enum.StrEnum):
    MASTER = "master"
    STANDBY = "standby"


@dataclass(frozen=True)
class NodeState:
    """A member's role, agent version and verdict from its status API, or the error that hid them."""

    node: str
    index: int
    role: NodeRole | None
    version: str | None = None
    healthy: bool = False
    started_at: float | None = None
    """When the node's agent started (Unix seconds), to tell a restarted agent from the old one."""
    error: str | None = None


def upgrade_order(nodes: Sequence[NodeState]) -> list[NodeState]:
    """Order the nodes for a one-at-a-time upgrade: standbys by index, then the master.

    Raises Refused when a node's state is unknown or there is not exactly one master, because
    upgrading blind could restart the master's agent while a standby is still down.
    """
    unknown = [f"{state.node} ({state.error or 'no role'})" for state in nodes if state.role is None]
    if unknown:
        raise Refused(f"the state of {', '.join(unknown)} is unknown; bring every agent back before upgrading")
    masters = [state.node for state in nodes if state.role is NodeRole.MASTER]
    if len(masters) != 1:
        raise Refused(f"expected exactly one master, found {len(masters)} ({', '.join(masters) or 'none'})")
    standbys = sorted((state for state in nodes if state.role is NodeRole.STANDBY), key=lambda state: state.index)
    master = next(state for state in nodes if state.role is NodeRole.MASTER)
    return [*standbys, master]


def run_command(command: Sequence[str], *, cwd: Path | None = None, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run a command and return its stdout; raise UpgradeError with its last stderr lines."""
    where = f" in {cwd}" if cwd else ""
    try:
        result = subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise UpgradeError(f"{command[0]} not found{where}") from None
    except subprocess.TimeoutExpired:
        raise UpgradeError(f"{' '.join(command)} timed out after {timeout:.0f} s{where}") from None
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise UpgradeError(f"{' '.join(command)}{where} exited {result.returncode}: {tail}")
    return result.stdout


def mailcow_commit(project_dir: Path) -> str:
    """Return the commit mailcow's checkout is at."""
    return run_command(["git", "-C", str(project_dir), "rev-parse", "HEAD"], timeout=30).strip()


def checkout_mailcow(config: NodeConfig, commit: str) -> dict[str, Any]:
    """Check out `commit` in this node's mailcow checkout, render the override and pull the images."""
    if not _COMMIT.match(commit):
        raise UpgradeError(f"{commit!r} is not a git commit id")
    project_dir = config.mailcow.project_dir
    git = ["git", "-C", str(project_dir)]
    if run_command([*git, "rev-parse", "HEAD"], timeout=30).strip() != commit:
        run_command([*git, "fetch", "--quiet", "origin"])
        run_command([*git, "checkout", "--quiet", "--detach", commit], timeout=120)
    override_file.write_override(config, project_dir)
    run_command(config.mailcow.pull_command, cwd=project_dir)
    log.info("mailcow checkout at %s with its images pulled", commit)
    return {"node": config.node.name, "commit": commit}


def install_commands(config: NodeConfig, ref: str) -> list[list[str]]:
    """Return the commands that install runtime commit `ref` the way first boot does."""
    runtime = config.runtime
    source = str(runtime.source_dir)
    pip = str(runtime.venv_dir / "bin" / "pip")
    repository = runtime.repository or "origin"
    return [
        ["git", "-C", source, "fetch", "--quiet", "--depth", "1", repository, ref],
        ["git", "-C", source, "checkout", "--quiet", "--detach", "FETCH_HEAD"],
        [pip, "install", "-q", "--no-deps", "--require-hashes", "-r", f"{source}/runtime/requirements.lock"],
        [pip, "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", f"{source}/runtime"],
    ]


def install_runtime(config: NodeConfig, ref: str) -> dict[str, Any]:
    """Install runtime commit `ref` into the node's venv and restart the agent."""
    if not _COMMIT.match(ref):
        raise UpgradeError(f"{ref!r} is not a git commit id; the runtime is pinned to a commit")
    deadline = Deadline.after(f"installing runtime {ref} on {config.node.name}", config.runtime.install_timeout)
    for command in install_commands(config, ref):
        run_command(command, timeout=max(1.0, deadline.remaining()))
    head = run_command(["git", "-C", str(config.runtime.source_dir), "rev-parse", "HEAD"], timeout=30).strip()
    if not head.startswith(ref):
        raise UpgradeError(f"the runtime checkout is at {head}, not {ref}; check the repository")
    # The agent serving this call is restarted here, so the reply may be lost; the caller
    # checks the new version through the status API instead.
    subprocess.Popen(config.runtime.restart_command, start_new_session=True)
    return {"node": config.node.name, "installed": head}


def register_upgrade_actions(registry: ActionRegistry, config: NodeConfig) -> None:
    """Serve this node's upgrade steps through the agent's status API."""
    registry.register_action(
        ACTION_MAILCOW_CHECKOUT,
        lambda params: checkout_mailcow(config, str(params.get("commit", ""))),
        summary="check out a mailcow commit, render the compose override and pull its images",
        timeout=COMMAND_TIMEOUT,
    )
    registry.register_action(
        ACTION_RUNTIME_INSTALL,
        lambda params: install_runtime(config, str(params.get("ref", ""))),
        summary="install a mailcow-ha commit into the runtime's venv and restart the agent",
        timeout=config.runtime.install_timeout,
    )


@dataclass(frozen=True)
class MailcowUpgradeSteps:
    """The operations of a mailcow upgrade, so tests can run it against a checkout without Docker."""

    maintenance_on: Callable[[], None]
    update: Callable[[], str]
    """Runs update.sh and returns the new mailcow commit."""
    render_override: Callable[[], None]
    fix_database: Callable[[], list[str]]
    maintenance_off: Callable[[], None]


def upgrade_mailcow(
    steps: MailcowUpgradeSteps, standbys: Sequence[str], transport: PeerTransport, *, timeout: float = COMMAND_TIMEOUT
) -> str:
    """Run the mailcow upgrade on the master; return the new commit."""
    steps.maintenance_on()
    try:
        commit = steps.update()
        steps.render_override()
        fixed = steps.fix_database()
        if fixed:
            log.info("added invisible primary keys to %s", ", ".join(fixed))
        for node in standbys:
            log.info("checking out mailcow %s on %s", commit, node)
            transport.call(node, ACTION_MAILCOW_CHECKOUT, {"commit": commit}, timeout)
    except MailcowHaError as error:
        raise UpgradeError(
            f"mailcow upgrade stopped: {error}; maintenance mode stays on until it expires or "
            "`mailcow-ha maintenance off`, so fix the cause and run `mailcow-ha upgrade mailcow` again"
        ) from None
    steps.maintenance_off()
    return commit


def upgrade_runtime(
    nodes: Sequence[NodeState],
    ref: str,
    transport: PeerTransport,
    read_state: Callable[[str], NodeState],
    *,
    expected_version: str,
    node_timeout: float = 600.0,
    poll_interval: float = 2.0,
    sleep: Sleep = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> list[str]:
    """Install `ref` on one node at a time; wait until its restarted agent runs `expected_version` healthily."""
    done: list[str] = []
    for state in upgrade_order(nodes):
        log.info("upgrading the runtime on %s (%s) to %s", state.node, state.role, ref)
        requested_at = wall_clock()
        try:
            transport.call(state.node, ACTION_RUNTIME_INSTALL, {"ref": ref}, node_timeout)
        except MailcowHaError as error:
            # The agent restarts itself at the end of the install, which may cut the reply.
            log.warning("no reply from %s after the install (%s); checking its version", state.node, error)
        deadline = Deadline.after(f"runtime upgrade of {state.node}", node_timeout, clock)
        _wait_upgraded(
            state.node,
            read_state,
            expected_version=expected_version,
            requested_at=requested_at,
            deadline=deadline,
            poll_interval=poll_interval,
            sleep=sleep,
            done=done,
        )
        done.append(state.node)
    return done


def _wait_upgraded(
    node: str,
    read_state: Callable[[str], NodeState],
    *,
    expected_version: str,
    requested_at: float,
    deadline: Deadline,
    poll_interval: float,
    sleep: Sleep,
    done: Sequence[str],
) -> None:
    last = "no reply yet"
    while not deadline.expired:
        current = read_state(node)
        restarted = current.started_at is not None and current.started_at >= requested_at
        if restarted and current.version == expected_version and current.healthy:
            log.info("%s runs mailcow-ha %s and is healthy", node, expected_version)
            return
        last = current.error or f"version {current.version}, healthy {current.healthy}, restarted {restarted}"
        sleep(min(poll_interval, deadline.remaining()))
    raise DeadlineExceeded(
        f"{node} did not report mailcow-ha {expected_version} and a healthy verdict in time (last: {last}); "
        f"upgraded so far: {', '.join(done) or 'none'}; the remaining nodes were not touched"
    )


def state_from_snapshot(node: str, index: int, snapshot: Mapping[str, Any] | None, error: str | None) -> NodeState:
    """Build a NodeState from a status API snapshot (as a dict) or the error of fetching it."""
    if snapshot is None:
        return NodeState(node, index, None, error=error)
    vrrp = snapshot.get("vrrp_state")
    role: NodeRole | None = None
    if vrrp == "MASTER":
        role = NodeRole.MASTER
    elif vrrp in ("BACKUP", "FAULT"):
        role = NodeRole.STANDBY
    return NodeState(
        node,
        index,
        role,
        version=snapshot.get("agent_version"),
        healthy=bool(snapshot.get("healthy")),
        started_at=snapshot.get("agent_started_at"),
        error=None if role else f"VRRP state {vrrp}",
    )
