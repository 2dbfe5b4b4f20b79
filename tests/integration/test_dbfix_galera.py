"""`db check` and `db fix` on a real Galera cluster with tables shaped like mailcow's."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from harness.galera import GaleraCluster
from harness.nodeconfig import deep_update, node_config_dict, write_node_config
from mailcow_ha.cli import main
from mailcow_ha.errors import DatabaseError, ExitCode
from mailcow_ha.mailcow import dbcheck

pytestmark = pytest.mark.integration

TABLES = (
    "CREATE TABLE fido2 (username VARCHAR(255) NOT NULL, friendlyName VARCHAR(255), "
    "rpId VARCHAR(255) NOT NULL, credentialPublicKey TEXT NOT NULL, certificateSubject VARCHAR(255), "
    "created DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, active TINYINT(1) NOT NULL DEFAULT 1)",
    "CREATE TABLE tags_domain (tag_name VARCHAR(255) NOT NULL, domain VARCHAR(255) NOT NULL, "
    "UNIQUE KEY tag_name (tag_name, domain))",
    "CREATE TABLE tags_mailbox (tag_name VARCHAR(255) NOT NULL, username VARCHAR(255) NOT NULL)",
    "CREATE TABLE mailbox (username VARCHAR(255) NOT NULL PRIMARY KEY, active TINYINT(1) NOT NULL DEFAULT 1)",
    "CREATE TABLE logs (id INT NOT NULL AUTO_INCREMENT, message TEXT, UNIQUE KEY id (id))",
    "CREATE TABLE queue_ids (seq BIGINT NOT NULL AUTO_INCREMENT, qid VARCHAR(32) NOT NULL, KEY seq (seq))",
)


@pytest.fixture
def mailcow_schema(galera: GaleraCluster) -> Iterator[str]:
    schema = f"mailcow_{os.getpid()}_{random.randrange(10000)}"
    node = galera.nodes[0]
    node.execute(f"CREATE DATABASE {schema}", f"USE {schema}", *TABLES)
    try:
        yield schema
    finally:
        node.execute(f"DROP DATABASE IF EXISTS {schema}")


def test_check_lists_tables_without_primary_key(galera, mailcow_schema):
    tables = dbcheck.tables_without_primary_key(galera.nodes[1].socket, mailcow_schema)

    assert tables == ["fido2", "logs", "queue_ids", "tags_domain", "tags_mailbox"]


def test_check_of_missing_database_fails(galera):
    with pytest.raises(DatabaseError, match="database 'no_such_db' not found"):
        dbcheck.tables_without_primary_key(galera.nodes[0].socket, "no_such_db")


def test_fix_adds_invisible_keys_cluster_wide(galera, mailcow_schema):
    node1, node2, node3 = galera.nodes
    node1.execute(f"INSERT INTO {mailcow_schema}.tags_mailbox VALUES ('vip', 'alice@example.org')")

    results = dbcheck.add_primary_keys(node1.socket, mailcow_schema, ["fido2", "tags_domain", "tags_mailbox"])

    assert [result.table for result in results] == ["fido2", "tags_domain", "tags_mailbox"]
    assert dbcheck.tables_without_primary_key(node3.socket, mailcow_schema) == ["logs", "queue_ids"]
    rows = node2.execute(f"SELECT * FROM {mailcow_schema}.tags_mailbox")
    assert rows == [("vip", "alice@example.org")]


def test_fixed_table_accepts_mailcow_queries(galera, mailcow_schema):
    node1, node2, _ = galera.nodes
    dbcheck.add_primary_keys(node1.socket, mailcow_schema, ["tags_mailbox"])

    node2.execute(
        f"INSERT INTO {mailcow_schema}.tags_mailbox VALUES ('vip', 'bob@example.org')",
        f"INSERT INTO {mailcow_schema}.tags_mailbox VALUES ('vip', 'carol@example.org')",
        f"DELETE FROM {mailcow_schema}.tags_mailbox WHERE username = 'bob@example.org'",
    )

    rows = node1.execute(f"SELECT * FROM {mailcow_schema}.tags_mailbox")
    assert rows == [("vip", "carol@example.org")]
    keys = node1.execute(f"SELECT {dbcheck.PRIMARY_KEY_COLUMN} FROM {mailcow_schema}.tags_mailbox")
    assert len(keys) == 1


def test_cli_check_fix_check(galera, mailcow_schema, tmp_path, capsys):
    document = deep_update(node_config_dict(), "galera.socket", str(galera.nodes[0].socket))
    document = deep_update(document, "mailcow", {"db_name": mailcow_schema})
    config = str(write_node_config(tmp_path / "node.yaml", document))

    assert main(["--config", config, "db", "check"]) == ExitCode.DEGRADED
    assert "tags_domain" in capsys.readouterr().out

    assert main(["--config", config, "db", "fix", "--dry-run"]) == ExitCode.OK
    planned = capsys.readouterr().out
    assert "INVISIBLE" in planned
    assert f"ALTER TABLE `{mailcow_schema}`.`logs` ADD PRIMARY KEY (`id`);" in planned
    assert dbcheck.tables_without_primary_key(galera.nodes[0].socket, mailcow_schema) != []

    assert main(["--config", config, "db", "fix"]) == ExitCode.OK
    assert main(["--config", config, "db", "check"]) == ExitCode.OK
    assert "every table" in capsys.readouterr().out


def test_fix_statement_rejects_odd_names():
    with pytest.raises(DatabaseError, match="unexpected characters"):
        dbcheck.fix_statement("mailcow", "fido2`; DROP TABLE mailbox; --")


def test_fix_reuses_auto_increment_columns(galera, mailcow_schema):
    node1, node2, _ = galera.nodes
    node1.execute(
        f"INSERT INTO {mailcow_schema}.logs (message) VALUES ('first'), ('second')",
        f"INSERT INTO {mailcow_schema}.queue_ids (qid) VALUES ('4Xk2'), ('7Qp9')",
    )

    results = dbcheck.add_primary_keys(node1.socket, mailcow_schema, ["logs", "queue_ids"])

    assert [(result.table, result.key_column) for result in results] == [("logs", "id"), ("queue_ids", "seq")]
    assert dbcheck.tables_without_primary_key(node2.socket, mailcow_schema) == ["fido2", "tags_domain", "tags_mailbox"]
    node2.execute(f"INSERT INTO {mailcow_schema}.logs (message) VALUES ('third')")
    rows = node1.execute(f"SELECT * FROM {mailcow_schema}.logs ORDER BY id")
    assert [row[1] for row in rows] == ["first", "second", "third"]
    assert len({row[0] for row in rows}) == 3


def test_cli_fix_all_mailcow_shapes(galera, mailcow_schema, tmp_path, capsys):
    document = deep_update(node_config_dict(), "galera.socket", str(galera.nodes[0].socket))
    document = deep_update(document, "mailcow", {"db_name": mailcow_schema})
    config = str(write_node_config(tmp_path / "node.yaml", document))

    assert main(["--config", config, "db", "fix"]) == ExitCode.OK
    output = capsys.readouterr().out

    assert f"made the AUTO_INCREMENT column seq the primary key of {mailcow_schema}.queue_ids" in output
    assert f"added invisible primary key mailcow_ha_pk to {mailcow_schema}.tags_mailbox" in output
    assert dbcheck.tables_without_primary_key(galera.nodes[2].socket, mailcow_schema) == []
    assert main(["--config", config, "db", "fix"]) == ExitCode.OK
    assert "nothing to do" in capsys.readouterr().out
