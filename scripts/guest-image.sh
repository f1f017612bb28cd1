#!/usr/bin/env bash
# The tiny Linux guest of the test suite, built from Debian's own packages and cached.
#
#   scripts/guest-image.sh [--cache DIR]     prints the image directory on stdout
#
# The image is a directory with `vmlinuz`, `initrd.img` (a cpio whose /init is
# scripts/guest/init), `cmdline` (the base kernel command line) and `image.env`
# (versions, module list). It is made from:
#   - the kernel of `linux-image-cloud-amd64` (its dependency, the real
#     linux-image-<abi>-cloud-amd64 package): vmlinuz and the virtio-net modules with
#     their dependencies in load order (modprobe --show-depends over a depmod of the
#     unpacked tree; built-ins need no module; .ko.xz/.ko.zst/.ko.gz are decompressed);
#   - busybox from `busybox-static` (`apt-get download` + `dpkg-deb -x`: never installed,
#     since it conflicts with the host's `busybox`).
# Cache: DIR/guest-<key>/ (default DIR /var/cache/vnetd-test), key = hash of both package
# versions and of the guest's scripts, so a new kernel or a changed /init builds a new
# image and an unchanged one costs nothing. Built in a temporary directory and renamed
# into place, so a killed build never leaves a half image.
#
# Run it outside any namespace of the tests (a new network namespace has no route to the
# package mirror): scripts/test.sh calls it before it makes the lab. It downloads and
# writes files only; it creates no network state.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[guest-image] %s\n' "$*" >&2; }
die() { printf '[guest-image] ERROR: %s\n' "$*" >&2; exit 1; }

CACHE=${VNETD_GUEST_CACHE:-/var/cache/vnetd-test}
if [[ ${1:-} == --cache ]]; then CACHE=$2; fi
GUEST_SRC=$ROOT/scripts/guest
MODULES=(virtio_pci virtio_net)   # and what they depend on

candidate() {   # the version apt would install
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}'
}

KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
    | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[[ -n $KPKG ]] || die "apt knows no linux-image-cloud-amd64 (apt-get update?)"
KVER=$(candidate "$KPKG"); BVER=$(candidate busybox-static)
[[ -n $KVER && $KVER != "(none)" ]] || die "no candidate version of $KPKG"
[[ -n $BVER && $BVER != "(none)" ]] || die "no candidate version of busybox-static"

KEY=$( { echo "$KPKG=$KVER busybox-static=$BVER"; cat "$GUEST_SRC"/* "${BASH_SOURCE[0]}"; } \
    | sha256sum | cut -c1-16)
OUT=$CACHE/guest-$KEY
if [[ -f $OUT/image.env && -f $OUT/vmlinuz && -f $OUT/initrd.img ]]; then
    log "cached: $OUT"
    echo "$OUT"
    exit 0
fi

mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK"   # apt-get download drops to the _apt user when it can write here
cd "$WORK"

download() {
    local out
    if ! out=$(apt-get download "$@" 2>&1); then
        log "apt-get download failed ($(tail -1 <<<"$out")): apt-get update, once"
        apt-get update -q >&2
        apt-get download "$@" >&2
    fi
}
T0=$SECONDS
log "downloading $KPKG=$KVER busybox-static=$BVER"
download "$KPKG=$KVER" "busybox-static=$BVER"

dpkg-deb -x "$KPKG"_*.deb kernel
dpkg-deb -x busybox-static_*.deb busybox
ABI=$(basename "$(ls -d kernel/lib/modules/*)")
[[ -f kernel/boot/vmlinuz-$ABI ]] || die "no vmlinuz-$ABI in $KPKG"

# The package ships no modules.dep (depmod runs at install): make one in the unpacked tree.
depmod -b kernel "$ABI"
mkdir -p root/bin root/etc root/lib/modules root/proc root/sys root/dev root/run root/tmp
: >root/etc/modules.order
declare -A SEEN=()
BUILTIN=()
while read -r verb path _; do
    case $verb in
        insmod)
            f=${path##*/}
            [[ -n ${SEEN[$f]:-} ]] && continue
            SEEN[$f]=1
            case $f in
                *.ko) cp "$path" "root/lib/modules/$f"; m=$f ;;
                *.ko.xz) m=${f%.xz}; xz -dc "$path" >"root/lib/modules/$m" ;;
                *.ko.zst) m=${f%.zst}; zstd -qdc "$path" >"root/lib/modules/$m" ;;
                *.ko.gz) m=${f%.gz}; gzip -dc "$path" >"root/lib/modules/$m" ;;
                *) die "unknown module file $f" ;;
            esac
            echo "$m" >>root/etc/modules.order ;;
        builtin) BUILTIN+=("$path") ;;
        *) die "modprobe --show-depends: unexpected line: $verb $path" ;;
    esac
done < <(modprobe -d kernel -S "$ABI" --show-depends -a "${MODULES[@]}")
grep -qx 'virtio_net.ko' root/etc/modules.order || printf '%s\n' "${BUILTIN[@]}" | grep -qx virtio_net \
    || die "virtio_net is neither a module nor built into $ABI"

cp busybox/bin/busybox root/bin/busybox
install -m755 "$GUEST_SRC/init" root/init
install -m755 "$GUEST_SRC/udhcpc.script" root/etc/udhcpc.script

mkdir -p image
cp "kernel/boot/vmlinuz-$ABI" image/vmlinuz
# newc cpio via the host's busybox (the `cpio` package is not installed on Debian by default).
(cd root && find . | LC_ALL=C sort | busybox cpio -o -H newc 2>/dev/null) | gzip -9 >image/initrd.img
echo "console=ttyS0 quiet panic=-1" >image/cmdline
cat >image/image.env <<ENV
KERNEL_PACKAGE=$KPKG
KERNEL_VERSION=$KVER
KERNEL_ABI=$ABI
BUSYBOX_VERSION=$BVER
MODULES="$(tr '\n' ' ' <root/etc/modules.order | sed 's/ $//')"
BUILTIN="${BUILTIN[*]}"
KEY=$KEY
ENV
rm -rf "$OUT"
mv image "$OUT"
log "built $OUT in $((SECONDS - T0))s: kernel $ABI, modules $(tr "\n" " " <root/etc/modules.order)"
echo "$OUT"
