"""Run the project's Pulumi program under Pulumi's mocks, creating every resource in the fake cloud.

    python -m lab.pulumirun REQUEST_JSON

REQUEST_JSON holds `config` (Pulumi config values, `mailcow-ha:` keys), `secret_keys`, and the
fake's `namespace`, `host`, `port` and `token_file`. Each declared server, network, volume,
floating IP, attachment and assignment is created in the fake through its control API, so the
ids and addresses the program's outputs and user data carry are the fake's. The program
registers into one root stack per process, hence a process per run. Prints JSON: the
resources with their ids and inputs, the stack outputs, or the error.
"""

from __future__ import annotations

import json
import runpy
import secrets
import sys
import traceback
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks

from lab.cloudapi import CloudControl

REPOSITORY = Path(__file__).resolve().parents[2]
PROGRAM = REPOSITORY / "infra" / "__main__.py"
_LOCAL_ONLY = (
    "hcloud:index/firewall:Firewall",
    "hcloud:index/sshKey:SshKey",
    "hcloud:index/placementGroup:PlacementGroup",
    "hcloud:index/rdns:Rdns",
    "hcloud:index/networkSubnet:NetworkSubnet",
)
"""Types the fake does not model; they get a local id and change nothing in the lab."""


class FakeCloudMocks(pulumi.runtime.Mocks):
    """Creates each declared resource in the fake cloud and returns the outputs the provider would."""

    def __init__(self, control: CloudControl, subnet: str) -> None:
        self.control = control
        self.subnet = subnet
        self._local_id = 500000

    def _existing(self, collection: str, name: str) -> dict[str, Any] | None:
        for item in self.control.state().get(collection, []):
            if item["name"] == name:
                found: dict[str, Any] = item
                return found
        return None

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = dict(args.inputs)
        creator = {
            "hcloud:index/network:Network": self._network,
            "hcloud:index/server:Server": self._server,
            "hcloud:index/volume:Volume": self._volume,
            "hcloud:index/volumeAttachment:VolumeAttachment": self._volume_attachment,
            "hcloud:index/floatingIp:FloatingIp": self._floating_ip,
            "hcloud:index/floatingIpAssignment:FloatingIpAssignment": self._floating_ip_assignment,
        }.get(args.typ)
        if creator is not None:
            return creator(inputs)
        outputs = dict(inputs)
        if args.typ == "random:index/randomPassword:RandomPassword":
            outputs["result"] = secrets.token_hex(16)
        elif args.typ not in _LOCAL_ONLY and not args.typ.startswith("mailcow-ha:"):
            raise ValueError(f"the lab does not know how to create {args.typ} ({args.name}) in the fake cloud")
        self._local_id += 1
        return str(self._local_id), outputs

    def _network(self, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        existing = self._existing("networks", inputs["name"])
        if existing is None:
            existing = self.control.create(
                "networks", name=inputs["name"], ip_range=inputs["ipRange"], subnet=self.subnet,
                labels=inputs.get("labels", {}),
            )  # fmt: skip
        return str(existing["id"]), inputs

    def _server(self, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        outputs = dict(inputs)
        existing = self._existing("servers", inputs["name"])
        if existing is not None:
            outputs["ipv4Address"] = existing["public_ipv4"]
            outputs["ipv6Address"] = existing["public_ipv6"]
            return str(existing["id"]), outputs
        network = inputs["networks"][0]
        created = self.control.create(
            "servers",
            name=inputs["name"],
            location=inputs["location"],
            server_type=inputs["serverType"],
            labels=inputs.get("labels", {}),
            network_id=int(network["networkId"]),
            private_ip=network["ip"],
        )
        outputs["ipv4Address"] = created["public_net"]["ipv4"]["ip"]
        outputs["ipv6Address"] = created["public_net"]["ipv6"]["ip"]
        return str(created["id"]), outputs

    def _volume(self, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        existing = self._existing("volumes", inputs["name"])
        if existing is None:
            existing = self.control.create(
                "volumes", name=inputs["name"], size=int(inputs["size"]), location=inputs["location"],
                labels=inputs.get("labels", {}), format=inputs.get("format"),
            )  # fmt: skip
        return str(existing["id"]), {**inputs, "linuxDevice": f"/dev/disk/by-id/scsi-0HC_Volume_{existing['id']}"}

    def _volume_attachment(self, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        volume_id, server_id = int(inputs["volumeId"]), int(inputs["serverId"])
        # The program ignores later changes of an attachment's server, so an existing one stays.
        volume = self.control.request("GET", f"/v1/volumes/{volume_id}")["volume"]
        if volume["server"] is None:
            self.control.request("PUT", f"/_fake/volumes/{volume_id}/server", {"server": server_id})
        return f"{volume_id}-{server_id}", inputs

    def _floating_ip(self, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        outputs = dict(inputs)
        existing = self._existing("floating_ips", inputs["name"])
        if existing is None:
            existing = self.control.create(
                "floating_ips", name=inputs["name"], type=inputs["type"], home_location=inputs["homeLocation"],
                labels=inputs.get("labels", {}),
            )  # fmt: skip
        address = existing["ip"]
        if inputs["type"] == "ipv6":
            outputs["ipNetwork"] = address
            address = address.split("/")[0] + "1"
        outputs["ipAddress"] = address
        return str(existing["id"]), outputs

    def _floating_ip_assignment(self, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        floating_ip_id, server_id = int(inputs["floatingIpId"]), int(inputs["serverId"])
        floating_ip = self.control.request("GET", f"/v1/floating_ips/{floating_ip_id}")["floating_ip"]
        if floating_ip["server"] is None:
            self.control.request("PUT", f"/_fake/floating_ips/{floating_ip_id}/server", {"server": server_id})
        return f"{floating_ip_id}-{server_id}", inputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    """Keeps each registered resource's type, name, id and inputs for the caller."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.registered: list[dict[str, Any]] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        if request.type != "pulumi:pulumi:Stack" and response.urn in self.resources:
            state = self.resources[response.urn].state
            self.registered.append({"type": request.type, "name": request.name, "id": response.id, "inputs": state})
        return response


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        if "value" in value and len(value) == 2 and any(len(str(key)) == 32 for key in value):
            return _plain(value["value"])
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)


def main() -> int:
    request = json.loads(sys.argv[1])
    token = Path(request["token_file"]).read_text(encoding="utf-8").strip()
    control = CloudControl(request["namespace"], request["host"], int(request["port"]), token)
    mocks = FakeCloudMocks(control, request["subnet"])
    monitor = _RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="mailcow-ha", stack=request["stack"], preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(request["config"], request["secret_keys"])
    sys.path.insert(0, str(PROGRAM.parent))
    result: dict[str, Any] = {}

    def program() -> None:
        runpy.run_path(str(PROGRAM), run_name="__main__")

    try:
        pulumi.runtime.test(program)()  # type: ignore[no-untyped-call]
    except Exception as error:  # the program's own error is what the caller must see
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc()
    finally:
        control.close()
    result["resources"] = _plain(monitor.registered)
    print(json.dumps(result, default=repr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
