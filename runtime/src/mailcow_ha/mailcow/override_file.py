"""Write mailcow's docker-compose.override.yml on a node, from the node config and mailcow's checkout."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from mailcow_ha.config import NodeConfig
from mailcow_ha.errors import ConfigError
from mailcow_ha.render import compose

log = logging.getLogger(__name__)

OVERRIDE_NAME = "docker-compose.override.yml"


def render_for_checkout(config: NodeConfig, project_dir: Path) -> str:
    """Check mailcow.conf's project name and render the override for the checkout in `project_dir`."""
    conf_path = project_dir / "mailcow.conf"
    try:
        conf_text = conf_path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(
            f"{conf_path} could not be read ({error.strerror}); run mailcow's generate_config.sh"
        ) from None
    problem = compose.project_name_problem(conf_text, config.mailcow.project_name)
    if problem is not None:
        raise ConfigError(problem)
    base = compose.load_base(project_dir / "docker-compose.yml")
    return compose.dump_override(compose.render_override(compose.inputs_from_config(config), base))


def write_override(config: NodeConfig, project_dir: Path) -> Path:
    """Render and atomically write the override with mode 0600; return its path."""
    target = project_dir / OVERRIDE_NAME
    write_private(target, render_for_checkout(config, project_dir))
    log.info("wrote %s", target)
    return target


def write_private(target: Path, text: str) -> None:
    """Write `text` atomically with mode 0600, because the override contains the database password."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
