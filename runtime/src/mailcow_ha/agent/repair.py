"""Put floating IPs that the master's public interface lacks back on it, on a helper thread.

Adding an address runs `ip`, which waits for the kernel's routing lock. The agent's main loop
must not wait for that, so each repair runs on its own thread, one at a time, at most every
REPAIR_INTERVAL seconds. The floating IP probe runs again after a repair and shows the result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mailcow_ha.adapters.netif import NetworkInterfaceError, add_address
from mailcow_ha.health.system import FloatingIpProbe

log = logging.getLogger(__name__)

REPAIR_INTERVAL = 10.0
"""Seconds between two attempts to put a missing floating IP back on the public interface."""


class FloatingIpRepair:
    """Adds the floating IPs the probe found missing; `on_done` is called after each repair."""

    def __init__(
        self,
        probe: FloatingIpProbe,
        *,
        timeout: float,
        on_done: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probe = probe
        self.timeout = timeout
        self._on_done = on_done
        self._clock = clock
        self._next_at = 0.0
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, missing: tuple[str, ...]) -> bool:
        """Start a repair of the `missing` addresses unless one runs or the last was too recent."""
        now = self._clock()
        if self.running or now < self._next_at or not missing:
            return False
        self._next_at = now + REPAIR_INTERVAL
        self._thread = threading.Thread(
            target=self._repair, args=(missing,), name="mailcow-ha-floating-ip-repair", daemon=True
        )
        self._thread.start()
        return True

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _repair(self, missing: tuple[str, ...]) -> None:
        interface = self.probe.interface
        for address in self.probe.floating_ips:
            if str(address) not in missing:
                continue
            try:
                add_address(interface, address, timeout=self.timeout)
                log.warning("floating IP %s was missing on %s; added it again", address, interface)
            except NetworkInterfaceError as error:
                log.error("floating IP %s is missing on %s and could not be added: %s", address, interface, error)
        try:
            self._on_done()
        except Exception:
            log.exception("reporting the floating IP repair failed")
