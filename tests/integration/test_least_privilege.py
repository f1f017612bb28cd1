"""The unit's privilege set is enough, and needed: CAP_NET_ADMIN alone, as a non-root user.

vnetd.service runs as user vnetd with only CAP_NET_ADMIN (ambient and bounding),
NoNewPrivileges and no CAP_SYS_ADMIN. Without systemd as PID 1 the unit itself
cannot run here, so this reproduces its identity with setpriv(1): uid/gid 65534,
no supplementary groups, capabilities reduced to CAP_NET_ADMIN, no_new_privs,
inside a test namespace. The real handlers and netlink backend then create a
bridge, a TAP with an owner and group, attach it, disable its IPv6 (per-device
sysctl), and delete both. The same run without CAP_NET_ADMIN must fail. /dev/net/tun
is given udev's mode 0666 in a mount namespace of the test's (see `tun_node`).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from tests.support import netns as netns_mod

pytestmark = pytest.mark.integration

NOBODY = 65534
SCRIPT = r"""
import asyncio, json, sys
from vnetd.contract.commands import parse_request
from vnetd.contract.errors import VnetdError
from vnetd.handlers.context import Context
from vnetd.handlers.dispatch import Dispatcher
from vnetd.handlers.policy import Policy
from vnetd.handlers.registry import build_registry
from vnetd.net.netlink import NetlinkBackend

async def main():
    net = NetlinkBackend(None)  # the namespace this process runs in
    ctx = Context(host_id="lp", net=net, policy=Policy(), version="test")
    dispatcher = Dispatcher(build_registry(), ctx)
    out = []
    for request in json.loads(sys.argv[1]):
        try:
            out.append({"ok": True, "result": await dispatcher.execute(parse_request(request))})
        except VnetdError as exc:
            out.append({"ok": False, "error": exc.to_dict()})
            break
    await net.close()
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def tun_node(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A /dev/net/tun node with udev's usual mode (0666), for the unprivileged process.

    The unit's user has no CAP_DAC_OVERRIDE, so it relies on the node being
    world-writable, as udev makes it on a real host. A machine without udev may
    leave it 0600: the test then binds this copy over /dev/net/tun in a mount
    namespace of its own, and the machine's node is never changed.
    """
    node = tmp_path_factory.mktemp("tun") / "tun"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(10, 200))
    os.chmod(node, 0o666)  # mknod applies the umask
    return str(node)


def _run(netns: str, requests: list[dict[str, object]], caps: str,
         tun: str) -> list[dict[str, object]]:
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) missing"
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
           'mount --bind "$0" /dev/net/tun && exec "$@"', tun,
           "ip", "netns", "exec", netns, setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}",
           "--clear-groups", f"--inh-caps=-all{caps}", f"--ambient-caps=-all{caps}",
           f"--bounding-set=-all{caps}", "--no-new-privs", "--",
           sys.executable, "-c", SCRIPT, json.dumps(requests)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    result: list[dict[str, object]] = json.loads(proc.stdout.splitlines()[-1])
    return result


def test_cap_net_admin_alone_is_enough(netns: str, tun_node: str) -> None:
    owner, group = 4_242_424, 4_242_425  # ids without a name: `ip` prints them as numbers
    ensure = [
        {"op": "bridge.ensure", "args": {"name": "lpbr0", "mtu": 1450}},
        {"op": "tap.ensure", "args": {"name": "lptap0", "bridge": "lpbr0",
                                      "owner_uid": owner, "group_gid": group}},
    ]
    replies = _run(netns, ensure, ",+net_admin", tun_node)
    assert [r["ok"] for r in replies] == [True, True], replies
    tap = netns_mod.ip_json(netns, "-d", "link", "show", "lptap0")[0]
    assert tap["master"] == "lpbr0"
    info = tap["linkinfo"]["info_data"]
    assert (int(info["user"]), int(info["group"])) == (owner, group), info
    # IPv6 off on a bridge port: address generation none, in the marking request
    # (tests/integration/test_tap_ipv6.py); no address.
    assert tap["inet6_addr_gen_mode"] == "none"
    addrs = netns_mod.ip_json(netns, "-6", "addr", "show", "dev", "lptap0")
    assert not any(a.get("addr_info") for a in addrs), addrs

    replies = _run(netns, [{"op": "tap.delete", "args": {"name": "lptap0"}},
                           {"op": "bridge.delete", "args": {"name": "lpbr0"}}], ",+net_admin",
                   tun_node)
    assert [r["ok"] for r in replies] == [True, True], replies
    assert [e["ifname"] for e in netns_mod.ip_json(netns, "link", "show")] == ["lo"]


def test_without_cap_net_admin_nothing_is_created(netns: str, tun_node: str) -> None:
    replies = _run(netns, [{"op": "bridge.ensure", "args": {"name": "lpbr1"}}], "", tun_node)
    assert replies[0]["ok"] is False
    error = replies[0]["error"]
    assert isinstance(error, dict)
    assert "not permitted" in str(error["message"]).lower() or "EPERM" in json.dumps(error), error
    assert netns_mod.link(netns, "lpbr1") is None
