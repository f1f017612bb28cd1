#!/usr/bin/env bash
# README command 1 (`make run`): set-up, then everything the daemon needs, then the daemon.
#
#   scripts/run.sh          set-up (scripts/setup.sh); a local RabbitMQ when the configured
#                           AMQP URL is local and nothing answers there; a libvirtd when
#                           `[libvirt] enabled` and none answers at the configured URI; then
#                           exec the daemon in the foreground (Ctrl-C stops it).
#   scripts/run.sh stop     stop what earlier runs started (the broker, libvirtd): only what
#                           they recorded under .run/, nothing that was already running.
#   VNETD_CONFIG=path/to/vnetd.toml scripts/run.sh   (default: config/vnetd.toml)
#   VNETD_RUN_DIR=dir                                (default: .run/ in the checkout)
#
# The daemon manages the network namespace it runs in ([netlink] netns = ""): run this where
# its bridges and TAPs are meant to go (e.g. `ip netns exec NS scripts/run.sh`).
# libvirtd: on a host with systemd as PID 1 through its units (libvirtd.socket +
# libvirtd.service); without systemd, started directly in the background, its pid and log
# in .run/ (libvirtd.pid, libvirtd.log).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[run] %s\n' "$*" >&2; }
die() { printf '[run] ERROR: %s\n' "$*" >&2; exit 1; }
RUN_DIR=${VNETD_RUN_DIR:-$ROOT/.run}   # what run.sh started: pids, logs, records
CONFIG=${VNETD_CONFIG:-config/vnetd.toml}

# ---------------------------------------------------------------- stop
stop_started() {
    local stopped=0
    if [[ -f $RUN_DIR/libvirtd.systemd ]]; then
        log "stopping libvirtd (systemd units started by run.sh: $(cat "$RUN_DIR/libvirtd.systemd"))"
        # shellcheck disable=SC2046
        systemctl stop $(cat "$RUN_DIR/libvirtd.systemd") || true
        rm -f "$RUN_DIR/libvirtd.systemd"; stopped=1
    fi
    if [[ -f $RUN_DIR/libvirtd.pid ]]; then
        local pid; pid=$(cat "$RUN_DIR/libvirtd.pid")
        if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == libvirtd ]]; then
            log "stopping libvirtd (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 100); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
        fi
        rm -f "$RUN_DIR/libvirtd.pid"; stopped=1
    fi
    if [[ -f $RUN_DIR/broker.port ]]; then
        log "stopping the RabbitMQ that run.sh started"
        "$ROOT/scripts/broker.sh" stop --port "$(cat "$RUN_DIR/broker.port")" || true
        rm -f "$RUN_DIR/broker.port"; stopped=1
    fi
    ((stopped)) || log "nothing to stop: run.sh started no broker or libvirtd (see $RUN_DIR)"
}

if [[ ${1:-} == stop ]]; then stop_started; exit 0; fi
[[ $# -eq 0 || ${1:-} == run ]] || die "usage: scripts/run.sh [run|stop]"

"$ROOT/scripts/setup.sh"
[[ -f $CONFIG ]] || die "config file $CONFIG not found"
mkdir -p "$RUN_DIR"

# What the config says: AMQP host and port, libvirt enabled and URI.
read -r HOST PORT LV_ENABLED LV_URI < <("$ROOT/.venv/bin/python" - "$CONFIG" <<'PY'
import sys, tomllib
from urllib.parse import urlsplit
with open(sys.argv[1], "rb") as f:
    cfg = tomllib.load(f)
u = urlsplit(cfg.get("amqp", {}).get("url", "amqp://guest:guest@127.0.0.1:5672/"))
lv = cfg.get("libvirt", {})
print(u.hostname or "127.0.0.1", u.port or (5671 if u.scheme == "amqps" else 5672),
      "1" if lv.get("enabled", True) else "0", lv.get("uri", "qemu:///system"))
PY
)

# ---------------------------------------------------------------- broker
case $HOST in
    127.0.0.1|localhost|::1)
        if "$ROOT/scripts/broker.sh" status --port "$PORT" >/dev/null 2>&1; then
            log "a broker already answers on $HOST:$PORT"
        else
            "$ROOT/scripts/broker.sh" start --port "$PORT"
            echo "$PORT" >"$RUN_DIR/broker.port"   # ours: `scripts/run.sh stop` stops it
        fi ;;
    *)
        log "broker at $HOST:$PORT is remote: not starting a local one" ;;
esac

# ---------------------------------------------------------------- libvirtd
libvirt_answers() { timeout 10 virsh -q -c "$LV_URI" uri >/dev/null 2>&1; }

wait_libvirt() {
    for _ in $(seq 150); do libvirt_answers && return 0; sleep 0.2; done
    return 1
}

libvirt_off() {  # $1: why. Plain words and the one line to change.
    log "libvirt networks are OFF: $1"
    log "  network.* jobs answer 'unavailable' and host.health says 'degraded' with the reason."
    log "  To run without libvirt, set in $CONFIG:   [libvirt] enabled = false"
}

start_libvirtd() {
    if [[ -d /run/systemd/system ]]; then
        log "starting libvirtd through systemd (libvirtd.socket libvirtd.service)"
        systemctl start libvirtd.socket libvirtd.service || return 1
        echo "libvirtd.service libvirtd.socket" >"$RUN_DIR/libvirtd.systemd"
    else
        command -v libvirtd >/dev/null || return 1
        log "starting libvirtd in the background (no systemd here): pid in $RUN_DIR/libvirtd.pid, log in $RUN_DIR/libvirtd.log"
        # Level 3 = warnings and errors, to our own log file instead of the journal.
        # libvirtd writes (and locks) its pid file itself.
        LIBVIRT_LOG_OUTPUTS="3:file:$RUN_DIR/libvirtd.log" setsid libvirtd \
            --pid-file "$RUN_DIR/libvirtd.pid" </dev/null >>"$RUN_DIR/libvirtd.log" 2>&1 &
    fi
    wait_libvirt
}

if [[ $LV_ENABLED != 1 ]]; then
    log "libvirt networks are off ([libvirt] enabled = false in $CONFIG); set it to true to serve them"
elif libvirt_answers; then
    log "libvirtd answers at $LV_URI"
elif [[ $LV_URI != qemu:///system && $LV_URI != network:///system ]]; then
    libvirt_off "nothing answers at $LV_URI, which is not this machine's libvirtd: not starting one"
elif start_libvirtd; then
    log "libvirtd up at $LV_URI"
else
    libvirt_off "libvirtd could not be started (see $RUN_DIR/libvirtd.log, or journalctl -u libvirtd)"
fi

log "stop with Ctrl-C; then \`bash scripts/run.sh stop\` stops what this script started"
exec "$ROOT/.venv/bin/vnetd" run --config "$CONFIG"
