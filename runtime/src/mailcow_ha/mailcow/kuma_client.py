"""Uptime Kuma through uptime-kuma-api-ng (module `uptime_kuma_api`), with errors converted to KumaError.

uptime-kuma-api-ng 1.10 states in its README that it supports Uptime Kuma 1.21.3 up to current
2.x releases. It talks Socket.IO and waits at most `timeout` seconds for the connection and for
each reply.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

import uptime_kuma_api  # type: ignore[import-untyped]

from mailcow_ha.mailcow.kuma import KumaApi, KumaError

log = logging.getLogger(__name__)

_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")


@contextlib.contextmanager
def connect(url: str, username: str, password: str, *, timeout: float = 10.0) -> Iterator[KumaApi]:
    """Connect and log in; the connection is closed when the block ends."""
    if not _URL.match(url):
        raise KumaError(f"Uptime Kuma URL {url!r} is invalid; expected http(s)://host[:port]")
    try:
        api = uptime_kuma_api.UptimeKumaApi(url, timeout=timeout, wait_events=0.2)
    except uptime_kuma_api.UptimeKumaException as error:
        raise KumaError(f"could not connect to Uptime Kuma at {url}: {error}; check the URL and that it runs") from None
    try:
        try:
            api.login(username, password)
        except uptime_kuma_api.UptimeKumaException as error:
            raise KumaError(
                f"login to Uptime Kuma at {url} as {username!r} failed: {error}; check the username and password"
            ) from None
        yield _Checked(api, url)
    finally:
        with contextlib.suppress(Exception):
            api.disconnect()


class _Checked:
    """Forwards the sync's calls and turns the library's exceptions into KumaError."""

    def __init__(self, api: Any, url: str) -> None:
        self._api = api
        self._url = url

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._api, method)(*args, **kwargs)
        except uptime_kuma_api.UptimeKumaException as error:
            name = kwargs.get("name", args[0] if args else "")
            raise KumaError(f"Uptime Kuma at {self._url} rejected {method} {name}: {error}") from None
        except (TypeError, ValueError) as error:
            raise KumaError(f"{method} {kwargs.get('name', '')}: invalid value for this Uptime Kuma: {error}") from None

    def get_monitors(self) -> list[dict[str, Any]]:
        return list(self._call("get_monitors"))

    def add_monitor(self, **kwargs: Any) -> dict[str, Any]:
        return dict(self._call("add_monitor", **kwargs))

    def edit_monitor(self, id_: int, **kwargs: Any) -> dict[str, Any]:
        return dict(self._call("edit_monitor", id_, **kwargs))

    def delete_monitor(self, id_: int) -> dict[str, Any]:
        return dict(self._call("delete_monitor", id_))

    def get_notifications(self) -> list[dict[str, Any]]:
        return list(self._call("get_notifications"))

    def add_notification(self, **kwargs: Any) -> dict[str, Any]:
        return dict(self._call("add_notification", **kwargs))

    def edit_notification(self, id_: int, **kwargs: Any) -> dict[str, Any]:
        return dict(self._call("edit_notification", id_, **kwargs))
