"""Pure decisions of the Hetzner Cloud adapter: whether to retry an API error, and the next step
of moving a volume or a floating IP. Each returns an action and a reason string to log."""

from __future__ import annotations

import enum
from dataclasses import dataclass

RATE_LIMITED = "rate_limit_exceeded"
VOLUME_ALREADY_ATTACHED = "volume_already_attached"
REQUEST_TIMEOUT = "request_timeout"
CONNECTION_ERROR = "connection_error"

TRANSIENT_CODES = frozenset(
    {
        "locked",
        "conflict",
        "server_error",
        "service_error",
        "unavailable",
        "maintenance",
        "timeout",
        "bad_gateway",
        "robot_unavailable",
        REQUEST_TIMEOUT,
        CONNECTION_ERROR,
    }
)
"""Error codes after which the same request may succeed: a resource busy with another action,
a concurrent change, a server-side failure, or no response at all. HTTP statuses without a JSON
error body are classified as `http_<status>`, and every 5xx of those is transient too."""


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff between retries of transient errors, inside a step's deadline."""

    initial_backoff: float = 0.25
    max_backoff: float = 4.0
    rate_limit_margin: float = 0.05
    """Added to a rate limit's wait, so the retry does not arrive a moment too early."""


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay: float
    """Seconds to sleep before the retry; 0 when giving up."""
    reason: str
    out_of_time: bool = False
    """True when the error alone would be retried but the deadline leaves no time for it."""


def is_transient(code: str) -> bool:
    """Return whether an error with this code may go away when the request is repeated."""
    if code in TRANSIENT_CODES:
        return True
    return code.startswith("http_5")


def is_retryable(code: str) -> bool:
    """Return whether `decide_retry` may retry this code: a transient error or a rate limit."""
    return code == RATE_LIMITED or is_transient(code)


def rate_limit_wait(limit: str | None, reset_in: float | None) -> float | None:
    """Return the seconds until a rate-limited request may pass, from the 429's headers.

    RateLimit-Reset is when the budget is full again, which can be an hour away. The API refills
    the budget evenly, one request a second at 3600 an hour, so the next request may pass after
    3600/limit seconds or at the reset, whichever comes first. None when neither header can be used.
    NOTE: the even refill is Hetzner's description of its limit; it was not measured here, only
    against the fake, which models it.
    """
    slot: float | None = None
    if limit is not None and limit.isdigit() and int(limit) > 0:
        slot = 3600.0 / int(limit)
    if reset_in is None:
        return slot
    if slot is None:
        return max(0.0, reset_in)
    return max(0.0, min(reset_in, slot))


def backoff(attempt: int, policy: RetryPolicy) -> float:
    """Return the wait before retry number `attempt` (0-based): exponential, capped."""
    return float(min(policy.max_backoff, policy.initial_backoff * 2**attempt))


def decide_retry(
    code: str,
    attempt: int,
    remaining: float,
    policy: RetryPolicy,
    *,
    rate_limit_reset_in: float | None = None,
) -> RetryDecision:
    """Decide whether to retry after an error with `code`, `remaining` seconds before the deadline.

    A 429 waits `rate_limit_reset_in` (see rate_limit_wait) when that ends before the deadline,
    and gives up at once otherwise. Transient errors back off exponentially. Everything else fails.
    """
    if code == RATE_LIMITED:
        if rate_limit_reset_in is None:
            wait = backoff(attempt, policy)
            source = "no rate limit headers, backing off"
        else:
            wait = max(0.0, rate_limit_reset_in) + policy.rate_limit_margin
            source = "waiting for the budget's next refill"
        if wait >= remaining:
            reason = f"rate limited for {wait:.1f} s more, past the step's deadline ({remaining:.1f} s left)"
            return RetryDecision(False, 0.0, reason, out_of_time=True)
        return RetryDecision(True, wait, f"rate limited; {source} ({wait:.1f} s)")
    if not is_transient(code):
        return RetryDecision(False, 0.0, f"error code {code} is not retryable")
    wait = backoff(attempt, policy)
    if wait >= remaining:
        reason = f"retry {attempt + 1} in {wait:.2f} s would pass the step's deadline ({remaining:.2f} s left)"
        return RetryDecision(False, 0.0, reason, out_of_time=True)
    return RetryDecision(True, wait, f"{code} is transient; retry {attempt + 1} in {wait:.2f} s")


class VolumeStep(enum.StrEnum):
    """The next API call that moves a volume to this server."""

    DONE = "done"
    ATTACH = "attach"
    DETACH = "detach"


def decide_volume_step(volume_id: int, attached_to: int | None, server_id: int) -> tuple[VolumeStep, str]:
    """Return the next step of moving `volume_id` to `server_id`, given the server it is attached to."""
    if attached_to == server_id:
        return VolumeStep.DONE, f"volume {volume_id} is attached to this server {server_id}"
    if attached_to is None:
        return VolumeStep.ATTACH, f"volume {volume_id} is not attached; attaching it to server {server_id}"
    return (
        VolumeStep.DETACH,
        f"volume {volume_id} is attached to server {attached_to}; detaching it before attaching it to {server_id}",
    )


def floating_ips_to_assign(holders: dict[int, int | None], server_id: int) -> tuple[list[int], str]:
    """Return the floating IPs (by id) not yet assigned to `server_id`, and a reason to log."""
    pending = sorted(fip_id for fip_id, holder in holders.items() if holder != server_id)
    if not pending:
        return [], f"every floating IP is assigned to this server {server_id}"
    moves = ", ".join(f"{fip_id} (now on {holders[fip_id] or 'no server'})" for fip_id in pending)
    return pending, f"assigning floating IPs to server {server_id}: {moves}"
