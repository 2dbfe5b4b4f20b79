"""Free TCP ports for the servers that tests start on loopback addresses."""

from __future__ import annotations

import socket

ATTEMPTS = 50


def free_port(*addresses: str) -> int:
    """Return a TCP port that is free on every address, 127.0.0.1 when none is given.

    The kernel picks a free port on the first address and the others are checked for it. The port
    is released again before the caller binds it, so another process may take it in between.
    """
    candidates = addresses or ("127.0.0.1",)
    first, *others = candidates
    for _ in range(ATTEMPTS):
        with socket.socket() as probe:
            probe.bind((first, 0))
            port = int(probe.getsockname()[1])
        try:
            for address in others:
                with socket.socket() as other:
                    other.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no TCP port free on all of {', '.join(candidates)} in {ATTEMPTS} attempts")
