"""Administrative connections to the local MariaDB Galera member through its unix socket.

The commands of this package (db check/fix, first boot, bootstrap, backup) run as root on the
node, and Debian's MariaDB authenticates root@localhost by the socket peer's user id, so no
password is needed or stored for them. Every connection has explicit timeouts, and pymysql's
errors become DatabaseError naming the socket.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pymysql

from mailcow_ha.errors import DatabaseError

log = logging.getLogger(__name__)

ADMIN_USER = "root"

# MariaDB error numbers that mean "the server is not running on this socket".
CONNECTION_REFUSED_ERRORS = frozenset({2002, 2003})


class ServerNotRunning(DatabaseError):
    """No server listens on the socket (it is missing or refuses connections)."""


@contextlib.contextmanager
def admin_connection(
    socket: Path, *, timeout: float = 10.0, database: str | None = None
) -> Iterator[pymysql.connections.Connection[Any]]:
    """Open an autocommit connection as root through `socket` and close it afterwards."""
    try:
        connection = pymysql.connect(
            unix_socket=str(socket),
            user=ADMIN_USER,
            database=database,
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
            autocommit=True,
        )
    except pymysql.MySQLError as error:
        if error_code(error) in CONNECTION_REFUSED_ERRORS:
            raise ServerNotRunning(f"no MariaDB server runs on {socket}: {describe(error)}") from None
        raise DatabaseError(f"connecting to MariaDB on {socket} failed: {describe(error)}") from None
    try:
        yield connection
    finally:
        connection.close()


def query(
    socket: Path, statement: str, arguments: Sequence[Any] | None = None, *, timeout: float = 10.0
) -> list[tuple[Any, ...]]:
    """Run one statement as root and return its rows."""
    with admin_connection(socket, timeout=timeout) as connection:
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement, arguments)
                return list(cursor.fetchall())
        except pymysql.MySQLError as error:
            raise DatabaseError(f"query on {socket} failed: {describe(error)}") from None


def describe(error: pymysql.MySQLError) -> str:
    """Return `(code) message` for a pymysql error without any connection parameters."""
    if len(error.args) >= 2:
        return f"({error.args[0]}) {error.args[1]}"
    return str(error) or type(error).__name__


def error_code(error: pymysql.MySQLError) -> int | None:
    code = error.args[0] if error.args else None
    return code if isinstance(code, int) else None
