#!/bin/bash
# First boot of a mailcow-ha node, run once by cloud-init after the packages are installed.
# Every step is bounded by a timeout, and any failure stops the script with a message naming
# the step, so a half-installed node never starts keepalived and never becomes master.
# Run it again after fixing the cause; finished nodes exit at once.
set -euo pipefail

readonly done_marker=/var/lib/mailcow-ha/first-boot.done
readonly venv=/opt/mailcow-ha/venv
readonly source_dir=/opt/mailcow-ha/src

runtime_repository=""
runtime_ref=""
mailcow_repository=""
mailcow_ref=""
mailcow_dir=""
db_device=""
db_dir=""
device_timeout=300

log() { echo "mailcow-ha first boot: $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --runtime-repository) runtime_repository="$2" ;;
        --runtime-ref) runtime_ref="$2" ;;
        --mailcow-repository) mailcow_repository="$2" ;;
        --mailcow-ref) mailcow_ref="$2" ;;
        --mailcow-dir) mailcow_dir="$2" ;;
        --db-device) db_device="$2" ;;
        --db-dir) db_dir="$2" ;;
        --device-timeout) device_timeout="$2" ;;
        *) fail "unknown option $1" ;;
    esac
    shift 2
done
for name in runtime_repository runtime_ref mailcow_repository mailcow_ref mailcow_dir db_device db_dir; do
    [ -n "${!name}" ] || fail "option --${name//_/-} is missing"
done

if [ -e "$done_marker" ]; then
    log "already done ($done_marker exists)"
    exit 0
fi

# Check out exactly one commit (or tag) of a repository into a directory, shallowly.
checkout() {
    local repository="$1" ref="$2" directory="$3"
    [ -d "$directory/.git" ] || git init -q "$directory"
    timeout 600 git -C "$directory" fetch -q --depth 1 "$repository" "$ref" \
        || fail "fetching $ref from $repository timed out or failed"
    git -C "$directory" checkout -q --detach FETCH_HEAD
}

log "waiting up to ${device_timeout}s for the Galera volume $db_device"
waited=0
until [ -b "$db_device" ]; do
    [ "$waited" -lt "$device_timeout" ] || fail "volume $db_device did not appear; check its attachment in the Hetzner console"
    sleep 2
    waited=$((waited + 2))
done
[ "$(blkid -o value -s TYPE "$db_device")" = "ext4" ] || fail "volume $db_device is not ext4; it must never be formatted here"
mountpoint -q "$db_dir" || mount "$db_dir" || fail "mounting $db_device on $db_dir failed (see /etc/fstab)"
mountpoint -q "$db_dir" || fail "$db_dir is not a mount point; MariaDB must not write to the root disk"

log "installing MariaDB Galera without starting it"
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# Installed by mailcow-ha first boot: no service starts during apt-get.\nexit 101\n' > "$policy"
    chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends mariadb-server mariadb-client galera-4 \
    || fail "installing mariadb-server and galera-4 failed"
rm -f "$policy"
trap - EXIT

log "installing the runtime at $runtime_ref"
install -d -m 0755 /opt/mailcow-ha
checkout "$runtime_repository" "$runtime_ref" "$source_dir"
[ "$(git -C "$source_dir" rev-parse HEAD)" = "$runtime_ref" ] || fail "checked out commit differs from $runtime_ref"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
timeout 900 "$venv/bin/pip" install -q --timeout 60 --no-deps --require-hashes -r "$source_dir/runtime/requirements.lock" \
    || fail "installing the locked dependencies failed"
timeout 300 "$venv/bin/pip" install -q --no-deps --no-build-isolation --no-index "$source_dir/runtime" \
    || fail "installing the runtime package failed"
ln -sf "$venv/bin/mailcow-ha" /usr/local/bin/mailcow-ha

log "checking out mailcow-dockerized $mailcow_ref"
checkout "$mailcow_repository" "$mailcow_ref" "$mailcow_dir"

log "starting the host firewall and the floating IP configuration"
systemctl daemon-reload
systemctl enable --now mailcow-ha-firewall.service mailcow-ha-floating-ip.service

log "learning the cluster's members and rendering keepalived.conf and the Galera config"
timeout 300 mailcow-ha peers sync || fail "mailcow-ha peers sync failed"

log "starting Galera (bootstrap or join)"
timeout 1800 mailcow-ha galera first-boot || fail "mailcow-ha galera first-boot failed"

log "starting the agent, the gc timer and keepalived"
systemctl enable --now mailcow-ha-agent.service mailcow-ha-gc.timer
systemctl enable --now keepalived.service

install -d -m 0700 "$(dirname "$done_marker")"
date -u +%Y-%m-%dT%H:%M:%SZ > "$done_marker"
log "done"
