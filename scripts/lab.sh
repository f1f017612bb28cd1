#!/usr/bin/env bash
# Lab namespace housekeeping (used by test.sh and `make clean-lab`).
#
#   lab.sh sweep            delete leftover vnetd-lab-* namespaces whose test.sh is gone,
#                           every vt-<suffix>-* namespace of such labs, the processes in
#                           them (private brokers, epmd, daemons) and their .lab/ dirs
#   lab.sh teardown NAME    tear down lab NAME now (broker, processes, namespaces)
#
# Only namespaces named by us (vnetd-lab-<hex>, vt-<hex>-*) are ever touched, and a
# namespace that is the root namespace or our own is never emptied of processes.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LABROOT=$ROOT/.lab
log() { printf '[lab] %s\n' "$*" >&2; }

# The root namespace: PID 1's if readable (here it is not: PID 1 is the VM's init),
# else kthreadd's (PID 2; kernel threads always live in the initial namespace).
ROOT_NS_INO=$(stat -L -c %i /proc/1/ns/net 2>/dev/null || stat -L -c %i /proc/2/ns/net 2>/dev/null || echo unknown)
SELF_NS_INO=$(stat -L -c %i /proc/self/ns/net)

# Kill every process in namespace $1 (TERM, then KILL after 5 s), then delete it.
kill_and_delete_ns() {
    local ns=$1 ino pids i
    if [[ -e /run/netns/$ns ]]; then
        ino=$(stat -L -c %i "/run/netns/$ns" 2>/dev/null || echo none)
        if [[ $ino == "$ROOT_NS_INO" || $ino == "$SELF_NS_INO" ]]; then
            log "refusing to empty $ns: it is the root namespace or our own"
        else
            pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
            if [[ -n ${pids// /} ]]; then
                local all=$pids
                # shellcheck disable=SC2086
                kill -TERM $pids 2>/dev/null
                for i in $(seq 50); do
                    [[ -z $(ip netns pids "$ns" 2>/dev/null) ]] && break
                    sleep 0.1
                done
                pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
                # shellcheck disable=SC2086
                [[ -n ${pids// /} ]] && kill -KILL $pids 2>/dev/null
                # A process leaves the namespace when it exits but shows in ps until its
                # parent (init, for daemons) reaps it: wait for that too (max 5 s).
                for i in $(seq 50); do
                    local left=0 p
                    for p in $all; do [[ -d /proc/$p ]] && left=1; done
                    ((left)) || break
                    sleep 0.1
                done
            fi
        fi
    fi
    ip netns del "$ns" 2>/dev/null || rm -f "/run/netns/$ns"
}

our_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^(vnetd-lab-[0-9a-f]+|vt-[0-9a-f]+-.+)$'; }

teardown() {
    local lab=$1 sfx=${1#vnetd-lab-} ns
    local base=$LABROOT/$lab/broker
    if [[ -e /run/netns/$lab && -d $base ]]; then
        "$ROOT/scripts/broker.sh" stop --netns "$lab" --base "$base" --node "vnetd-$sfx@localhost" \
            2>&1 | sed 's/^/  /' >&2 || true
    fi
    for ns in $(our_namespaces | grep -E "^vt-$sfx-"); do kill_and_delete_ns "$ns"; done
    kill_and_delete_ns "$lab"
    rm -f "$LABROOT/$lab/owner.pid" "/run/vnetd-labs/$lab.pid"
}

owner_alive() {   # is the test.sh that created lab $1 (in any checkout) still running?
    local f pid
    for f in "/run/vnetd-labs/$1.pid" "$LABROOT/$1/owner.pid"; do
        [[ -r $f ]] || continue
        pid=$(cat "$f")
        [[ -n $pid && -r /proc/$pid/cmdline ]] \
            && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'test.sh' && return 0
    done
    return 1
}

sweep() {
    local ns sfx n=0 d
    for ns in $(our_namespaces | grep -E '^vnetd-lab-'); do
        owner_alive "$ns" && continue
        log "sweeping leftover lab $ns"; teardown "$ns"; n=$((n + 1))
    done
    for ns in $(our_namespaces | grep -E '^vt-'); do
        sfx=${ns#vt-}; sfx=${sfx%%-*}
        [[ -e /run/netns/vnetd-lab-$sfx ]] && owner_alive "vnetd-lab-$sfx" && continue
        log "sweeping leftover namespace $ns"; kill_and_delete_ns "$ns"; n=$((n + 1))
    done
    if [[ -d $LABROOT ]]; then
        for d in "$LABROOT"/vnetd-lab-*; do
            [[ -d $d ]] || continue
            owner_alive "$(basename "$d")" && continue
            [[ ${KEEP:-} == "$(basename "$d")" ]] && continue
            rm -rf "$d"
        done
    fi
    ((n)) && log "swept $n namespace(s)"
    return 0
}

case ${1:-} in
    sweep) sweep ;;
    teardown) [[ -n ${2:-} ]] || { log "usage: lab.sh teardown NAME"; exit 2; }; teardown "$2" ;;
    *) log "usage: lab.sh sweep | teardown NAME"; exit 2 ;;
esac
