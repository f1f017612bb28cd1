#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian 12 host (root, no systemd as PID 1):
#   setup.sh          what running the daemon needs
#   setup.sh --test   that, plus what the test suite needs
#   1. apt packages (installed only when missing; apt-get update at most once)
#   2. .venv/ in the repo root with `pip install -e '.[dev]'`
#      (pip re-runs only when pyproject.toml changed: stamp in .venv/.vnetd-setup-stamp)
# Fast path (everything present) takes well under 2 s.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (netlink, namespaces, apt)"

# What running the daemon needs (README command 1).
APT_PACKAGES=(
    rabbitmq-server
    libvirt-daemon-system libvirt-clients libvirt-dev
    libsystemd-dev pkg-config gcc python3-dev python3-venv
    dnsmasq-base nftables iptables iproute2 procps
    systemd
)
# What only the tests need (README command 2 runs `setup.sh --test`). One line per
# purpose, so that parallel changes add lines rather than edit the same one.
APT_TEST_PACKAGES=(
    busybox iputils-ping            # namespace guests: udhcpc, ping
    qemu-system-x86 kmod xz-utils zstd   # real guests: QEMU (TCG); depmod/modprobe/unxz for scripts/guest-image.sh
    systemd-container               # test_systemd_nspawn.py: systemd-nspawn boots the units under a real systemd
)
if [[ ${1:-} == --test ]]; then
    APT_PACKAGES+=("${APT_TEST_PACKAGES[@]}")
fi

# ---------------------------------------------------------------- apt
missing_packages() {
    # One dpkg-query call for all packages (dpkg -s per package is slower).
    local installed
    installed="$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${APT_PACKAGES[@]}" 2>/dev/null \
        | awk '$2 == "installed" {print $1}')" || true
    local p
    for p in "${APT_PACKAGES[@]}"; do
        grep -qxF "$p" <<<"$installed" || printf '%s\n' "$p"
    done
}

wait_for_apt() {
    # Another apt/dpkg (e.g. a provisioning job) may still be running.
    local waited=0
    while pgrep -x apt-get >/dev/null || pgrep -x apt >/dev/null || pgrep -x dpkg >/dev/null \
        || pgrep -x unattended-upgr >/dev/null; do
        (( waited % 10 == 0 )) && log "waiting for a running apt/dpkg to finish..."
        sleep 1
        waited=$((waited + 1))
        (( waited < 1800 )) || die "apt/dpkg still busy after 30 min"
    done
}

mapfile -t MISSING < <(missing_packages)
if ((${#MISSING[@]})); then
    wait_for_apt
    mapfile -t MISSING < <(missing_packages)   # the other apt may have installed them
fi
if ((${#MISSING[@]})); then
    log "installing apt packages: ${MISSING[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d: do not let package scripts try to start services (no systemd here;
    # we start rabbitmq/libvirtd ourselves, inside our own namespaces).
    POLICY=/usr/sbin/policy-rc.d
    CREATED_POLICY=0
    if [[ ! -e $POLICY ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY"; chmod +x "$POLICY"; CREATED_POLICY=1
    fi
    trap '[[ $CREATED_POLICY -eq 1 ]] && rm -f "$POLICY"' EXIT
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${MISSING[@]}"
    if [[ $CREATED_POLICY -eq 1 ]]; then rm -f "$POLICY"; fi
    trap - EXIT
    mapfile -t STILL < <(missing_packages)
    ((${#STILL[@]} == 0)) || die "apt packages still missing: ${STILL[*]}"
fi

# ---------------------------------------------------------------- python
py_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; }

VENV="$ROOT/.venv"
if [[ -x $VENV/bin/python ]] && ! py_ok "$VENV/bin/python"; then
    log "existing .venv has Python < 3.11 or is broken: recreating"
    rm -rf "$VENV"
fi
if [[ ! -x $VENV/bin/python ]]; then
    PY=""
    for cand in python3 python3.13 python3.12 python3.11 /usr/bin/python3; do
        c="$(command -v "$cand" 2>/dev/null)" || continue
        if py_ok "$c"; then PY="$c"; break; fi
    done
    [[ -n $PY ]] || die "no python3 >= 3.11 found"
    log "creating .venv with $PY ($("$PY" --version 2>&1))"
    "$PY" -m venv "$VENV"
fi

STAMP="$VENV/.vnetd-setup-stamp"
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1) $("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')"
if [[ ! -f $STAMP || "$(cat "$STAMP")" != "$WANT" || ! -x $VENV/bin/vnetd ]]; then
    log "pip install -e '.[dev]' (pyproject.toml changed or first run)"
    "$VENV/bin/python" -m pip install -q --upgrade 'pip>=23' 'setuptools>=68' wheel
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    printf '%s\n' "$WANT" >"$STAMP"
fi

log "ok ($(( SECONDS ))s)"
