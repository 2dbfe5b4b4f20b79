"""The lab's cloud side: start the fake API in its namespace, and create the cluster's resources
by running the Pulumi program against it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab import cloudhost
from lab.nodeconfig import CLUSTER_NAME, STACK_NAME, stack_values
from lab.provision import node_documents, read_layout, run_program
from lab.shell import LabError
from lab.topology import CLOUD_ADDRESS

if TYPE_CHECKING:
    from lab.cluster import Lab

CLOUD_PORT = 80
_TESTS_DIR = Path(__file__).resolve().parent.parent


def start_cloud(lab: Lab, timeout: float = 20.0) -> None:
    """Start the fake cloud API with its hooks in the cloud namespace."""
    cloud_dir = lab.lab_dir / cloudhost.CLOUD_DIR
    cloud_dir.mkdir(mode=0o700, exist_ok=True)
    token_file = cloud_dir / cloudhost.TOKEN_FILE
    token_file.write_text(lab.secrets.hcloud_token + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    argv = [
        "ip", "netns", "exec", lab.network.cloud_ns,
        sys.executable, "-m", "lab.cloudhost",
        "--lab-dir", str(lab.lab_dir),
        "--listen", f"{CLOUD_ADDRESS}:{CLOUD_PORT}",
        "--router-ns", lab.network.router_ns,
        "--action-latency", str(lab.options.action_latency),
    ]  # fmt: skip
    with open(cloud_dir / "cloud.log", "ab") as log_file:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": f"{_TESTS_DIR}:{_TESTS_DIR.parent / 'infra'}"},
            start_new_session=True,
        )
    lab.manifest.record_process("process", "cloud", process.pid)
    ready = cloud_dir / cloudhost.READY_FILE
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"the fake cloud did not start; see {cloud_dir / 'cloud.log'}")
        time.sleep(0.05)


def provision(lab: Lab) -> None:
    """Run the Pulumi program for `options.nodes` nodes and keep each node's rendered config."""
    cloud_dir = lab.lab_dir / cloudhost.CLOUD_DIR
    result = run_program(
        stack_name=STACK_NAME,
        stack_values=stack_values(lab.options.nodes, lab.secrets),
        subnet=str(lab.stack.subnet_cidr),
        namespace=lab.network.cloud_ns,
        host=CLOUD_ADDRESS,
        port=CLOUD_PORT,
        token_file=cloud_dir / cloudhost.TOKEN_FILE,
        log_file=cloud_dir / "pulumi.log",
    )
    rendered = _rendered_path(lab)
    previous = rendered_documents(lab)
    partial = rendered.with_suffix(".tmp")
    partial.write_text(json.dumps({**previous, **node_documents(result)}), encoding="utf-8")
    partial.chmod(0o600)
    partial.replace(rendered)
    lab.layout = read_layout(lab.control, CLUSTER_NAME)
    lab.save(cloud_ready=True)


def _rendered_path(lab: Lab) -> Path:
    return lab.lab_dir / cloudhost.CLOUD_DIR / "node-configs.json"


def rendered_documents(lab: Lab) -> dict[str, dict[str, Any]]:
    """Return each server's node config as the program rendered it into the user data."""
    try:
        documents: dict[str, dict[str, Any]] = json.loads(_rendered_path(lab).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return documents


# --- nodes -------------------------------------------------------------------------------
