"""Commands that only read the members leave a corrupt members.json in place and name its problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.nodeconfig import node_config_dict, write_node_config
from mailcow_ha import state
from mailcow_ha.config import load_config
from mailcow_ha.errors import Refused
from mailcow_ha.mailcow.galera_ops import members_from_config
from mailcow_ha.ops.status import known_members

CORRUPT_MEMBERS = b'{"members": [{"index": 1, '


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    # No peers in the config, as cloud-init writes it: the members come from members.json only.
    document = node_config_dict(paths={"state_dir": str(tmp_path / "state"), "run_dir": str(tmp_path / "run")})
    document["peers"] = []
    return write_node_config(tmp_path / "node.yaml", document)


@pytest.fixture
def members_file(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    path = directory / state.MEMBERS_FILE
    path.write_bytes(CORRUPT_MEMBERS)
    return path


def test_known_members_keeps_corrupt_file(config_path, members_file) -> None:
    with pytest.raises(Refused) as raised:
        known_members(load_config(config_path))

    assert members_file.read_bytes() == CORRUPT_MEMBERS
    assert sorted(path.name for path in members_file.parent.iterdir()) == [state.MEMBERS_FILE]
    assert "members.json is not valid JSON" in str(raised.value)
    assert "peers sync" in str(raised.value)


def test_galera_members_keep_corrupt_file(config_path, members_file) -> None:
    # `galera positions` and `galera bootstrap --dry-run` find the members this way.
    with pytest.raises(Refused):
        members_from_config(load_config(config_path))

    assert members_file.read_bytes() == CORRUPT_MEMBERS
