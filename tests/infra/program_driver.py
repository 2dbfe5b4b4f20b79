"""Run the Pulumi program once under Pulumi's mocks and print what it declared, as JSON.

Usage: python program_driver.py CONFIG_JSON. The argument contains {"stack", "config",
"secret_keys"}. Each run needs its own process, because the program registers into one
root stack per process. The output lists every resource (type, name, parent, inputs,
ignoreChanges, protect, retainOnDelete, dependencies), the stack outputs with their secret
flags, or the error.
"""

from __future__ import annotations

import json
import runpy
import sys
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime.sync_await import _sync_await

REPOSITORY = Path(__file__).resolve().parents[2]
PROGRAM = REPOSITORY / "infra" / "__main__.py"


class CloudMocks(pulumi.runtime.Mocks):
    """Return the outputs the Hetzner provider would: numeric ids, addresses, generated passwords.

    Ids derive from the resource name, so a resource keeps its id across runs with other node
    counts, as an existing resource keeps its id when the cluster scales out.
    """

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        resource_id = 1000 + zlib.crc32(args.name.encode()) % 1_000_000
        outputs = dict(args.inputs)
        if args.typ == "hcloud:index/floatingIp:FloatingIp":
            if args.inputs["type"] == "ipv4":
                outputs["ipAddress"] = "203.0.113.10"
            else:
                outputs["ipAddress"] = "2001:db8:10::1"
                outputs["ipNetwork"] = "2001:db8:10::/64"
        elif args.typ == "hcloud:index/server:Server":
            outputs["ipv4Address"] = f"198.51.100.{resource_id % 250}"
            outputs["ipv6Address"] = f"2001:db8:20::{resource_id:x}"
        elif args.typ == "random:index/randomPassword:RandomPassword":
            outputs["result"] = f"generated-password-{resource_id}"
        return str(resource_id), outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """Records the options that Mocks.new_resource does not see (ignoreChanges, protect, retainOnDelete, parent)."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[dict[str, Any]] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        if request.type != "pulumi:pulumi:Stack":
            self.registrations.append(
                {
                    "type": request.type,
                    "name": request.name,
                    "urn": response.urn,
                    "id": response.id,
                    "parent": request.parent,
                    "ignore_changes": list(request.ignoreChanges),
                    "protect": bool(request.protect),
                    "retain_on_delete": bool(request.retainOnDelete),
                    "dependencies": list(request.dependencies),
                    "inputs": _plain(self.resources[response.urn].state) if response.urn in self.resources else {},
                }
            )
        return response


def _plain(value: Any) -> Any:
    """Convert mock state into JSON; unknown or secret wrappers become their values."""
    if isinstance(value, dict):
        if value.get("4dabf18193072939515e22adb298388d") == "1b47061264138c4ac30d75fd1eb44270":
            return {"__secret__": _plain(value.get("value"))}
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)


async def _resolve(value: Any) -> Any:
    if isinstance(value, pulumi.Output):
        resolved = await value.future()
        secret = await value.is_secret()
        inner = await _resolve(resolved)
        return {"__secret__": inner} if secret else inner
    if isinstance(value, dict):
        return {key: await _resolve(item) for key, item in value.items()}
    if isinstance(value, list):
        return [await _resolve(item) for item in value]
    return value


def main() -> None:
    request = json.loads(sys.argv[1])
    mocks = CloudMocks()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="mailcow-ha", stack=request["stack"], preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(request["config"], request["secret_keys"])
    sys.path.insert(0, str(PROGRAM.parent))
    result: dict[str, Any] = {}

    def program() -> Any:
        started = time.perf_counter()
        runpy.run_path(str(PROGRAM), run_name="__main__")
        outputs = pulumi.runtime.get_root_resource().outputs  # type: ignore[union-attr]
        result["outputs"] = _sync_await(_resolve(dict(outputs)))
        result["evaluation_seconds"] = time.perf_counter() - started
        return None

    try:
        pulumi.runtime.test(program)()  # type: ignore[no-untyped-call]
    except Exception as error:  # the program's own errors are the result under test
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc()
    result["resources"] = monitor.registrations
    print(json.dumps(result, default=repr))


if __name__ == "__main__":
    main()
