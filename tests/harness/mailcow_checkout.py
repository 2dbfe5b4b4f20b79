"""A directory shaped like a mailcow-dockerized checkout, for compose and upgrade tests.

The compose file is written here by hand: it declares the services, named volumes, socket mounts
and certificate bind mounts that mailcow's own file has, in the same notation, and nothing else.
Every service runs one local image (a busybox root file system) so that a real compose
implementation can create and start the project without a registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

IMAGE = "localhost/mailcow-ha-test-busybox:latest"
PROJECT_NAME = "mailcowdockerized"

SOCKET_MOUNT = "mysql-socket-vol-1:/var/run/mysqld/"
SSL_READ_ONLY = "./data/assets/ssl:/etc/ssl/mail/:ro,z"


def _service(*volumes: str, depends_on: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    service: dict[str, Any] = {
        "image": IMAGE,
        "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
        "restart": "always",
        "volumes": list(volumes),
    }
    if depends_on:
        service["depends_on"] = depends_on
    service.update(extra)
    return service


def compose_document() -> dict[str, Any]:
    """Return a compose document with mailcow's services, volumes and mount notation."""
    database_env = ["DBNAME=${DBNAME}", "DBUSER=${DBUSER}", "DBPASS=${DBPASS}"]
    services = {
        "unbound-mailcow": _service(),
        "mysql-mailcow": _service(
            "mysql-vol-1:/var/lib/mysql/",
            SOCKET_MOUNT,
            depends_on=["unbound-mailcow"],
            environment=["MYSQL_ROOT_PASSWORD=${DBROOT}", "MYSQL_DATABASE=${DBNAME}"],
        ),
        "redis-mailcow": _service("redis-vol-1:/data/"),
        "clamd-mailcow": _service("clamd-db-vol-1:/var/lib/clamav"),
        "rspamd-mailcow": _service("rspamd-vol-1:/var/lib/rspamd", depends_on=["dovecot-mailcow"]),
        "php-fpm-mailcow": _service(
            SOCKET_MOUNT,
            "rspamd-vol-1:/var/lib/rspamd",
            depends_on=["redis-mailcow"],
            environment=[*database_env, "TZ=${TZ}"],
        ),
        "sogo-mailcow": _service(
            SOCKET_MOUNT,
            "sogo-web-vol-1:/sogo_web",
            "sogo-userdata-backup-vol-1:/sogo_backup",
            environment=database_env,
        ),
        "dovecot-mailcow": _service(
            SSL_READ_ONLY,
            SOCKET_MOUNT,
            "vmail-vol-1:/var/vmail",
            "vmail-index-vol-1:/var/vmail_index",
            "crypt-vol-1:/mail_crypt/",
            depends_on=["mysql-mailcow"],
            environment=database_env,
        ),
        "postfix-mailcow": _service(
            SSL_READ_ONLY,
            SOCKET_MOUNT,
            "postfix-vol-1:/var/spool/postfix",
            "crypt-vol-1:/var/lib/zeyple",
            "rspamd-vol-1:/var/lib/rspamd",
            depends_on=["mysql-mailcow"],
            environment=database_env,
        ),
        "memcached-mailcow": _service(),
        "nginx-mailcow": _service(
            "./data/assets/ssl/:/etc/ssl/mail/:ro,z",
            "sogo-web-vol-1:/usr/lib/GNUstep/SOGo/",
            depends_on=["sogo-mailcow", "php-fpm-mailcow", "redis-mailcow"],
        ),
        "acme-mailcow": _service(
            "./data/assets/ssl:/var/lib/acme/:z",
            "./data/assets/ssl-example:/var/lib/ssl-example/:ro,Z",
            SOCKET_MOUNT,
            depends_on=["nginx-mailcow"],
            environment=database_env,
        ),
        "netfilter-mailcow": _service(
            environment=["SNAT_TO_SOURCE=${SNAT_TO_SOURCE:-n}", "SNAT6_TO_SOURCE=${SNAT6_TO_SOURCE:-n}"],
        ),
        "watchdog-mailcow": _service(
            SOCKET_MOUNT,
            "rspamd-vol-1:/var/lib/rspamd",
            "postfix-vol-1:/var/spool/postfix",
            depends_on=["postfix-mailcow", "dovecot-mailcow", "mysql-mailcow"],
            environment=database_env,
        ),
        "dockerapi-mailcow": _service(),
        "olefy-mailcow": _service(),
        "ofelia-mailcow": _service(depends_on=["sogo-mailcow", "dovecot-mailcow"]),
    }
    volumes = [
        "vmail-vol-1",
        "vmail-index-vol-1",
        "mysql-vol-1",
        "mysql-socket-vol-1",
        "redis-vol-1",
        "rspamd-vol-1",
        "postfix-vol-1",
        "crypt-vol-1",
        "sogo-web-vol-1",
        "sogo-userdata-backup-vol-1",
        "clamd-db-vol-1",
    ]
    return {"services": services, "volumes": {name: None for name in volumes}}


def write_checkout(directory: Path, *, project_name: str = PROJECT_NAME) -> Path:
    """Write docker-compose.yml, mailcow.conf (with .env pointing to it) and data/assets/ssl."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "docker-compose.yml").write_text(yaml.safe_dump(compose_document(), sort_keys=False))
    (directory / "mailcow.conf").write_text(
        "MAILCOW_HOSTNAME=mail.example.org\n"
        "DBNAME=mailcow\nDBUSER=mailcow\nDBPASS=from-mailcow-conf\nDBROOT=root-from-mailcow-conf\n"
        f"COMPOSE_PROJECT_NAME={project_name}\nTZ=UTC\n"
    )
    (directory / ".env").symlink_to("mailcow.conf")
    for sub in ("data/assets/ssl", "data/assets/ssl-example"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    return directory
