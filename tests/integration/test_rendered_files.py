"""Rendered files checked by the real tools: cloud-init schema, keepalived -t, nft, systemd, bash.

The files come from the offline review (`mailcow-ha render`) of the example stack, so these
tests check exactly what an administrator reviews and what nodes write.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness.galera import GaleraCluster
from mailcow_ha.cli.render import load_stack, render_stack
from mailcow_ha.config import parse_config
from mailcow_ha.render.cloudinit import USER_DATA_LIMIT
from mailcow_ha.render.galera import render_galera_cnf
from mailcow_ha.render.units import UnitInputs, render_units

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2]
CLOUD_INIT_SCHEMA = Path("/usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json")
NODE_COUNTS = (3, 9)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces and bind mounts")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing; run scripts/install-system-packages")
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Render the example stack offline for 3 and 9 nodes; return the output directory per count."""
    directories = {}
    for count in NODE_COUNTS:
        # A fixed commit keeps the files independent of the checkout running the tests.
        stack = dataclasses.replace(load_stack(REPOSITORY, "prod", node_count=count), runtime_ref="f" * 40)
        out = tmp_path_factory.mktemp(f"render-{count}")
        render_stack(stack, REPOSITORY / "cloud-init", out)
        directories[count] = out
    return directories


def node_dirs(root: Path) -> list[Path]:
    return sorted(path for path in root.iterdir() if path.is_dir())


def allowed_top_level_keys() -> set[str]:
    """Return the top-level keys that the installed cloud-init's schema defines."""
    schema = json.loads(CLOUD_INIT_SCHEMA.read_text(encoding="utf-8"))
    keys = set(schema.get("properties", {}))
    for part in schema["allOf"]:
        definition = schema["$defs"][part["$ref"].split("/")[-1]]
        keys |= set(definition.get("properties", {}))
    return keys


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace with the private interface (enp7s0) that keepalived.conf names."""
    require_root()
    name = f"mhr-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    peer = f"mhp{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "enp7s0", "type", "veth", "peer", "name", peer], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.mark.parametrize("count", NODE_COUNTS)
def test_user_data_passes_schema(rendered: dict[int, Path], count: int) -> None:
    require_tool("cloud-init")
    allowed = allowed_top_level_keys()

    for node in node_dirs(rendered[count]):
        user_data = node / "user-data.yaml"
        completed = subprocess.run(
            ["cloud-init", "schema", "--config-file", str(user_data)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        document = yaml.safe_load(user_data.read_text(encoding="utf-8"))

        assert completed.returncode == 0, completed.stdout + completed.stderr
        assert set(document) - allowed == set(), node.name
        assert user_data.stat().st_size <= USER_DATA_LIMIT


def every_optional_key() -> dict[str, str]:
    """Return Pulumi config with every optional key set, the way `pulumi config set` stores values."""
    key = base64.b64encode(
        len(b"ssh-ed25519").to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big") + bytes(32)
    )
    values = {
        "clusterName": "mail-eu",
        "nodeCount": "9",
        "location": "hel1",
        "serverType": "ccx23",
        "image": "debian-13",
        "networkCidr": "172.20.0.0/16",
        "subnetCidr": "172.20.8.0/22",
        "adminSshKeys": json.dumps([f"ssh-ed25519 {key.decode()} admin@example.org"]),
        "sshAllowedCidrs": json.dumps(["198.51.100.0/24", "2001:db8:100::/48"]),
        "sharedVolumeSize": "500",
        "dbVolumeSize": "40",
        "mailHostname": "mx1.mail.example.org",
        "floatingIpv6": "true",
        "hcloudToken": "t" * 64,
        "alertUrls": "mailtos://alerts:pass@smtp.example.net?to=a@example.net,b@example.net json://hooks.example.net/x",
        "galeraPassword": "galera-password-0123456789",
        "statusApiSecret": "status-api-secret-0123456789",
        "breakerWindow": "7200",
        "advertInterval": "2",
        "virtualRouterId": "77",
        "privateInterface": "ens10",
        "publicInterface": "enp1s0",
        "mailcowRef": "2025-03a",
        "runtimeRepository": "https://git.example.org:8443/ops/mailcow-ha.git",
        "runtimeRef": "e" * 40,
    }
    return {f"mailcow-ha:{name}": value for name, value in values.items()}


@pytest.fixture(scope="module")
def program_user_data(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Run the Pulumi program under mocks with every optional key set; write each server's user data."""
    config = every_optional_key()
    secrets = [f"mailcow-ha:{name}" for name in ("hcloudToken", "alertUrls", "galeraPassword", "statusApiSecret")]
    request = {"stack": "prod", "config": config, "secret_keys": secrets}
    completed = subprocess.run(
        [sys.executable, str(REPOSITORY / "tests/infra/program_driver.py"), json.dumps(request)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert "error" not in result, result.get("traceback")
    out = tmp_path_factory.mktemp("program-user-data")
    paths = []
    for resource in result["resources"]:
        if resource["type"] == "hcloud:index/server:Server":
            path = out / f"{resource['inputs']['name']}.yaml"
            path.write_text(resource["inputs"]["userData"]["__secret__"], encoding="utf-8")
            paths.append(path)
    return sorted(paths)


def test_program_user_data_passes_schema(program_user_data: list[Path]) -> None:
    """The user data the program hands to Hetzner, with every optional key on, for all 9 nodes."""
    require_tool("cloud-init")
    allowed = allowed_top_level_keys()

    assert len(program_user_data) == 9
    for path in program_user_data:
        completed = subprocess.run(
            ["cloud-init", "schema", "--config-file", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        node_config = next(item for item in document["write_files"] if item["path"] == "/etc/mailcow-ha/node.yaml")
        config = parse_config(yaml.safe_load(node_config["content"]))

        assert completed.returncode == 0, completed.stdout + completed.stderr
        assert set(document) - allowed == set(), path.name
        assert path.stat().st_size <= USER_DATA_LIMIT
        assert config.node.private_interface == "ens10"
        assert len(config.alerts.urls) == 2
        assert len(config.hetzner.floating_ips) == 2
        assert node_config["permissions"] == "0600"


def test_schema_check_catches_misspelled_key(tmp_path: Path) -> None:
    require_tool("cloud-init")
    user_data = tmp_path / "user-data.yaml"
    user_data.write_text("#cloud-config\nruncmds: [[echo, hi]]\n", encoding="utf-8")

    document = yaml.safe_load(user_data.read_text(encoding="utf-8"))

    assert set(document) - allowed_top_level_keys() == {"runcmds"}


def test_user_data_stable_under_scale_out(rendered: dict[int, Path]) -> None:
    for node in node_dirs(rendered[3]):
        three = (node / "user-data.yaml").read_bytes()
        nine = (rendered[9] / node.name / "user-data.yaml").read_bytes()

        assert three == nine, node.name


@pytest.mark.parametrize("count", NODE_COUNTS)
def test_keepalived_conf_passes_check(rendered: dict[int, Path], count: int, namespace: str, tmp_path: Path) -> None:
    """Run `keepalived -t` in a namespace that has enp7s0 and, like a node, a keepalived_script user."""
    require_tool("keepalived")
    passwd = tmp_path / "passwd"
    group = tmp_path / "group"
    passwd.write_text(
        Path("/etc/passwd").read_text() + "keepalived_script:x:64999:64999::/nonexistent:/usr/sbin/nologin\n"
    )
    group.write_text(Path("/etc/group").read_text() + "keepalived_script:x:64999:\n")

    for node in node_dirs(rendered[count]):
        conf = node / "keepalived.conf"
        # `ip netns exec` runs in a throwaway mount namespace, so these bind mounts vanish with it.
        script = (
            f"mount --bind {passwd} /etc/passwd && mount --bind {group} /etc/group && exec keepalived -t -l -f {conf}"
        )
        completed = subprocess.run(
            ["ip", "netns", "exec", namespace, "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

        assert completed.returncode == 0, f"{node.name}: {completed.stdout}{completed.stderr}"
        assert "state BACKUP" in conf.read_text()
        assert conf.read_text().count("unicast_peer") == 1


def test_keepalived_check_rejects_broken_conf(rendered: dict[int, Path], namespace: str, tmp_path: Path) -> None:
    require_tool("keepalived")
    conf = tmp_path / "keepalived.conf"
    text = (node_dirs(rendered[3])[0] / "keepalived.conf").read_text()
    conf.write_text(text.replace("nopreempt", "nopreemt"))

    completed = subprocess.run(
        ["ip", "netns", "exec", namespace, "keepalived", "-t", "-l", "-f", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode != 0


def test_firewall_rules_load(rendered: dict[int, Path], namespace: str) -> None:
    require_tool("nft")
    rules = node_dirs(rendered[3])[0] / "files/etc/mailcow-ha/firewall.nft"

    for _ in range(2):  # loading twice proves the file replaces its own table
        completed = subprocess.run(
            ["ip", "netns", "exec", namespace, "nft", "-f", str(rules)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr
    listing = subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "list", "table", "inet", "mailcow_ha"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout

    assert "ip protocol vrrp ip saddr != 10.0.1.0/24 drop" in listing
    assert "ip daddr 169.254.169.254 drop" in listing
    assert listing.count("chain input") == 1


def test_units_pass_systemd_verify(tmp_path: Path) -> None:
    require_tool("systemd-analyze")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in ("mailcow-ha", "mailcow-ha-agent"):
        (stubs / name).write_text("#!/bin/sh\nexit 0\n")
        (stubs / name).chmod(0o755)
    unit_dir = tmp_path / "units"
    units = render_units(UnitInputs(venv_bin=stubs, floating_ips=("203.0.113.10/32", "2001:db8:10::1/64")))
    names = []
    for path, text in units.items():
        relative = path.relative_to("/etc/systemd/system")
        (unit_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (unit_dir / relative).write_text(text)
        names.append(relative.parent.name.removesuffix(".d") if relative.parent.name.endswith(".d") else relative.name)

    completed = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(set(names))],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"},
        check=False,
    )
    ours = [
        line
        for line in completed.stderr.splitlines()
        if str(unit_dir) in line or any(name in line for name in names if name.startswith("mailcow-ha"))
    ]

    assert completed.returncode == 0, completed.stderr
    assert ours == []


def test_first_boot_script_syntax() -> None:
    completed = subprocess.run(
        ["bash", "-n", str(REPOSITORY / "cloud-init/first-boot.sh")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr


def test_first_boot_stops_without_volume(tmp_path: Path) -> None:
    """A missing Galera volume stops first boot before anything is installed."""
    missing = tmp_path / "no-such-device"
    completed = subprocess.run(
        [
            "bash",
            str(REPOSITORY / "cloud-init/first-boot.sh"),
            *("--runtime-repository", "https://git.example.org/x.git", "--runtime-ref", "e" * 40),
            *("--mailcow-repository", "https://git.example.org/m.git", "--mailcow-ref", "2025-01"),
            *("--mailcow-dir", str(tmp_path / "mailcow"), "--db-device", str(missing), "--db-dir", str(tmp_path)),
            *("--device-timeout", "0"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert completed.returncode == 1
    assert f"volume {missing} did not appear" in completed.stderr
    assert not (tmp_path / "mailcow").exists()


def test_first_boot_rejects_missing_option() -> None:
    completed = subprocess.run(
        ["bash", str(REPOSITORY / "cloud-init/first-boot.sh"), "--runtime-ref", "e" * 40],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert completed.returncode == 1
    assert "option --runtime-repository is missing" in completed.stderr


def test_galera_members_run_rendered_config(galera: GaleraCluster) -> None:
    """The shared Galera cluster starts every member from render_galera_cnf; each must be Synced."""
    galera.ensure_healthy()

    for node in galera.nodes:
        assert node.option_file.read_text() == render_galera_cnf(node.inputs())
        assert node.status().synced_primary
