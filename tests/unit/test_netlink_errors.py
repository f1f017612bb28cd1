"""Kernel errnos named in the contract's terms (vnetd.net.netlink.error_from_errno)."""

from __future__ import annotations

import errno

import pytest

from vnetd.contract.errors import Conflict, Internal, NotFound, Unavailable
from vnetd.net.netlink import error_from_errno


@pytest.mark.parametrize(("code", "kind"), [
    (errno.EEXIST, Conflict),
    # a bridge takes at most 1,023 ports (BR_MAX_PORTS): attaching one more is
    # refused by the bridge's state, not a bug of vnetd's (seen at TAP 1,024 on
    # one bridge in tests/integration/test_cluster_rolling.py)
    (errno.EXFULL, Conflict),
    (errno.ENODEV, NotFound),
    (errno.ENOBUFS, Unavailable),
    (errno.EIO, Internal),
])
def test_errno_kinds(code: int, kind: type) -> None:
    err = error_from_errno(code, "set link #7")
    assert type(err) is kind
    assert str(err).startswith("set link #7: ")
