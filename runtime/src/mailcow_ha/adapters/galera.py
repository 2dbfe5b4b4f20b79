"""The local MariaDB Galera member, queried through pymysql over its unix socket.

Every call is bounded: pymysql's connect, read and write timeouts are set from the caller's
deadline, so a server that accepts the connection but never replies (a hung mariadbd) makes the
call fail at its deadline instead of blocking the agent. The probe keeps one connection open
between calls, because reconnecting twice a second would cost more CPU than the query itself,
and drops it after any error. pymysql errors become DatabaseError naming the socket; the
password never appears in a message.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

from mailcow_ha.deadline import Deadline
from mailcow_ha.errors import DatabaseError, DeadlineExceeded

log = logging.getLogger(__name__)

STATUS_VARIABLES = (
    "wsrep_ready",
    "wsrep_cluster_status",
    "wsrep_local_state_comment",
    "wsrep_cluster_size",
    "wsrep_cluster_state_uuid",
    "wsrep_last_committed",
)
_STATUS_QUERY = "SHOW GLOBAL STATUS WHERE Variable_name IN ({})".format(
    ", ".join(f"'{name}'" for name in STATUS_VARIABLES)
)

MIN_TIMEOUT = 0.05
"""pymysql treats a timeout of 0 as "none", so a nearly expired deadline still gets this many seconds."""


@dataclass(frozen=True)
class GaleraStatus:
    """The wsrep status variables that decide whether a member may serve writes."""

    ready: bool
    """`wsrep_ready` is ON: the member accepts queries."""
    cluster_status: str
    """`wsrep_cluster_status`: Primary, non-Primary or Disconnected."""
    local_state: str
    """`wsrep_local_state_comment`: Synced, Donor/Desynced, Joining, Joined, Initialized, ..."""
    cluster_size: int
    cluster_uuid: str
    last_committed: int


def parse_status(rows: dict[str, str]) -> GaleraStatus:
    """Build a GaleraStatus from `SHOW GLOBAL STATUS` rows; missing variables mean a member without wsrep."""
    missing = [
        name for name in ("wsrep_ready", "wsrep_cluster_status", "wsrep_local_state_comment") if name not in rows
    ]
    if missing:
        raise DatabaseError(
            f"the server reports no {', '.join(missing)}; it runs without Galera (check wsrep_on and wsrep_provider)"
        )
    return GaleraStatus(
        ready=rows["wsrep_ready"].upper() == "ON",
        cluster_status=rows["wsrep_cluster_status"],
        local_state=rows["wsrep_local_state_comment"],
        cluster_size=_integer(rows.get("wsrep_cluster_size"), 0),
        cluster_uuid=rows.get("wsrep_cluster_state_uuid", ""),
        last_committed=_integer(rows.get("wsrep_last_committed"), -1),
    )


class GaleraClient:
    """Reads the local member's wsrep status through its unix socket, one call at a time."""

    def __init__(self, socket: Path, user: str, password: str, *, timeout: float) -> None:
        self.socket = socket
        self.user = user
        self._password = password
        self.timeout = timeout
        self._connection: pymysql.connections.Connection[Any] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"GaleraClient(socket={str(self.socket)!r}, user={self.user!r})"

    def status(self, deadline: Deadline) -> GaleraStatus:
        """Return the member's wsrep status, failing with DatabaseError or DeadlineExceeded by `deadline`."""
        with self._lock:
            try:
                rows = self._query(deadline)
            except pymysql.MySQLError as error:
                self._drop()
                if deadline.expired:
                    raise DeadlineExceeded(
                        f"Galera status query on {self.socket} timed out ({deadline.step}); the server may be hung"
                    ) from None
                raise DatabaseError(f"Galera status query on {self.socket} failed: {_describe(error)}") from None
            except OSError as error:
                self._drop()
                raise DatabaseError(f"Galera status query on {self.socket} failed: {error}") from None
        return parse_status(rows)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _query(self, deadline: Deadline) -> dict[str, str]:
        timeout = max(MIN_TIMEOUT, min(self.timeout, deadline.remaining()))
        connection = self._connection
        if connection is None:
            connection = pymysql.connect(
                unix_socket=str(self.socket),
                user=self.user,
                password=self._password,
                connect_timeout=timeout,
                read_timeout=timeout,
                write_timeout=timeout,
                autocommit=True,
            )
            self._connection = connection
        else:
            # pymysql applies these to every later read and write on the socket.
            connection._read_timeout = timeout
            connection._write_timeout = timeout
        with connection.cursor() as cursor:
            cursor.execute(_STATUS_QUERY)
            return {str(name): str(value) for name, value in cursor.fetchall()}

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except (pymysql.MySQLError, OSError) as error:
                log.debug("closing the Galera connection raised %s", error)


def _integer(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _describe(error: pymysql.MySQLError) -> str:
    """Return `(code) message` of a pymysql error, which never contains the password."""
    args: tuple[object, ...] = tuple(error.args)
    if len(args) >= 2 and isinstance(args[0], int):
        return f"({args[0]}) {args[1]}"
    return f"{type(error).__name__}: {error}"
