"""The Hetzner Cloud API through the official `hcloud` client, bounded for a failover path.

No library default reaches a failover: every request has a connect and read timeout shortened to
the step's deadline, the client's own retries are switched off, and actions are polled here. A
read is retried inside this module when its error is transient (see hetzner_policy). A mutating
call is sent once per round. After a transient error the round starts over by reading the
resource again, because a request that timed out may still have taken effect. hcloud errors are
converted into CloudError with the API's code and correlation id.

Each thread gets its own hcloud client (requests sessions are not thread-safe), so promote may
assign floating IPs and move the volume in parallel threads through one HetznerCloud.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import hcloud
import requests
from hcloud.actions import BoundAction
from hcloud.floating_ips import FloatingIP
from hcloud.servers import Server
from hcloud.volumes import Volume

from mailcow_ha.adapters.hetzner_client import ApiFailure, ThreadClient
from mailcow_ha.adapters.hetzner_policy import (
    CONNECTION_ERROR,
    RATE_LIMITED,
    REQUEST_TIMEOUT,
    VOLUME_ALREADY_ATTACHED,
    RetryPolicy,
    VolumeStep,
    decide_retry,
    decide_volume_step,
    floating_ips_to_assign,
    is_retryable,
    rate_limit_wait,
)
from mailcow_ha.config import HetznerSettings
from mailcow_ha.deadline import Clock, Deadline, Sleep
from mailcow_ha.errors import CloudError, DeadlineExceeded

log = logging.getLogger(__name__)

T = TypeVar("T")
Checkpoint = Callable[[], None]
BeforeDetach = Callable[[int, Deadline], None]
"""Called with the holder's server id before the volume is detached from it; may wait, or raise to stop."""

MAX_DETACHES = 3
"""Detaches of the shared volume in one move; more means another node keeps attaching it."""


@dataclass(frozen=True)
class CloudHolders:
    """Server ids of the configured floating IPs and volumes, by resource id (None: on no server)."""

    floating_ips: Mapping[int, int | None]
    volumes: Mapping[int, int | None]


@dataclass(frozen=True)
class ServerInfo:
    id: int
    name: str
    labels: Mapping[str, str]
    status: str
    private_ip: str | None
    """The address in the server's first private network, None when it is in none."""
    public_ipv4: str | None


@dataclass(frozen=True)
class VolumeInfo:
    id: int
    name: str
    size_gb: int
    server_id: int | None
    linux_device: str
    location: str


class HetznerCloud:
    """The runtime's view of the Hetzner Cloud API: floating IPs, the shared volume, servers."""

    def __init__(
        self,
        settings: HetznerSettings,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        wall_clock: Clock = time.time,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._policy = RetryPolicy(settings.retry_backoff_initial, settings.retry_backoff_max)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"HetznerCloud(endpoint={self._settings.endpoint!r}, server_id={self._settings.server_id!r})"

    # --- operations ----------------------------------------------------------------------------

    def assign_floating_ips(self, server_id: int, deadline: Deadline, checkpoint: Checkpoint) -> None:
        """Assign every configured floating IP to `server_id` and wait for the actions.

        Floating IPs already there are left alone. `checkpoint()` runs before every assign and
        between two polls of an action, and may raise (Superseded) to stop the step; that propagates.
        """
        attempt = 0
        while True:
            holders = {fip_id: self._floating_ip_holder(fip_id, deadline) for fip_id in self._settings.floating_ip_ids}
            pending, reason = floating_ips_to_assign(holders, server_id)
            log.info("%s", reason)
            if not pending:
                return
            try:
                actions = [(fip_id, self._assign(fip_id, server_id, deadline, checkpoint)) for fip_id in pending]
                for fip_id, action in actions:
                    self._wait_action(
                        action, f"assign floating IP {fip_id} to server {server_id}", deadline, checkpoint
                    )
            except ApiFailure as failure:
                self._back_off(failure, attempt, deadline)
                attempt += 1

    def move_volume_here(
        self,
        volume_id: int,
        server_id: int,
        deadline: Deadline,
        checkpoint: Checkpoint,
        before_detach: BeforeDetach | None = None,
    ) -> None:
        """Attach `volume_id` to `server_id`, detaching it from another server first.

        Before the first detach from a server, `before_detach(holder, deadline)` runs, so that the
        caller can wait until the holder released the volume. After a detach it re-reads the
        volume until the API shows it unattached. It returns once the API shows the volume on
        `server_id`. `checkpoint()` runs before every detach and attach and between two polls.
        """
        attempt = 0
        detaches = 0
        rejections = 0
        asked: set[int] = set()
        while True:
            holder = self._volume_holder(volume_id, deadline)
            step, reason = decide_volume_step(volume_id, holder, server_id)
            log.info("%s", reason)
            if step is VolumeStep.DONE:
                return
            try:
                if step is VolumeStep.DETACH:
                    assert holder is not None
                    if before_detach is not None and holder not in asked:
                        asked.add(holder)
                        before_detach(holder, deadline)
                    self._detach(volume_id, holder, detaches, deadline, checkpoint)
                    detaches += 1
                else:
                    self._attach(volume_id, server_id, deadline, checkpoint)
            except ApiFailure as failure:
                if is_retryable(failure.code):
                    self._back_off(failure, attempt, deadline)
                    attempt += 1
                    continue
                rejections += 1
                if failure.code != VOLUME_ALREADY_ATTACHED and step is not VolumeStep.DETACH:
                    raise failure.to_cloud_error(f"error code {failure.code} is not retryable") from None
                if rejections > MAX_DETACHES:
                    raise failure.to_cloud_error(f"the API rejected the {step} {rejections} times") from None
                # The volume changed between the read and the call: attached by another server,
                # or detached meanwhile. The next round reads it again and decides anew.
                log.warning("%s; reading the volume again", failure)

    def holders(self, deadline: Deadline) -> CloudHolders:
        """Read the server that each configured floating IP and the shared volume is on."""
        fips = {fip_id: self._floating_ip_holder(fip_id, deadline) for fip_id in self._settings.floating_ip_ids}
        volume_id = self._settings.shared_volume_id
        return CloudHolders(floating_ips=fips, volumes={volume_id: self._volume_holder(volume_id, deadline)})

    def cluster_servers(self, cluster: str, deadline: Deadline) -> list[ServerInfo]:
        """List the servers labelled `cluster=<cluster>`, sorted by name."""
        servers = self._read(
            f"list servers with label cluster={cluster}",
            lambda client: client.servers.get_all(label_selector=f"cluster={cluster}"),
            deadline,
        )
        return sorted((_server_info(server) for server in servers), key=lambda info: info.name)

    def server_id_by_name(self, name: str, deadline: Deadline) -> int:
        """Return the id of the server called `name`; CloudError(code="not_found") if there is none."""
        page = self._read(f"find server {name!r}", lambda client: client.servers.get_list(name=name), deadline)
        if not page.servers:
            raise CloudError(
                f"Hetzner Cloud API: no server named {name!r} in the token's project; check node.name in the "
                "node config and that the API token belongs to the cluster's project",
                code="not_found",
            )
        return _field(page.servers[0].data_model.id, "server id")

    def volume(self, volume_id: int, deadline: Deadline) -> VolumeInfo:
        """Read a volume's size, location, device path and the server it is attached to."""
        volume = self._read(f"read volume {volume_id}", lambda client: client.volumes.get_by_id(volume_id), deadline)
        return _volume_info(volume.data_model)

    # --- steps ---------------------------------------------------------------------------------

    def _detach(self, volume_id: int, holder: int, detaches: int, deadline: Deadline, checkpoint: Checkpoint) -> None:
        """Detach the volume from `holder`, wait for the action, then until the API shows it free."""
        if detaches >= MAX_DETACHES:
            raise CloudError(
                f"volume {volume_id} was attached to another server (now {holder}) again after {MAX_DETACHES} "
                "detaches; another node may be promoting at the same time; check keepalived on every node",
                code="volume_contended",
            )
        operation = f"detach volume {volume_id} from server {holder}"
        action = self._mutate(
            operation, lambda client: client.volumes.detach(Volume(id=volume_id)), deadline, checkpoint
        )
        self._wait_action(action, operation, deadline, checkpoint)
        while self._volume_holder(volume_id, deadline) == holder:
            log.info("volume %s still shows server %s after the detach; reading it again", volume_id, holder)
            self._pause(self._settings.poll_interval, deadline, f"volume {volume_id} to show no server")
            checkpoint()

    def _attach(self, volume_id: int, server_id: int, deadline: Deadline, checkpoint: Checkpoint) -> None:
        def call(client: hcloud.Client) -> BoundAction:
            return client.volumes.attach(Volume(id=volume_id), Server(id=server_id), automount=False)

        operation = f"attach volume {volume_id} to server {server_id}"
        self._wait_action(self._mutate(operation, call, deadline, checkpoint), operation, deadline, checkpoint)

    def _assign(self, fip_id: int, server_id: int, deadline: Deadline, checkpoint: Checkpoint) -> BoundAction:
        def call(client: hcloud.Client) -> BoundAction:
            return client.floating_ips.assign(FloatingIP(id=fip_id), Server(id=server_id))

        return self._mutate(f"assign floating IP {fip_id} to server {server_id}", call, deadline, checkpoint)

    def _floating_ip_holder(self, fip_id: int, deadline: Deadline) -> int | None:
        fip = self._read(f"read floating IP {fip_id}", lambda client: client.floating_ips.get_by_id(fip_id), deadline)
        server = fip.data_model.server
        return _field(server.id, "floating IP server id") if server is not None else None

    def _volume_holder(self, volume_id: int, deadline: Deadline) -> int | None:
        return self.volume(volume_id, deadline).server_id

    def _wait_action(self, action: BoundAction, operation: str, deadline: Deadline, checkpoint: Checkpoint) -> None:
        """Poll an action until it ends; raise CloudError when it ends in error.

        `checkpoint()` runs between two polls, so a newer keepalived state stops the wait within
        one poll interval. The action itself goes on in the API.
        """
        action_id = int(action.id)
        while action.status == "running":
            self._pause(self._settings.poll_interval, deadline, f"action {action_id} ({operation})")
            checkpoint()
            try:
                action = self._read(
                    f"read action {action_id}", lambda client: client.actions.get_by_id(action_id), deadline
                )
            except DeadlineExceeded as error:
                raise DeadlineExceeded(
                    f"{deadline.step} timed out waiting for action {action_id} ({operation})"
                ) from error
        if action.status == "error":
            details: Mapping[str, Any] = action.error or {}
            code = str(details.get("code", "unknown"))
            message = details.get("message", "")
            raise CloudError(
                f"Hetzner Cloud API: {operation}: action {action_id} ended in error {code} ({message}); "
                "check the action in the Cloud Console, then retry",
                code=code,
            )
        log.info("%s: action %s succeeded", operation, action_id)

    def _pause(self, seconds: float, deadline: Deadline, waiting_for: str) -> None:
        remaining = deadline.remaining()
        if remaining <= 0:
            raise DeadlineExceeded(f"{deadline.step} timed out waiting for {waiting_for}")
        self._sleep(min(seconds, remaining))

    def _back_off(self, failure: ApiFailure, attempt: int, deadline: Deadline) -> None:
        """Sleep before retrying a failed request, or raise CloudError or DeadlineExceeded."""
        decision = decide_retry(
            failure.code,
            attempt,
            deadline.remaining(),
            self._policy,
            rate_limit_reset_in=failure.rate_limit_reset_in,
        )
        log.warning("%s, correlation id %s: %s", failure, failure.correlation_id, decision.reason)
        if decision.retry:
            self._sleep(decision.delay)
            return
        if decision.out_of_time and failure.code != RATE_LIMITED:
            raise DeadlineExceeded(f"{deadline.step} timed out: {failure}; {decision.reason}")
        raise failure.to_cloud_error(decision.reason)

    # --- requests ------------------------------------------------------------------------------

    def _client(self) -> ThreadClient:
        client: ThreadClient | None = getattr(self._local, "client", None)
        if client is None:
            client = ThreadClient(self._settings)
            self._local.client = client
        return client

    def _send(self, operation: str, call: Callable[[hcloud.Client], T], deadline: Deadline) -> T:
        """Send one request (several for paginated lists) and classify its failure."""
        if deadline.expired:
            raise DeadlineExceeded(f"{deadline.step} timed out before: {operation}")
        client = self._client()
        client.bound_timeout(self._settings.connect_timeout, self._settings.request_timeout, deadline)
        try:
            return call(client.client)
        except hcloud.APIException as error:
            code = error.code if isinstance(error.code, str) else f"http_{error.code}"
            reset_in = self._reset_in(client.last_headers)
            raise ApiFailure(operation, code, str(error.message), error.correlation_id, reset_in) from None
        except requests.exceptions.Timeout:
            raise ApiFailure(operation, REQUEST_TIMEOUT, "no response within the read timeout", None, None) from None
        except requests.exceptions.RequestException as error:
            raise ApiFailure(operation, CONNECTION_ERROR, type(error).__name__, None, None) from None

    def _read(self, operation: str, call: Callable[[hcloud.Client], T], deadline: Deadline) -> T:
        """Send a read, retrying transient errors with backoff inside the deadline."""
        attempt = 0
        while True:
            try:
                return self._send(operation, call, deadline)
            except ApiFailure as failure:
                self._back_off(failure, attempt, deadline)
                attempt += 1

    def _mutate(
        self, operation: str, call: Callable[[hcloud.Client], T], deadline: Deadline, checkpoint: Checkpoint
    ) -> T:
        """Send a mutating request once, after `checkpoint()`, and never after the deadline."""
        checkpoint()
        result = self._send(operation, call, deadline)
        log.info("%s: accepted", operation)
        return result

    def _reset_in(self, headers: Mapping[str, str]) -> float | None:
        """Return the seconds until a rate-limited request may pass, from the response's headers."""
        raw = headers.get("RateLimit-Reset")
        reset_in: float | None = None
        if raw is not None:
            try:
                reset_in = float(raw) - self._wall_clock()
            except ValueError:
                log.warning("ignoring a RateLimit-Reset header that is not a number: %r", raw[:40])
        return rate_limit_wait(headers.get("RateLimit-Limit"), reset_in)


def _field(value: T | None, name: str) -> T:
    """Return a value the API always sends, or raise CloudError naming the missing field."""
    if value is None:
        raise CloudError(f"Hetzner Cloud API: the response has no {name}; check the endpoint in hetzner.endpoint")
    return value


def _volume_info(model: Volume) -> VolumeInfo:
    server = model.server
    location = model.location
    return VolumeInfo(
        id=_field(model.id, "volume id"),
        name=str(model.name),
        size_gb=_field(model.size, "volume size"),
        server_id=_field(server.id, "volume server id") if server is not None else None,
        linux_device=str(model.linux_device),
        location=str(location.name) if location is not None else "",
    )


def _server_info(server: Any) -> ServerInfo:
    model = server.data_model
    private = model.private_net or []
    public = model.public_net
    return ServerInfo(
        id=_field(model.id, "server id"),
        name=str(model.name),
        labels=dict(model.labels or {}),
        status=str(model.status),
        private_ip=str(private[0].ip) if private else None,
        public_ipv4=str(public.ipv4.ip) if public is not None and public.ipv4 is not None else None,
    )
