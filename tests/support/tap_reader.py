"""Plays a guest on TAPs, for tests: run inside a namespace (`ip netns exec NS python -m
tests.support.tap_reader TAP...`), it attaches to each TAP as QEMU does (TUNSETIFF, so
carrier comes on), sends a router advertisement with a SLAAC prefix from a guest MAC
on each, waits, and prints `ip -6 -j addr` of the TAPs as JSON while still attached.
`... TAP... --show DEV...`: the addresses of DEV... too (the bridges of the TAPs, whose
IPv6 sees what the guest sends), read at the same moment."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
GUEST_MAC = bytes.fromhex("525400123456")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def router_advertisement(prefix: str = "2001:db8:1::") -> bytes:
    """An Ethernet frame: RA from fe80::5054:ff:fe12:3456 to ff02::1, one /64 prefix with
    the autonomous flag (what makes a host with accept_ra build a SLAAC address)."""
    src = socket.inet_pton(socket.AF_INET6, "fe80::5054:ff:fe12:3456")
    dst = socket.inet_pton(socket.AF_INET6, "ff02::1")
    options = struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0)
    options += socket.inet_pton(socket.AF_INET6, prefix)
    options += struct.pack("!BB6s", 1, 1, GUEST_MAC)
    icmp = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0) + options
    pseudo = src + dst + struct.pack("!I3xB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", _checksum(pseudo + icmp)) + icmp[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(icmp), 58, 255) + src + dst
    return bytes.fromhex("333300000001") + GUEST_MAC + b"\x86\xdd" + ip6 + icmp


def main(names: list[str], show: list[str]) -> None:
    fds = []
    for name in names:
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
        fds.append(fd)
    time.sleep(0.3)
    for _ in range(3):
        for fd in fds:
            os.write(fd, router_advertisement())
        time.sleep(0.3)
    time.sleep(1.5)  # a link-local address is added at once (tentative), SLAAC within ms
    out = {name: json.loads(subprocess.run(["ip", "-6", "-j", "addr", "show", "dev", name],
                                           capture_output=True, text=True, check=True).stdout)
           for name in names + show}
    carrier = {name: Path(f"/sys/class/net/{name}/carrier").read_text().strip() for name in names}
    print(json.dumps({"addrs": out, "carrier": carrier}))
    for fd in fds:
        os.close(fd)


if __name__ == "__main__":
    args = sys.argv[1:]
    cut = args.index("--show") if "--show" in args else len(args)
    main(args[:cut], args[cut + 1:])
