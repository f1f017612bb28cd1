"""TAP creation through /dev/net/tun, which rtnetlink cannot do.

The ioctls take the kernel's RTNL lock for well under a millisecond; opening
/dev/net/tun and writing sysctls must happen on the namespace worker thread
(they act in the namespace of the calling thread).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from vnetd.net import ipv6conf
from vnetd.net.model import TapSpec

TUN_DEVICE = "/dev/net/tun"
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
IFF_TUN_EXCL = 0x8000
IFF_NO_CARRIER = 0x0040
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE


def _ifreq(spec: TapSpec, exclusive: bool) -> bytes:
    # Created without carrier (IFF_NO_CARRIER, Linux 6.0+): the TAP is on our
    # descriptor, which would give it carrier at once, and a link that comes up
    # with carrier gets its IPv6 link-local address in the same request that
    # brings it up, before that request turns address generation off (see
    # rtnl.change_body). Carrier comes on when a reader (QEMU) attaches.
    flags = IFF_TAP | IFF_NO_PI | (IFF_TUN_EXCL | IFF_NO_CARRIER if exclusive else 0)
    if spec.vnet_hdr:
        flags |= IFF_VNET_HDR
    if spec.multi_queue:
        flags |= IFF_MULTI_QUEUE
    return struct.pack("16sH22x", spec.name.encode(), flags)


def _attach(fd: int, spec: TapSpec, create: bool) -> None:
    fcntl.ioctl(fd, TUNSETIFF, _ifreq(spec, exclusive=create))
    # The kernel cannot clear an owner (-1 is EINVAL): None leaves it as it is.
    if spec.owner_uid is not None:
        fcntl.ioctl(fd, TUNSETOWNER, spec.owner_uid)
    if spec.group_gid is not None:
        fcntl.ioctl(fd, TUNSETGROUP, spec.group_gid)


def open_tun_fds(count: int) -> list[int]:
    """Open `count` /dev/net/tun descriptors (on the namespace thread).

    A tun descriptor belongs to the network namespace of the thread that opened
    it, and a TAP made through it appears there: descriptors opened ahead by
    the namespace worker let the event loop create TAPs without a thread hop.
    """
    return [os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC) for _ in range(count)]


def create_transient(fd: int, spec: TapSpec) -> None:
    """Create a TAP attached to `fd` (from `open_tun_fds`), NOT persistent yet.

    The kernel removes a non-persistent TAP when its last descriptor closes: if
    the daemon dies before `make_persistent`, the TAP dies with it. OSError(EBUSY)
    when the name is taken: plain TUNSETIFF on an existing TAP attaches to it;
    IFF_TUN_EXCL makes creation exclusive, so a lost race is an error, not a
    silent adoption of someone else's device. The caller closes `fd`.
    """
    _attach(fd, spec, create=True)


def make_persistent(fd: int) -> None:
    """The TAP on `fd` outlives the descriptor from now on."""
    fcntl.ioctl(fd, TUNSETPERSIST, 1)


def set_owner(spec: TapSpec) -> None:
    """Change owner/group of an existing persistent TAP (EBUSY while a process holds it)."""
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        _attach(fd, spec, create=False)
    finally:
        os.close(fd)


def disable_ipv6(name: str) -> None:
    """Write the per-device sysctl; a kernel without IPv6 has nothing to disable."""
    try:
        ipv6conf.write_disabled(name, True)
    except FileNotFoundError:
        return


def disable_ipv6_many(names: list[str]) -> None:
    for name in names:
        disable_ipv6(name)


def tun_usable() -> bool:
    try:
        os.close(os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV, errno.EPERM, errno.EACCES):
            return False
        raise
    return True
