"""One hcloud client per thread, bounded for a failover path, and the failure of one request.

hcloud 2.x retries some errors by itself and has no request timeout by default. ThreadClient
switches its retries off, bounds every request by the step's deadline, and keeps the response
headers (the rate limit's) of the last request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hcloud
import requests

from mailcow_ha import __version__
from mailcow_ha.config import HetznerSettings
from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import CloudError

MIN_REQUEST_TIMEOUT = 0.05


class ApiFailure(Exception):
    """One failed request with its error code, converted to CloudError when it is not retried."""

    def __init__(self, operation: str, code: str, message: str, correlation_id: str | None, reset_in: float | None):
        super().__init__(f"{operation}: {code} ({message})")
        self.operation = operation
        self.code = code
        self.message = message
        self.correlation_id = correlation_id
        self.rate_limit_reset_in = reset_in

    def to_cloud_error(self, reason: str) -> CloudError:
        where = f", correlation id {self.correlation_id}" if self.correlation_id else ""
        return CloudError(
            f"Hetzner Cloud API: {self.operation} failed with {self.code} ({self.message}){where}; {reason}; "
            "check the resource in the Cloud Console and the API status, then retry",
            code=self.code,
            correlation_id=self.correlation_id,
        )


class ThreadClient:
    """One hcloud client with its own requests session, configured for bounded use."""

    def __init__(self, settings: HetznerSettings) -> None:
        self.client = hcloud.Client(
            settings.token.get_secret_value(),
            api_endpoint=settings.endpoint,
            application_name="mailcow-ha",
            application_version=__version__,
            poll_interval=settings.poll_interval,
            poll_max_retries=1,
            timeout=(settings.connect_timeout, settings.request_timeout),
        )
        # NOTE: hcloud 2.x has no constructor arguments for its retry count or its session, so the
        # private attributes are set here. test_hetzner_adapter checks that no request is repeated.
        base = self.client._client
        for attribute in ("_retry_max_retries", "_session", "_timeout"):
            if not hasattr(base, attribute):
                raise CloudError(
                    f"hcloud {hcloud.__version__} has no ClientBase.{attribute}; the adapter cannot bound "
                    "its requests; install the hcloud version that runtime/pyproject.toml pins"
                )
        base._retry_max_retries = 0
        session: requests.Session = base._session
        session.trust_env = False  # no proxy or .netrc from the environment may replace the token header
        session.hooks["response"].append(self._remember_headers)
        self._base = base
        self.last_headers: Mapping[str, str] = {}

    def _remember_headers(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.last_headers = response.headers

    def bound_timeout(self, connect: float, read: float, deadline: Deadline) -> None:
        remaining = max(MIN_REQUEST_TIMEOUT, deadline.remaining())
        self._base._timeout = (min(connect, remaining), min(read, remaining))
        self.last_headers = {}
