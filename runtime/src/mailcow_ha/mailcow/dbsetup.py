"""Create mailcow's database and the database users on a new cluster.

mailcow's own mysql container creates its database and user from mailcow.conf on first start.
That container is disabled here, so the node that bootstraps a new cluster creates them, and
Galera replicates the statements to every member. Every statement is idempotent.
"""

from __future__ import annotations

import logging

import pymysql

from mailcow_ha.config import NodeConfig
from mailcow_ha.errors import DatabaseError
from mailcow_ha.mailcow import sql

log = logging.getLogger(__name__)


def ensure_database_users(config: NodeConfig, *, timeout: float = 30.0) -> list[str]:
    """Create mailcow's database, mailcow's user and the runtime's status user if missing.

    Returns what was ensured, for the log. mailcow's user is skipped when the node config has no
    mailcow.db_password, because the password is then only in mailcow.conf.
    """
    mailcow = config.mailcow
    galera = config.galera
    statements: list[tuple[str, tuple[str, ...]]] = [
        (f"CREATE DATABASE IF NOT EXISTS `{mailcow.db_name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci", ()),
        (
            "CREATE USER IF NOT EXISTS %s@'localhost' IDENTIFIED BY %s",
            (galera.user, galera.password.get_secret_value()),
        ),
    ]
    ensured = [f"database {mailcow.db_name}", f"user {galera.user}"]
    if mailcow.db_password is not None:
        statements += [
            (
                "CREATE USER IF NOT EXISTS %s@'localhost' IDENTIFIED BY %s",
                (mailcow.db_user, mailcow.db_password.get_secret_value()),
            ),
            (f"GRANT ALL PRIVILEGES ON `{mailcow.db_name}`.* TO %s@'localhost'", (mailcow.db_user,)),
        ]
        ensured.append(f"user {mailcow.db_user} with all privileges on {mailcow.db_name}")
    else:
        log.warning("mailcow.db_password is not set; create mailcow's database user with mailcow.conf's DBPASS")

    with sql.admin_connection(galera.socket, timeout=timeout) as connection:
        try:
            with connection.cursor() as cursor:
                for statement, arguments in statements:
                    cursor.execute(statement, arguments or None)
        except pymysql.MySQLError as error:
            # The server's message may quote the statement, password included, so only the code is kept.
            raise DatabaseError(
                f"creating mailcow's database and users failed with MariaDB error {sql.error_code(error)}; "
                "check the server's error log"
            ) from None
    log.info("ensured %s", ", ".join(ensured))
    return ensured
