#!/usr/bin/env bash
# README command 2 (`make test`): set-up, lint, then the whole test suite inside a
# throw-away lab network namespace with its own private RabbitMQ.
#
#   scripts/test.sh [pytest args...]        e.g. scripts/test.sh -k lab -x
#   VNETD_LINT=0 scripts/test.sh ...        skip ruff/mypy/import-linter
#
# Layout: lab namespace vnetd-lab-<suffix> (lo up, broker on 127.0.0.1:5672 inside it);
# pytest runs inside the lab; tests create sub-namespaces vt-<suffix>-<n>. Nothing is
# created in the root namespace. A trap tears everything down on any exit.
#
# Exit status: pytest's (5 = "no tests collected" counts as failure); if pytest passed
# but lint failed, 1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[test] %s\n' "$*" >&2; }

T0=$SECONDS
"$ROOT/scripts/setup.sh" --test

LINT_RC=0
if [[ ${VNETD_LINT:-1} != 0 ]]; then
    "$ROOT/scripts/lint.sh" || LINT_RC=$?
fi

"$ROOT/scripts/lab.sh" sweep

# The real guests' image (cached; built here, in the root namespace, because a new
# namespace has no route to the package mirror; it only downloads and writes files).
# When it cannot be built the guest tests fail, saying why; the others still run.
if GUEST_IMAGE=$("$ROOT/scripts/guest-image.sh"); then
    export VNETD_GUEST_IMAGE=$GUEST_IMAGE
else
    log "guest image could not be built: the guest tests will fail"
fi

SUFFIX=$(od -An -tx1 -N3 /dev/urandom | tr -d ' \n')
LAB=vnetd-lab-$SUFFIX
LAB_DIR=$ROOT/.lab/$LAB
NODE=vnetd-$SUFFIX@localhost
PORT=5672
DIST_PORT=25672

teardown() {
    local rc=$?
    trap - EXIT INT TERM HUP
    log "tearing down $LAB"
    "$ROOT/scripts/lab.sh" teardown "$LAB" || true
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

mkdir -p "$LAB_DIR"
echo $$ >"$LAB_DIR/owner.pid"
# Also machine-wide: a sweep from another checkout must see this lab is alive.
mkdir -p /run/vnetd-labs && echo $$ >"/run/vnetd-labs/$LAB.pid"
ip netns add "$LAB"
ip -n "$LAB" link set lo up
TB=$SECONDS
# 180 s, as the benchmark allows: a boot under heavy load once took more than the 60 s default.
"$ROOT/scripts/broker.sh" start --netns "$LAB" --base "$LAB_DIR/broker" --node "$NODE" \
    --port "$PORT" --dist-port "$DIST_PORT" --timeout 180
log "lab $LAB ready (broker start $((SECONDS - TB))s, total set-up $((SECONDS - T0))s)"

export VNETD_ROOT_NETNS_INO=$(stat -L -c %i /proc/self/ns/net)   # test.sh runs in the root ns
export VNETD_LAB_NETNS=$LAB
export VNETD_LAB_SUFFIX=$SUFFIX
export VNETD_LAB_DIR=$LAB_DIR
export VNETD_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$PORT/"
export VNETD_LAB_BROKER_NODE=$NODE
export VNETD_LAB_BROKER_PORT=$PORT
export VNETD_LAB_BROKER_DIST_PORT=$DIST_PORT
export VNETD_LAB_BROKER_BASE=$LAB_DIR/broker
export VNETD_REPO_ROOT=$ROOT

RC=0
ip netns exec "$LAB" "$ROOT/.venv/bin/python" -m pytest "$@" || RC=$?

if ((RC == 5)); then
    log "pytest collected no tests: counted as a FAILURE"
fi
if ((RC == 0 && LINT_RC != 0)); then
    log "tests passed but LINT FAILED (see [lint] output above)"
    RC=1
elif ((LINT_RC != 0)); then
    log "note: lint failed as well (see [lint] output above)"
fi
log "exit $RC ($((SECONDS - T0))s)"
exit "$RC"
