"""Run the fake Hetzner Cloud API as a process, for the lab's network namespaces.

    python -m harness.fakecloud --listen 10.99.0.1:8080 --token-file TOKEN [--state-file STATE]

It prints `listening on URL` once it serves, and stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from harness.fakecloud.server import FakeCloudServer
from harness.fakecloud.store import FakeCloud


def parse_listen(value: str) -> tuple[str, int]:
    """Parse `HOST:PORT` or `[IPV6]:PORT`."""
    host, separator, port = value.rpartition(":")
    if not separator or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT or [IPV6]:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness.fakecloud", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 0), help="HOST:PORT to serve on")
    parser.add_argument("--token-file", type=Path, required=True, help="file whose first line is the API token")
    parser.add_argument("--state-file", type=Path, help="JSON file the resources are loaded from and saved to")
    parser.add_argument("--action-latency", type=float, default=0.0, help="seconds every action runs (default 0)")
    parser.add_argument("--rate-limit", type=int, default=3600, help="API requests allowed per hour (default 3600)")
    parser.add_argument("--ready-file", type=Path, help="file to write the served URL into once listening")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        token = args.token_file.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError) as error:
        print(f"fake cloud: cannot read a token from {args.token_file}: {error}", file=sys.stderr)
        return 2
    fake = FakeCloud(action_latency=args.action_latency, rate_limit=args.rate_limit, state_file=args.state_file)
    host, port = args.listen
    server = FakeCloudServer(fake, token, host, port).start()
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    if args.ready_file is not None:
        args.ready_file.write_text(server.url + "\n", encoding="utf-8")
    print(f"listening on {server.url}", flush=True)
    stop.wait()
    server.stop()
    fake.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
