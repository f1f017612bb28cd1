#!/usr/bin/env bash
# README command 1 (`make run`): set-up, make sure a broker answers at the configured
# AMQP URL (starting the machine's RabbitMQ on loopback if the URL is local and nothing
# answers), then exec the daemon in the foreground.
#   VNETD_CONFIG=path/to/vnetd.toml scripts/run.sh   (default: config/vnetd.toml)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[run] %s\n' "$*" >&2; }

"$ROOT/scripts/setup.sh"

CONFIG=${VNETD_CONFIG:-config/vnetd.toml}
[[ -f $CONFIG ]] || { log "config file $CONFIG not found"; exit 1; }

# host and port of [amqp].url (default amqp://guest:guest@127.0.0.1:5672/)
read -r HOST PORT < <("$ROOT/.venv/bin/python" - "$CONFIG" <<'PY'
import sys, tomllib
from urllib.parse import urlsplit
with open(sys.argv[1], "rb") as f:
    cfg = tomllib.load(f)
u = urlsplit(cfg.get("amqp", {}).get("url", "amqp://guest:guest@127.0.0.1:5672/"))
print(u.hostname or "127.0.0.1", u.port or (5671 if u.scheme == "amqps" else 5672))
PY
)

case $HOST in
    127.0.0.1|localhost|::1)
        "$ROOT/scripts/broker.sh" start --port "$PORT" ;;
    *)
        log "broker at $HOST:$PORT is remote: not starting a local one" ;;
esac

exec "$ROOT/.venv/bin/vnetd" run --config "$CONFIG"
