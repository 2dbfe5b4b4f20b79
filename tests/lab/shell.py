"""Run the commands that build and take apart the lab, each with a timeout and a readable error."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0


class LabError(Exception):
    """A lab step failed; the message names the step, the value and what to do next."""


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion and return its result.

    With `check`, a non-zero exit or a timeout raises LabError quoting the command and the
    last lines of its error output.
    """
    log.debug("run %s", " ".join(argv))
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            env=None if env is None else dict(env),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"command timed out after {timeout:g} s: {' '.join(argv)}") from None
    except FileNotFoundError:
        raise LabError(f"command not found: {argv[0]}; run scripts/install-system-packages") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise LabError(f"command failed with exit status {result.returncode}: {' '.join(argv)}: {' / '.join(detail)}")
    return result


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip` in the host namespace, or in `netns` through `ip -n`."""
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    return run([*prefix, *args], check=check, timeout=10.0)
