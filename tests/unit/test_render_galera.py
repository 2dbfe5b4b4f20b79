"""Galera option file rendering: every path and port is a parameter, values are written safely."""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

import pytest

from mailcow_ha.errors import ConfigError
from mailcow_ha.render.galera import GaleraInputs, format_option_file, render_galera_cnf


def make_inputs(**overrides: Any) -> GaleraInputs:
    values: dict[str, Any] = {
        "cluster_name": "mailcow-ha-test",
        "node_name": "mailcow-ha-test-1",
        "node_address": "10.0.1.11",
        "peer_addresses": ["10.0.1.13", "10.0.1.11", "10.0.1.12"],
    }
    values.update(overrides)
    return GaleraInputs(**values)


def parse(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(allow_no_value=True, interpolation=None)
    parser.read_string(text)
    return parser


def test_defaults_render_required_options() -> None:
    parsed = parse(render_galera_cnf(make_inputs()))

    mysqld = parsed["mysqld"]
    assert mysqld["bind-address"] == "10.0.1.11"
    assert mysqld["port"] == "3306"
    assert mysqld["datadir"] == "/var/lib/mysql"
    assert mysqld["socket"] == "/run/mysqld/mysqld.sock"
    assert mysqld["user"] == "mysql"
    assert mysqld["binlog_format"] == "ROW"
    assert mysqld["innodb_autoinc_lock_mode"] == "2"
    assert mysqld["default_storage_engine"] == "InnoDB"
    galera = parsed["galera"]
    assert galera["wsrep_on"] == "ON"
    assert galera["wsrep_provider"] == "/usr/lib/galera/libgalera_smm.so"
    assert galera["wsrep_cluster_name"] == "mailcow-ha-test"
    assert galera["wsrep_node_name"] == "mailcow-ha-test-1"
    assert galera["wsrep_sst_method"] == "rsync"


def test_cluster_address_lists_sorted_members() -> None:
    parsed = parse(render_galera_cnf(make_inputs(peer_addresses=["10.0.1.100", "10.0.1.12", "10.0.1.11"])))

    assert parsed["galera"]["wsrep_cluster_address"] == "gcomm://10.0.1.11:4567,10.0.1.12:4567,10.0.1.100:4567"


def test_ports_and_paths_are_parameters(tmp_path: Path) -> None:
    inputs = make_inputs(
        node_address="127.0.0.2",
        peer_addresses=["127.0.0.2:14567", "127.0.0.3:24567"],
        data_dir=tmp_path / "data",
        socket=tmp_path / "mysqld.sock",
        pid_file=tmp_path / "mysqld.pid",
        log_error=tmp_path / "error.log",
        port=13306,
        group_port=14567,
        ist_port=14568,
        sst_port=14444,
        buffer_pool_size="16M",
        gcache_size="32M",
        provider=Path("/opt/galera/libgalera_smm.so"),
    )
    parsed = parse(render_galera_cnf(inputs))

    assert parsed["mysqld"]["port"] == "13306"
    assert parsed["mysqld"]["datadir"] == str(tmp_path / "data")
    assert parsed["mysqld"]["pid-file"] == str(tmp_path / "mysqld.pid")
    assert parsed["mysqld"]["log-error"] == str(tmp_path / "error.log")
    assert parsed["mysqld"]["innodb_buffer_pool_size"] == "16M"
    assert parsed["galera"]["wsrep_provider"] == "/opt/galera/libgalera_smm.so"
    assert parsed["galera"]["wsrep_cluster_address"] == "gcomm://127.0.0.2:14567,127.0.0.3:24567"
    assert parsed["galera"]["wsrep_node_address"] == "127.0.0.2:14567"
    assert parsed["galera"]["wsrep_sst_receive_address"] == "127.0.0.2:14444"
    options = parsed["galera"]["wsrep_provider_options"]
    assert options == '"gmcast.listen_addr=tcp://127.0.0.2:14567;ist.recv_addr=127.0.0.2:14568;gcache.size=32M"'
    assert parsed["client"]["socket"] == str(tmp_path / "mysqld.sock")
    assert parsed["client"]["port"] == "13306"


def test_extra_options_are_added() -> None:
    text = render_galera_cnf(make_inputs(extra_mysqld={"max_connections": 500, "skip-name-resolve": None}))
    parsed = parse(text)

    assert parsed["mysqld"]["max_connections"] == "500"
    assert "\nskip-name-resolve\n" in text


def test_extra_options_cannot_replace_rendered() -> None:
    with pytest.raises(ConfigError, match="bind-address"):
        make_inputs(extra_mysqld={"bind-address": "0.0.0.0"})


def test_writer_quotes_and_rejects() -> None:
    text = format_option_file({"s": {"a": "one two", "b": "x;y", "c": 3, "d": None}})

    assert text == '[s]\na = "one two"\nb = "x;y"\nc = 3\nd\n'
    with pytest.raises(ConfigError, match="cannot be written"):
        format_option_file({"s": {"a": 'quote"d'}})
    with pytest.raises(ConfigError, match="cannot be written"):
        format_option_file({"s": {"a": "line\nbreak"}})
    with pytest.raises(ConfigError, match="option name"):
        format_option_file({"s": {"A b": "x"}})


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("cluster_name", "bad name", "cluster_name"),
        ("node_name", "", "node_name"),
        ("node_address", "10.0.1", "node_address"),
        ("peer_addresses", [], "peer_addresses is empty"),
        ("peer_addresses", ["10.0.1.12:port"], "invalid port"),
        ("peer_addresses", ["10.0.1.12:70000"], "70000"),
        ("peer_addresses", ["db.example"], "'db.example'"),
        ("data_dir", Path("relative"), "data_dir"),
        ("port", 0, "port 0"),
        ("ist_port", 4567, "must differ"),
        ("sst_method", "xtrabackup", "xtrabackup"),
        ("buffer_pool_size", "16 M", "buffer_pool_size"),
        ("gcache_size", "0", "gcache_size"),
        ("user", "my sql", "user"),
    ],
)
def test_invalid_inputs_rejected(field: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        make_inputs(**{field: value})

    assert expected in str(raised.value)
