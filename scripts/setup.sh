#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian 12 host (root, no systemd as PID 1):
#   setup.sh          what running the daemon needs
#   setup.sh --test   that, plus what the test suite needs
#   1. apt packages (installed only when missing; apt-get update at most once)
#   2. .venv/ in the repo root with `pip install -e .` (with --test: `-e '.[dev]'`)
#      (pip re-runs only when pyproject.toml changed: stamp in .venv/.vnetd-setup-stamp)
# Fast path (everything present) takes well under 2 s. Offline, it fails within seconds
# naming what is missing (apt and pip are asked with short timeouts and no retries).
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
    openvswitch-switch              # OVS tests: ovsdb-server + ovs-vswitchd (userspace datapath)
    ethtool                         # OVS tests: TX checksum offload off on veth ends (userspace datapath)
    qemu-system-x86 kmod xz-utils zstd   # real guests: QEMU (TCG); depmod/modprobe/unxz for scripts/guest-image.sh
    systemd-container               # test_systemd_nspawn.py: systemd-nspawn boots the units under a real systemd
    graphviz                        # `vnetctl show --format svg` (client side; its tests)
    tcpdump                         # VXLAN fleet tests: what a guest's namespace receives (tests/support/fleet.py)
)
TEST=0
if [[ ${1:-} == --test ]]; then
    TEST=1
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
    # Short timeouts, no retries, and a failed fetch is an error (apt-get update alone
    # exits 0 offline): without a mirror this fails in seconds, naming what is missing.
    APT_NET=(-o Acquire::http::Timeout=5 -o Acquire::https::Timeout=5 -o Acquire::Retries=0)
    timeout 120 apt-get update -q --error-on=any "${APT_NET[@]}" \
        || die "cannot reach the package mirror (offline?); missing apt packages: ${MISSING[*]}"
    timeout 1800 apt-get install -y -q --no-install-recommends "${APT_NET[@]}" "${MISSING[@]}" \
        || die "apt-get install failed; missing apt packages: ${MISSING[*]}"
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

# The Python requirements of pyproject.toml (with --test, also [dev]) not installed in
# the venv, by name: what an offline failure reports.
missing_python() {
    "$VENV/bin/python" - "$TEST" <<'PY'
import re, sys, tomllib
from importlib import metadata
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
reqs = list(project["dependencies"])
if sys.argv[1] == "1":
    reqs += project["optional-dependencies"]["dev"]
for req in reqs:
    name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        print(name)
PY
}

pip_failed() {
    local missing
    missing="$(missing_python | tr '\n' ' ')"
    die "pip could not install (offline? the package index did not answer within 5 s)${missing:+; missing Python packages: $missing}"
}

STAMP="$VENV/.vnetd-setup-stamp"
EXTRAS=$([[ $TEST == 1 ]] && echo "[dev]" || echo "")
BASE="$(sha256sum pyproject.toml | cut -d' ' -f1) $("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')"
HAVE="$(cat "$STAMP" 2>/dev/null || true)"
# A test set-up ([dev]) also serves running; a run set-up does not serve the tests.
if [[ ! -x $VENV/bin/vnetd || ( $HAVE != "$BASE [dev]" && $HAVE != "$BASE $EXTRAS" ) ]]; then
    log "pip install -e '.$EXTRAS' (pyproject.toml changed or first run)"
    PIP=("$VENV/bin/python" -m pip install -q --retries 0 --timeout 5)
    if ! "$VENV/bin/python" -c 'import setuptools, wheel, sys; from importlib.metadata import version as v
sys.exit(int(v("pip").split(".")[0]) < 23 or int(v("setuptools").split(".")[0]) < 68)' 2>/dev/null; then
        "${PIP[@]}" --upgrade 'pip>=23' 'setuptools>=68' wheel || pip_failed
    fi
    # The build tools are in the venv: no isolated build env to download.
    "${PIP[@]}" --no-build-isolation -e ".$EXTRAS" || pip_failed
    printf '%s %s\n' "$BASE" "$EXTRAS" >"$STAMP"
fi

log "ok ($(( SECONDS ))s)"
