#!/usr/bin/env bash
# Start/stop RabbitMQ without systemd.
#
#   broker.sh start|stop|restart|wait|status [--port P]
#       The machine's broker in the root namespace (used by scripts/run.sh):
#       `start` does nothing if something already speaks AMQP on 127.0.0.1:P,
#       else `rabbitmq-server -detached` and waits until the AMQP port really
#       accepts connections. `stop` is `rabbitmqctl stop`, then the node's epmd
#       (unless another Erlang node still uses it).
#
#   broker.sh start|stop|restart|kill|wait|status|ctl|env \
#             --netns NS --base DIR [--node NAME] [--port P] [--dist-port P]
#             [--bind ADDR] [--app] [-- rabbitmqctl-args...]
#       A private broker inside network namespace NS (the test lab). All of its
#       state lives under DIR (owned by the rabbitmq user):
#         DIR/home/.erlang.cookie   private cookie (HOME of the node and of its CLI)
#         DIR/mnesia  DIR/log  DIR/rabbit.pid  DIR/enabled_plugins
#       restart        stop (SIGTERM, graceful) + start; about 2.5 s + 4.5 s here
#       restart --app  rabbitmqctl stop_app/start_app: the Erlang VM stays up,
#                      every AMQP connection is closed; about 1 s
#       stop           SIGTERM the node, then its epmd (unless another node uses it)
#       kill           SIGKILL the node (crash; no graceful shutdown), then its epmd
#       ctl -- ARGS    rabbitmqctl ARGS against the private node
#       env            print the settings as shell assignments
#
# Exit status: 0 on success; 1 on failure (the last lines of the node's log
# are printed when a start fails).
set -euo pipefail

RMQ_BIN=/usr/lib/rabbitmq/bin
log() { printf '[broker] %s\n' "$*" >&2; }
die() { printf '[broker] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $# -ge 1 ]] || die "usage: broker.sh start|stop|restart|kill|wait|status|ctl|env [options]"
CMD=$1; shift
NETNS="" BASE="" NODE="" PORT=5672 DIST_PORT="" BIND=127.0.0.1 APP_ONLY=0 TIMEOUT=60
CTL_ARGS=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --netns) NETNS=$2; shift 2 ;;
        --base) BASE=$2; shift 2 ;;
        --node) NODE=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --dist-port) DIST_PORT=$2; shift 2 ;;
        --bind) BIND=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --app) APP_ONLY=1; shift ;;
        --) shift; CTL_ARGS=("$@"); break ;;
        *) die "unknown option: $1" ;;
    esac
done
[[ -n $DIST_PORT ]] || DIST_PORT=$((PORT + 20000))

# Run a command in the broker's namespace (or here, for the root broker).
in_ns() {
    if [[ -n $NETNS ]]; then ip netns exec "$NETNS" "$@"; else "$@"; fi
}

# True when something at 127.0.0.1:PORT answers the AMQP 0-9-1 protocol header
# with a frame (Connection.Start). A bare TCP connect is not enough.
amqp_answers() {
    in_ns bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "AMQP\x00\x00\x09\x01" >&3
        IFS= read -r -d "" -t 3 -N 1 b <&3 || exit 1
        [[ $b == $'"'"'\x01'"'"' ]]' _ "$PORT" 2>/dev/null
}

wait_amqp() {
    local deadline=$((SECONDS + TIMEOUT))
    until amqp_answers; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

# epmd (the Erlang port mapper) is started by the node but outlives it: after a stop,
# end the epmd of this network namespace too, unless other nodes still use it.
stop_epmd() {
    local names ino p
    names=$(in_ns epmd -names 2>/dev/null) || return 0   # no epmd answers here
    if grep -q '^name ' <<<"$names"; then
        log "epmd left running: it still serves $(grep -c '^name ' <<<"$names") node(s)"
        return 0
    fi
    if [[ -n $NETNS ]]; then ino=$(stat -L -c %i "/run/netns/$NETNS")
    else ino=$(stat -L -c %i /proc/self/ns/net); fi
    for p in $(pgrep -x epmd); do
        [[ $(stat -L -c %i "/proc/$p/ns/net" 2>/dev/null) == "$ino" ]] || continue
        kill "$p" 2>/dev/null && log "epmd stopped (pid $p)"
    done
}

# ------------------------------------------------------------------ root broker
root_main() {
    case $CMD in
        start)
            if amqp_answers; then log "a broker already answers on 127.0.0.1:$PORT"; return 0; fi
            [[ $PORT == 5672 ]] || die "the root broker runs on the default port 5672 only"
            log "starting rabbitmq-server -detached (root namespace, loopback port $PORT)"
            local t0=$SECONDS
            rabbitmq-server -detached
            local deadline=$((SECONDS + TIMEOUT))
            until rabbitmq-diagnostics -q ping >/dev/null 2>&1; do
                ((SECONDS < deadline)) || die "rabbitmq-diagnostics ping never succeeded (see /var/log/rabbitmq/)"
                sleep 0.5
            done
            wait_amqp || die "AMQP port $PORT never accepted connections"
            log "broker up in $((SECONDS - t0))s"
            ;;
        stop)
            rabbitmqctl stop
            # rabbitmqctl returns once the node said it halts, before its VM has
            # exited and left epmd: wait for that (seen: epmd "still serves 1 node").
            local deadline=$((SECONDS + 15))
            while in_ns epmd -names 2>/dev/null | grep -q '^name rabbit at'; do
                ((SECONDS < deadline)) || break
                sleep 0.2
            done
            stop_epmd ;;
        restart) "$0" stop; "$0" start ;;
        wait) wait_amqp || die "no AMQP on 127.0.0.1:$PORT after ${TIMEOUT}s" ;;
        status) if amqp_answers; then echo up; else echo down; return 1; fi ;;
        ctl) rabbitmqctl "${CTL_ARGS[@]}" ;;
        *) die "command $CMD needs --netns" ;;
    esac
}

# ------------------------------------------------------------------ private broker
[[ -z $NETNS ]] && { root_main; exit $?; }

[[ -n $BASE ]] || die "--netns needs --base DIR"
ip netns exec "$NETNS" true 2>/dev/null || die "network namespace $NETNS does not exist"
mkdir -p "$BASE"
BASE="$(cd "$BASE" && pwd)"
[[ -n $NODE ]] || NODE="vnetd-${NETNS##*-}@localhost"
PIDFILE=$BASE/rabbit.pid
NODE_LOG=$BASE/log/$NODE.log

# The node and its CLI run as the rabbitmq user, with HOME = our private dir,
# so both read the same private .erlang.cookie (and nothing of /var/lib/rabbitmq).
as_rabbit() {
    (cd "$BASE" && in_ns setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 LC_ALL=C.UTF-8 HOME="$BASE/home" \
        RABBITMQ_NODENAME="$NODE" \
        RABBITMQ_NODE_IP_ADDRESS="$BIND" \
        RABBITMQ_NODE_PORT="$PORT" \
        RABBITMQ_DIST_PORT="$DIST_PORT" \
        RABBITMQ_MNESIA_BASE="$BASE/mnesia" \
        RABBITMQ_LOG_BASE="$BASE/log" \
        RABBITMQ_PID_FILE="$PIDFILE" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$BASE/enabled_plugins" \
        RABBITMQ_CONFIG_FILE="$BASE/rabbitmq" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$BASE/advanced.config" \
        RABBITMQ_CONF_ENV_FILE="$BASE/rabbitmq-env.conf" \
        ERL_EPMD_ADDRESS=127.0.0.1 \
        "$@")
}

prepare_dirs() {
    mkdir -p "$BASE/home" "$BASE/mnesia" "$BASE/log"
    local cookie=$BASE/home/.erlang.cookie
    if [[ ! -s $cookie ]]; then
        od -An -tx1 -N20 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F' >"$cookie"
    fi
    [[ -s $BASE/enabled_plugins ]] || echo '[].' >"$BASE/enabled_plugins"
    touch "$BASE/rabbitmq-env.conf"
    chown -R rabbitmq:rabbitmq "$BASE"
    chmod 400 "$cookie"
}

# PIDs of this node's beam.smp (identified by its private -home dir) in NETNS.
node_pids() {
    local p
    for p in $(ip netns pids "$NETNS" 2>/dev/null); do
        [[ -r /proc/$p/cmdline ]] || continue
        if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "-home $BASE/home "; then
            [[ $(cat "/proc/$p/comm" 2>/dev/null) == beam.smp ]] && echo "$p"
        fi
    done
}

node_alive() { [[ -n $(node_pids) ]]; }

start_private() {
    if node_alive; then
        if amqp_answers; then log "$NODE already running"; return 0; fi
        log "$NODE is booting; waiting"
    else
        amqp_answers && die "something else already answers on $NETNS 127.0.0.1:$PORT"
        prepare_dirs
        rm -f "$PIDFILE"
        as_rabbit "$RMQ_BIN/rabbitmq-server" -detached
    fi
    local t0=$SECONDS deadline=$((SECONDS + TIMEOUT)) retried=${1:-0}
    until amqp_answers; do
        # Seen now and then here: the VM runs but its boot never starts (no log line,
        # no mnesia dir, for the whole timeout). A boot logs within a second or two;
        # one that has not after 20 s is killed and started once more.
        if ((!retried && SECONDS - t0 >= 20)) && [[ ! -s $NODE_LOG ]] && node_alive; then
            log "$NODE wrote no log in 20 s (a stalled boot): killing it, starting once more"
            stop_private KILL; stop_epmd
            start_private 1
            return
        fi
        if ((SECONDS >= deadline)) || ! node_alive; then
            sleep 0.5; node_alive || log "the node died during boot"
            log "last lines of $NODE_LOG:"; tail -n 30 "$NODE_LOG" >&2 2>/dev/null || true
            die "$NODE did not open AMQP port $PORT within ${TIMEOUT}s"
        fi
        sleep 0.1
    done
    log "$NODE up in netns $NETNS on $BIND:$PORT ($((SECONDS - t0))s)"
}

stop_private() {
    local sig=${1:-TERM} pids p deadline
    pids=$(node_pids)
    if [[ -z $pids ]]; then log "$NODE not running"; return 0; fi
    # shellcheck disable=SC2086
    kill -"$sig" $pids 2>/dev/null || true
    deadline=$((SECONDS + 30))
    while node_alive; do
        if ((SECONDS >= deadline)); then
            log "$NODE ignored SIG$sig for 30 s: SIGKILL"
            for p in $(node_pids); do kill -KILL "$p" 2>/dev/null || true; done
            deadline=$((SECONDS + 10))
        fi
        sleep 0.05
    done
    # exited processes leave the namespace at once but stay in ps until reaped
    deadline=$((SECONDS + 5))
    for p in $pids; do
        while [[ -d /proc/$p ]] && ((SECONDS < deadline)); do sleep 0.05; done
    done
    [[ $sig == KILL ]] && rm -f "$PIDFILE"
    log "$NODE stopped (SIG$sig)"
}

case $CMD in
    start) start_private ;;
    stop) stop_private TERM; stop_epmd ;;
    kill) stop_private KILL; stop_epmd ;;
    restart)
        if ((APP_ONLY)); then
            as_rabbit "$RMQ_BIN/rabbitmqctl" -q -n "$NODE" stop_app
            as_rabbit "$RMQ_BIN/rabbitmqctl" -q -n "$NODE" start_app
            wait_amqp || die "AMQP did not come back after start_app"
            log "$NODE app restarted"
        else
            stop_private TERM; start_private
        fi ;;
    wait) wait_amqp || die "no AMQP in $NETNS on 127.0.0.1:$PORT after ${TIMEOUT}s" ;;
    status)
        if amqp_answers; then echo up
        elif node_alive; then echo booting; exit 1
        else echo down; exit 1; fi ;;
    ctl) as_rabbit "$RMQ_BIN/rabbitmqctl" -n "$NODE" "${CTL_ARGS[@]}" ;;
    env)
        printf 'VNETD_LAB_BROKER_NODE=%q\nVNETD_LAB_BROKER_PORT=%q\nVNETD_LAB_BROKER_DIST_PORT=%q\nVNETD_LAB_BROKER_BASE=%q\n' \
            "$NODE" "$PORT" "$DIST_PORT" "$BASE" ;;
    *) die "unknown command: $CMD" ;;
esac
