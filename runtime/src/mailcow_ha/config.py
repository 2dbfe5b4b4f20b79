"""The node config: one YAML file per node, written by cloud-init, validated at every start.

Every path the runtime touches is a field here, so tests and the lab point the same code at
loop devices, namespaces and a fake cloud API without the code knowing. Durations are in
seconds. Secrets are `SecretStr`, whose repr and str print asterisks, so a config object may be
logged or shown in an error without leaking the token, alert URLs or passwords.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from mailcow_ha.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/mailcow-ha/node.yaml")
CONFIG_PATH_ENV = "MAILCOW_HA_CONFIG"

_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"

Seconds = Annotated[float, Field(gt=0, le=86400)]
PositiveCount = Annotated[int, Field(ge=1, le=1000)]


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSettings(_Section):
    """This node's identity inside the cluster."""

    name: Annotated[str, Field(pattern=_NAME_PATTERN)]
    index: Annotated[int, Field(ge=1, le=9)]
    private_ip: ipaddress.IPv4Address
    private_interface: str = "enp7s0"
    public_interface: str = "eth0"


class PeerSettings(_Section):
    """Another member of the cluster as this node knew it at install or at the last peer sync."""

    name: Annotated[str, Field(pattern=_NAME_PATTERN)]
    index: Annotated[int, Field(ge=1, le=9)]
    private_ip: ipaddress.IPv4Address


class HetznerSettings(_Section):
    """Hetzner Cloud ids and the client's bounds. The token belongs to the cluster's project."""

    token: SecretStr
    endpoint: str = "https://api.hetzner.cloud/v1"
    server_id: Annotated[int, Field(ge=1)] | None = None
    """This server's id. User data cannot contain it (the server does not exist yet when its
    user data is rendered), so None means: look the server up by node name in the API."""
    floating_ip_ids: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=2)]
    floating_ips: Annotated[list[ipaddress.IPv4Interface | ipaddress.IPv6Interface], Field(min_length=1, max_length=2)]
    """Addresses configured on the public interface of the master, with prefix length
    (an IPv4 floating IP as /32, the IPv6 one as the first address of its /64)."""
    shared_volume_id: Annotated[int, Field(ge=1)]
    request_timeout: Seconds = 10.0
    """Read timeout of one HTTP request to the API; a step's deadline shortens it further."""
    connect_timeout: Seconds = 3.0
    """TCP connect timeout of one HTTP request to the API."""
    poll_interval: Seconds = 0.2
    """Time between two reads of a running action's status. A move sees each action end up to
    this late; at 0.2 s a failover of 3 actions lasting 2 s each costs about 30 requests."""
    retry_backoff_initial: Seconds = 0.25
    """Wait before the first retry of a transient API error; it doubles with every retry."""
    retry_backoff_max: Seconds = 4.0
    """Upper bound of the wait between two retries (a 429 waits for the budget's next refill)."""

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_http(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+(/\S*)?$", value):
            raise ValueError(f"expected an http(s) URL such as https://api.hetzner.cloud/v1, got {value!r}")
        return value.rstrip("/")


class MailcowSettings(_Section):
    """The mailcow-dockerized compose project that runs on the master only."""

    project_dir: Path = Path("/opt/mailcow-dockerized")
    project_name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")] = "mailcowdockerized"
    critical_services: Annotated[list[str], Field(min_length=1)] = [
        "postfix-mailcow",
        "dovecot-mailcow",
        "nginx-mailcow",
        "php-fpm-mailcow",
        "rspamd-mailcow",
        "redis-mailcow",
        "unbound-mailcow",
    ]
    """Compose service names whose containers must run and be healthy on the master."""
    db_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,64}$")] = "mailcow"
    db_user: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,32}$")] = "mailcow"
    db_password: SecretStr | None = None
    """mailcow's database password. The compose override hands it to the services that use the
    database, and `galera first-boot` creates the user with it. None leaves both to mailcow.conf."""
    update_command: list[str] = ["./update.sh", "--force"]
    """mailcow's updater, run in `project_dir` on the master by `mailcow-ha upgrade mailcow`."""
    pull_command: list[str] = ["docker", "compose", "pull", "--quiet"]
    """Fetches the images of the checked-out mailcow version on a standby."""


class PathSettings(_Section):
    """Every file system path and socket the runtime uses."""

    device_dir: Path = Path("/dev/disk/by-id")
    """Where Hetzner volumes appear as `scsi-0HC_Volume_<id>`."""
    mount_point: Path = Path("/srv/mailcow-data")
    """Where the shared data volume is mounted on the master."""
    docker_socket: str = "unix:///var/run/docker.sock"
    state_dir: Path = Path("/var/lib/mailcow-ha")
    """Persistent state: failover history, breaker, maintenance mode."""
    run_dir: Path = Path("/run/mailcow-ha")
    """Volatile state: the keepalived FIFO, health file, locks."""
    keepalived_fifo: Path = Path("/run/mailcow-ha/keepalived.fifo")
    health_file: Path = Path("/run/mailcow-ha/health")
    """keepalived `track_file`: 0 when healthy, non-zero puts the VRRP instance into FAULT."""
    keepalived_conf: Path = Path("/etc/keepalived/keepalived.conf")
    keepalived_pid_file: Path = Path("/run/keepalived.pid")
    keepalived_data_file: Path = Path("/tmp/keepalived.data")  # noqa: S108 keepalived's fixed path
    """Where keepalived writes its SIGUSR1 data dump, read by the agent to re-learn the VRRP state.
    keepalived 2.2.7 with `data_use_instance` names it /tmp/keepalived.NS.data inside namespace NS.
    The agent trusts the file only when root owns it and nobody else may write it."""
    galera_conf: Path = Path("/etc/mysql/mariadb.conf.d/60-galera.cnf")


class DeadlineSettings(_Section):
    """Upper bounds of the failover steps."""

    cloud_step: Seconds = 60.0
    """Assigning the floating IPs, or moving the shared volume, including retries."""
    device: Seconds = 30.0
    """The attached volume's device appearing under `paths.device_dir`."""
    mount: Seconds = 30.0
    containers_healthy: Seconds = 300.0
    """Every critical container running and healthy after promote starts them."""
    containers_stop: Seconds = 60.0
    holders_term: Seconds = 10.0
    """Time between TERM and KILL for processes still using the mount point at demote."""
    unmount: Seconds = 30.0
    """Syncing and unmounting the shared volume at demote."""
    promote: Seconds = 480.0
    """The whole promote; it cuts every step's own deadline short."""
    release_wait: Annotated[float, Field(ge=0, le=600)] = 5.0
    """How long promote waits for the volume's holder to report the volume unmounted before it
    detaches the volume anyway. A clean release lets the next mount skip multi-mount protection's
    wait and loses nothing the old master had not yet written to the disk. The default allows a
    demote ten times slower than the lab's (0.4 s from the fault to the unmount), and it is all that
    a holder which responds but never releases the volume can add to a failover. 0 detaches at once."""
    release_request: Seconds = 0.5
    """Connect and read timeout of one status request to the volume's holder during that wait. A
    response on the private network takes milliseconds, and a powered-off holder costs this long."""
    engine_request: Seconds = 30.0
    """Read timeout of one Docker API request (a stop request also gets the container's stop timeout)."""
    transition_lock: Seconds = 60.0
    """Wait for the transition lock when another command holds it, before the transition fails."""


class VolumeSettings(_Section):
    """How promote checks and mounts the shared data volume."""

    mount_options: Annotated[str, Field(pattern=r"^[A-Za-z0-9_=.,-]+$")] = "noatime,errors=remount-ro"
    """Options passed to mount with `-o`; the file system type is always ext4."""
    require_mmp: bool = True
    """Reject a volume without ext4 multi-mount protection, which `mailcow-ha init-data` turns on."""
    mmp_node_names: list[Annotated[str, Field(min_length=1, max_length=64)]] = []
    """Host names, besides the members' node names, that the MMP block may show for a node of this
    cluster. The kernel writes its host name there, which is the node name on a node that cloud-init
    set up. Promote clears a stale MMP block only when a member or one of these names wrote it."""


class BreakerSettings(_Section):
    """The circuit breaker that stops a failover loop."""

    window: Seconds = 3600.0
    max_failovers: PositiveCount = 1
    """Automatic failovers onto this node allowed inside the window; the next one trips."""


class HealthSettings(_Section):
    """How the agent turns probe results into the verdict keepalived sees."""

    interval: Seconds = 0.5
    """Longest time the agent's main loop waits between two passes, and the rate of a recovering probe."""
    probe_timeout: Seconds = 2.0
    failures_to_unhealthy: PositiveCount = 3
    successes_to_healthy: PositiveCount = 3
    restart_tolerance: Annotated[int, Field(ge=0, le=100)] = 3
    """Container restarts tolerated inside `restart_window` (mailcow's watchdog restarts some)."""
    restart_window: Seconds = 600.0
    desync_tolerance: Seconds = 600.0
    """How long a Galera member may be Donor/Desynced before it counts as unhealthy."""
    grace_period: Annotated[float, Field(ge=0, le=1800)] = 300.0
    """After a failover starts, container failures are not counted for this long."""
    galera_interval: Seconds = 1.0
    """Time between two Galera probes while they pass."""
    container_poll_interval: Seconds = 30.0
    """Time between two container polls while they pass. Engine events trigger a probe at once, so the
    poll is only the backstop; each costs one request per container plus one."""
    system_interval: Seconds = 2.0
    """Time between two mount and floating IP probes while they pass."""
    retry_interval: Seconds = 0.1
    """After a probe fails, it runs again this soon, so that consecutive failures confirm quickly."""
    restart_wait: Seconds = 10.0
    """How long a died container may stay down while a start is expected: its restart policy restarts it,
    or the engine reported a restart or stop of it."""
    failed_transition_hold: Seconds = 60.0
    """How long the node reports unhealthy after a failed promote, so that another node takes over."""
    watchdog_timeout: Annotated[float, Field(ge=2, le=300)] = 10.0
    """The agent's guardian process reports unhealthy and kills the agent when its main loop has
    not reported progress for this long."""
    keepalived_check_interval: Seconds = 2.0
    """Time between two checks that keepalived still runs; a vanished keepalived means demote."""
    keepalived_state_check_interval: Seconds = 60.0
    """Time between two data dumps (SIGUSR1) that compare keepalived's state with the agent's. A
    difference means that the agent missed a transition, so it acts on keepalived's state."""

    @model_validator(mode="after")
    def _watchdog_outlasts_passes(self) -> Self:
        # The main loop reports progress once per pass, and a pass waits up to `interval` for input.
        if self.watchdog_timeout < 4 * self.interval:
            raise ValueError(
                f"watchdog_timeout ({self.watchdog_timeout:g} s) must be at least 4 times interval "
                f"({self.interval:g} s), or the guardian kills an agent that only waits for input"
            )
        return self


class AlertSettings(_Section):
    """Where alerts go (Apprise URLs) and how repeats are limited."""

    urls: list[SecretStr] = []
    repeat_interval: Seconds = 600.0
    timeout: Annotated[float, Field(gt=0, le=60)] = 5.0


class GaleraSettings(_Section):
    """The local MariaDB Galera member."""

    socket: Path = Path("/run/mysqld/mysqld.sock")
    user: str = "mailcow_ha"
    password: SecretStr
    data_dir: Path = Path("/var/lib/mysql")
    cluster_name: str
    buffer_pool_size: Annotated[str, Field(pattern=r"^[1-9][0-9]*[KMG]?$")] = "256M"
    gcache_size: Annotated[str, Field(pattern=r"^[1-9][0-9]*[KMG]?$")] = "512M"
    mariadbd: str = "mariadbd"
    """The server binary that `--wsrep-recover` runs to read this member's position."""
    defaults_file: Path | None = None
    """Option file passed to mariadbd as `--defaults-file`; None reads the system's my.cnf."""
    bootstrap_command: list[str] = ["galera_new_cluster"]
    """Starts this member as the first node of a new primary component."""
    start_command: list[str] = ["systemctl", "start", "mariadb"]
    """Starts this member so that it joins the running primary component."""
    start_timeout: Seconds = 600.0
    """Upper bound of one bootstrap or join, state transfer included."""


class StatusApiSettings(_Section):
    """The agent's HTTP status API, served on the private address only."""

    port: Annotated[int, Field(ge=1024, le=65535)] = 8741
    secret: SecretStr
    """Shared by every node; authenticates the calls that change another node."""


class KeepalivedSettings(_Section):
    """VRRP settings that the renderer and the agent share."""

    instance: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")] = "mailcow"
    virtual_router_id: Annotated[int, Field(ge=1, le=255)] = 51
    advert_int: Annotated[float, Field(ge=0.1, le=10)] = 1.0
    priority: Annotated[int, Field(ge=1, le=254)]
    script_user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]*$")] = "keepalived_script"
    """The user keepalived runs scripts as (`enable_script_security` requires one that exists)."""
    script_group: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]*$")] | None = None
    agent_process: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,15}$")] | None = "mailcow-ha-agen"
    """Process name keepalived's `track_process` watches; the agent sets its own name to it.
    None leaves `track_process` out, for keepalived in a network namespace other than the initial one,
    where the kernel's process events do not reach it."""
    agent_restart_delay: Annotated[float, Field(ge=0, le=60)] = 5.0
    """Seconds a restarting agent may be gone before keepalived, or the agent's guardian, puts the node in FAULT."""


class MembershipSettings(_Section):
    """How the agent learns the cluster's members from the Hetzner API after a scale-out."""

    enabled: bool = True
    sync_interval: Annotated[float, Field(ge=10, le=86400)] = 60.0
    """Time between two listings of the cluster's servers; each costs one API request."""


class RuntimeSettings(_Section):
    """Where the runtime is installed from and to, for `mailcow-ha upgrade runtime`."""

    repository: str | None = None
    """Git URL of the mailcow-ha repository; None means the source checkout's `origin`."""
    source_dir: Path = Path("/opt/mailcow-ha/src")
    venv_dir: Path = Path("/opt/mailcow-ha/venv")
    restart_command: list[str] = ["systemctl", "restart", "mailcow-ha-agent.service"]
    install_timeout: Seconds = 1200.0


class NodeConfig(_Section):
    """The whole node config file."""

    cluster: Annotated[str, Field(pattern=_NAME_PATTERN)]
    node: NodeSettings
    peers: list[PeerSettings] = []
    """Every member of the cluster, this node included, as known when the file was written.
    Empty in user data; the membership sync learns the members from the API by label."""
    hetzner: HetznerSettings
    mailcow: MailcowSettings = MailcowSettings()
    paths: PathSettings = PathSettings()
    volume: VolumeSettings = VolumeSettings()
    deadlines: DeadlineSettings = DeadlineSettings()
    breaker: BreakerSettings = BreakerSettings()
    health: HealthSettings = HealthSettings()
    alerts: AlertSettings = AlertSettings()
    galera: GaleraSettings
    status_api: StatusApiSettings
    keepalived: KeepalivedSettings
    membership: MembershipSettings = MembershipSettings()
    runtime: RuntimeSettings = RuntimeSettings()

    @model_validator(mode="after")
    def _peers_are_consistent(self) -> Self:
        columns = {
            "name": [peer.name for peer in self.peers],
            "index": [str(peer.index) for peer in self.peers],
            "private_ip": [str(peer.private_ip) for peer in self.peers],
        }
        for label, values in columns.items():
            duplicates = sorted({value for value in values if values.count(value) > 1})
            if duplicates:
                raise ValueError(f"peers: duplicate {label} {', '.join(duplicates)}; list each node once")
        if self.peers and self.node.name not in columns["name"]:
            raise ValueError(f"peers: this node {self.node.name!r} is missing from the list")
        return self

    @property
    def volume_device(self) -> Path:
        """The path under which the shared volume's device appears when attached here."""
        return self.paths.device_dir / f"scsi-0HC_Volume_{self.hetzner.shared_volume_id}"


def parse_config(data: Any, *, source: str = "node config") -> NodeConfig:
    """Validate a parsed YAML document and return the node config.

    Raises ConfigError listing every invalid key as a dotted path with the rule it broke.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level, got {type(data).__name__}")
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None


def format_validation_error(error: ValidationError, source: str) -> str:
    """Render pydantic's errors as one line per key, without the rejected values of secrets.

    A value that fits no member of a union (such as a floating IP that is neither IPv4 nor IPv6)
    gets one error per member, located by pydantic's internal schema names. Those names are
    dropped from the key and the member errors are joined on one line.
    """
    entries: list[tuple[str, str]] = []
    previous_tagged_key = None
    for problem in error.errors(include_url=False, include_input=False):
        key = ".".join(str(part) for part in problem["loc"] if not _is_schema_tag(part)) or "(top level)"
        message = problem["msg"]
        tagged = any(_is_schema_tag(part) for part in problem["loc"])
        if tagged and key == previous_tagged_key:
            message = f"{entries.pop()[1]}, or {message[:1].lower()}{message[1:]}"
        previous_tagged_key = key if tagged else None
        entries.append((key, message))
    lines = [f"{source} is invalid ({len(entries)} problem(s)); fix these keys:"]
    lines.extend(f"  {key}: {message}" for key, message in entries)
    return "\n".join(lines)


def _is_schema_tag(part: int | str) -> bool:
    # Field names and list indexes never contain brackets; pydantic-core's schema names do.
    return isinstance(part, str) and "[" in part


def load_config(path: Path | None = None) -> NodeConfig:
    """Read, check the permissions of, and validate the node config file.

    The path is, in order: the argument, $MAILCOW_HA_CONFIG, /etc/mailcow-ha/node.yaml.
    The file holds secrets, so a file that group or others may read is rejected.
    """
    if path is None:
        path = Path(os.environ.get(CONFIG_PATH_ENV, str(DEFAULT_CONFIG_PATH)))
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"node config {path} not found; pass --config or set {CONFIG_PATH_ENV}") from None
    except OSError as error:
        raise ConfigError(f"node config {path} could not be read: {error.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"node config {path} has mode {stat.S_IMODE(mode):04o} but contains secrets; run chmod 600 {path}"
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"node config {path} is not valid YAML{where}; fix the syntax") from None
    return parse_config(data, source=f"node config {path}")
