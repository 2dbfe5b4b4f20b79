"""Find and fix mailcow tables without a primary key, which Galera cannot replicate safely.

Galera certifies and applies row changes by primary key. On a table without one, a DELETE or
UPDATE of several rows may be applied differently on each member, and Galera's documentation
lists tables without primary keys as unsupported. mailcow's schema has such tables (fido2,
tags_domain, tags_mailbox among them). The fix adds an AUTO_INCREMENT column that MariaDB
marks INVISIBLE (available since MariaDB 10.3): `SELECT *` and `INSERT` without a column list
do not see it, so mailcow's queries keep working unchanged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pymysql

from mailcow_ha.errors import DatabaseError
from mailcow_ha.mailcow import sql

log = logging.getLogger(__name__)

PRIMARY_KEY_COLUMN = "mailcow_ha_pk"
"""Name of the invisible column that `db fix` adds."""
DDL_TIMEOUT = 600.0
"""Seconds one ALTER TABLE may take; Galera runs it on every member at once (total order isolation)."""

_IDENTIFIER = re.compile(r"^[A-Za-z0-9_$]{1,64}$")

_TABLES_WITHOUT_PRIMARY_KEY = """
SELECT t.table_name
FROM information_schema.tables AS t
LEFT JOIN information_schema.table_constraints AS c
  ON c.table_schema = t.table_schema AND c.table_name = t.table_name AND c.constraint_type = 'PRIMARY KEY'
WHERE t.table_schema = %s AND t.table_type = 'BASE TABLE' AND c.constraint_name IS NULL
ORDER BY t.table_name
"""


_AUTO_INCREMENT_COLUMNS = """
SELECT table_name, column_name
FROM information_schema.columns
WHERE table_schema = %s AND extra LIKE '%%auto_increment%%'
"""


@dataclass(frozen=True)
class FixResult:
    table: str
    statement: str
    key_column: str = PRIMARY_KEY_COLUMN
    """The column that became the primary key: the added invisible one, or an existing AUTO_INCREMENT column."""

    def describe(self, schema: str) -> str:
        if self.key_column == PRIMARY_KEY_COLUMN:
            return f"added invisible primary key {PRIMARY_KEY_COLUMN} to {schema}.{self.table}"
        return f"made the AUTO_INCREMENT column {self.key_column} the primary key of {schema}.{self.table}"


def quote_identifier(name: str) -> str:
    """Return `name` in backquotes, rejecting names that need escaping (mailcow uses none)."""
    if not _IDENTIFIER.match(name):
        raise DatabaseError(f"table or database name {name!r} contains unexpected characters; fix it by hand")
    return f"`{name}`"


def tables_without_primary_key(socket: Path, schema: str, *, timeout: float = 30.0) -> list[str]:
    """Return the base tables of `schema` that have no PRIMARY KEY, sorted by name."""
    rows = sql.query(socket, "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", [schema])
    if not rows:
        raise DatabaseError(f"database {schema!r} not found on {socket}; check mailcow.db_name in the node config")
    return [str(row[0]) for row in sql.query(socket, _TABLES_WITHOUT_PRIMARY_KEY, [schema], timeout=timeout)]


def fix_statement(
    schema: str, table: str, column: str = PRIMARY_KEY_COLUMN, *, auto_increment: str | None = None
) -> str:
    """Return the ALTER TABLE that gives `table` a primary key.

    A table may have only one AUTO_INCREMENT column, and MariaDB requires it to be indexed. So
    a table that already has one gets that column as its primary key (its values are unique
    unless someone inserted duplicates by hand), and every other table gets the invisible column.
    """
    qualified = f"{quote_identifier(schema)}.{quote_identifier(table)}"
    if auto_increment is not None:
        return f"ALTER TABLE {qualified} ADD PRIMARY KEY ({quote_identifier(auto_increment)})"
    quoted_column = quote_identifier(column)
    return (
        f"ALTER TABLE {qualified} ADD COLUMN {quoted_column} BIGINT UNSIGNED NOT NULL AUTO_INCREMENT INVISIBLE, "
        f"ADD PRIMARY KEY ({quoted_column})"
    )


def auto_increment_columns(socket: Path, schema: str, *, timeout: float = 30.0) -> dict[str, str]:
    """Return table name -> its AUTO_INCREMENT column, for the tables of `schema` that have one."""
    rows = sql.query(socket, _AUTO_INCREMENT_COLUMNS, [schema], timeout=timeout)
    return {str(table): str(column) for table, column in rows}


def plan_fixes(socket: Path, schema: str, tables: Sequence[str]) -> list[FixResult]:
    """Return the statement that gives each table a primary key, in the order given."""
    existing = auto_increment_columns(socket, schema)
    plans = []
    for table in tables:
        column = existing.get(table)
        statement = fix_statement(schema, table, auto_increment=column)
        plans.append(FixResult(table, statement, column or PRIMARY_KEY_COLUMN))
    return plans


def add_primary_keys(
    socket: Path, schema: str, tables: Sequence[str], *, timeout: float = DDL_TIMEOUT
) -> list[FixResult]:
    """Give each table a primary key in turn (see fix_statement); stop at the first failure."""
    results: list[FixResult] = []
    plans = plan_fixes(socket, schema, tables)
    with sql.admin_connection(socket, timeout=timeout) as connection:
        for plan in plans:
            log.info("%s", plan.describe(schema))
            try:
                with connection.cursor() as cursor:
                    cursor.execute(plan.statement)
            except pymysql.MySQLError as error:
                done = ", ".join(result.table for result in results) or "none"
                raise DatabaseError(
                    f"adding a primary key to {schema}.{plan.table} failed: {sql.describe(error)}; "
                    f"tables already fixed: {done}"
                ) from None
            results.append(plan)
    return results
