"""Watch the VRRP adverts on the private network, to see which node keepalived made MASTER.

Only a MASTER sends adverts, every `advert_int`; a MASTER that steps down sends one with
priority 0. A raw socket in the private bridge's namespace sees every frame entering the
bridge from a node's port, so the lab learns each MASTER period from the wire, the way a
network tap would, without asking the nodes.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass

from lab.nsexec import join_network_namespace

log = logging.getLogger(__name__)

_ETH_P_ALL = 0x0003
"""Every protocol: a bridge port hands its frames to the bridge before per-protocol sockets get them."""
_ETHERTYPE_IPV4 = b"\x08\x00"
_PACKET_OUTGOING = 4
_VRRP_PROTOCOL = 112


@dataclass(frozen=True)
class Advert:
    """One VRRP advert seen on the wire."""

    time: float
    """Monotonic time of receipt."""
    source: str
    priority: int


class VrrpWatcher:
    """Records every VRRP advert on the private network from a background thread."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._lock = threading.Lock()
        self._adverts: list[Advert] = []
        self._last: dict[str, Advert] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="lab-vrrp-watcher", daemon=True)

    def start(self, timeout: float = 5.0) -> None:
        self._thread.start()
        self._ready.wait(timeout)
        if self._error is not None:
            raise OSError(self._error)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            join_network_namespace(self.namespace)
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        except OSError as error:
            self._error = f"VRRP watcher in {self.namespace}: {error}"
            self._ready.set()
            return
        sock.settimeout(0.2)
        self._ready.set()
        with sock:
            while not self._stop.is_set():
                try:
                    frame, address = sock.recvfrom(2048)
                except TimeoutError:
                    continue
                if address[2] == _PACKET_OUTGOING or not str(address[0]).startswith("n"):
                    continue
                advert = _parse(frame)
                if advert is not None:
                    with self._lock:
                        self._adverts.append(advert)
                        self._last[advert.source] = advert

    def adverts(self, since: float = 0.0) -> list[Advert]:
        with self._lock:
            return [advert for advert in self._adverts if advert.time >= since]

    def masters(self, window: float = 1.5) -> list[str]:
        """Return the sources of adverts with non-zero priority in the last `window` seconds."""
        now = time.monotonic()
        with self._lock:
            return sorted(
                source for source, advert in self._last.items() if advert.priority > 0 and now - advert.time <= window
            )


def _parse(frame: bytes) -> Advert | None:
    """Return the advert in an Ethernet frame carrying IPv4 VRRP, or None for anything else."""
    if len(frame) < 14 + 20 + 8 or frame[12:14] != _ETHERTYPE_IPV4:
        return None
    ip_header = frame[14:]
    header_length = (ip_header[0] & 0x0F) * 4
    if ip_header[9] != _VRRP_PROTOCOL or len(ip_header) < header_length + 8:
        return None
    source = socket.inet_ntoa(struct.pack("!4s", ip_header[12:16]))
    priority = ip_header[header_length + 2]
    return Advert(time.monotonic(), source, priority)
