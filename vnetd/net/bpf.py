"""Classic BPF socket filters for the watchers' netlink sockets: notices nobody reads,
dropped by the kernel before they are queued.

Each dropped notice saves a receive (a system call and a copy) and room in the
socket's buffer; a filter never hides loss (ENOBUFS is still reported). A
notification is one message per datagram, so the first message's header decides;
anything the programs do not recognise is accepted. nlmsg_type is in host byte
order and classic BPF loads halfwords big-endian, so the type is read a byte at a
time. tests/integration/test_monitor_filter.py runs both programs on the kernel.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

from vnetd.net.overlay import NTF_SELF
from vnetd.net.rtnl import NLMSGHDR, RTM_DELLINK, RTM_DELNEIGH, RTM_NEWLINK, RTM_NEWNEIGH

SO_ATTACH_FILTER = 26
_LD_B, _JEQ, _JSET, _RET = 0x30, 0x15, 0x45, 0x06  # BPF_LD|B|ABS, JMP|JEQ|K, JMP|JSET|K, RET|K
_DROP, _ACCEPT = 0, 0xFFFFFFFF
_TYPE_LO, _TYPE_HI = (4, 5) if sys.byteorder == "little" else (5, 4)
_FAMILY = NLMSGHDR.size          # ifinfomsg.ifi_family, ndmsg.ndm_family
_NDM_FLAGS = NLMSGHDR.size + 10  # ndmsg: family, pad, pad16, ifindex, state u16, flags

Insn = tuple[int, int, int, int]


def _of_family(new: int, deleted: int, family: int) -> list[Insn]:
    """Jumps to the end of these instructions for a `new`/`deleted` message of
    `family`, and to ACCEPT (the last of the program, see _program) for anything else."""
    return [
        (_LD_B, 0, 0, _TYPE_LO),
        (_JEQ, 1, 0, new),
        (_JEQ, 0, -1, deleted),           # -1: ACCEPT, resolved by _program
        (_LD_B, 0, 0, _TYPE_HI),
        (_JEQ, 0, -1, 0),
        (_LD_B, 0, 0, _FAMILY),
        (_JEQ, 0, -1, family),
    ]


def _program(insns: list[Insn]) -> bytes:
    """`insns` then DROP then ACCEPT; a jump offset of -1 means ACCEPT."""
    accept = len(insns) + 1
    out = []
    for pc, (code, jt, jf, k) in enumerate([*insns, (_RET, 0, 0, _DROP), (_RET, 0, 0, _ACCEPT)]):
        to_accept = accept - pc - 1
        out.append(struct.pack("=HBBI", code, to_accept if jt == -1 else jt,
                               to_accept if jf == -1 else jf, k))
    return b"".join(out)


def bridge_port_filter() -> bytes:
    """For the link watcher: drop bridge *port* notices (RTM_NEWLINK/DELLINK of family
    AF_BRIDGE), about as many as the links' own messages while TAPs join bridges
    (7 of 15 per plugged TAP); the watcher reads the links' own (AF_UNSPEC) ones."""
    return _program(_of_family(RTM_NEWLINK, RTM_DELLINK, socket.AF_BRIDGE))


def bridge_fdb_filter() -> bytes:
    """For the neighbour watcher: drop FDB notices of family AF_BRIDGE without NTF_SELF
    (a bridge's own table: the local entry every new port brings, learnt MACs), which
    the overlay ignores (overlay_wire.parse_notice); VXLAN rows carry NTF_SELF."""
    return _program([*_of_family(RTM_NEWNEIGH, RTM_DELNEIGH, socket.AF_BRIDGE),
                     (_LD_B, 0, 0, _NDM_FLAGS),
                     (_JSET, -1, 0, NTF_SELF)])


def attach(sock: socket.socket, program: bytes) -> None:
    """SO_ATTACH_FILTER: the kernel copies the program during the call."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
