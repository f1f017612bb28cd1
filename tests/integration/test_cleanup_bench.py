"""The figure for issue 6: one sweep over 10,000 owned interfaces (goal: under 1 s).

10,000 TAPs made with `ip -n NS -batch`, marked `vnetd:v1` as vnetd marks them,
and one Sweeper on the real kernel (NetlinkBackend inside the namespace), as
the daemon runs it. Baseline in the same run: one bare link dump. Sweeps:
the first (every TAP seen idle for the first time: its clock is written into
its alias), then steady sweeps (clocks already stored, all within grace:
nothing to write or remove), then dry runs; medians printed.

VNETD_CLEANUP_BENCH_N changes the count (default 10000).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time

import pytest

from vnetd.contract.events import NullSink
from vnetd.handlers.cleanup import Rules, Sweeper
from vnetd.handlers.dispatch import KeyedLocks
from vnetd.handlers.leases import Leases
from vnetd.handlers.policy import Policy
from vnetd.net.netlink import NetlinkBackend

N = int(os.environ.get("VNETD_CLEANUP_BENCH_N", "10000"))


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_sweep_over_ten_thousand_owned_interfaces(netns: str) -> None:
    t0 = time.perf_counter()
    batch = "".join(f"tuntap add dev b{i} mode tap\nlink set b{i} alias vnetd:v1\n"
                    for i in range(N))
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input=batch, text=True, check=True)
    made = time.perf_counter() - t0
    net = NetlinkBackend(netns)
    try:
        sweeper = Sweeper(net, Policy(), NullSink(), Rules(tap_grace=3600, bridge_grace=3600),
                          locks=KeyedLocks(), leases=Leases(), restart_clocks=False)
        dumps = []
        for _ in range(5):
            t = time.perf_counter()
            links = await net.list_links()
            dumps.append(time.perf_counter() - t)
        assert sum(1 for link in links if link.owned) == N

        t = time.perf_counter()
        first = await sweeper.sweep()
        first_s = time.perf_counter() - t
        assert first["checked"] == N
        assert first["kept"] == N
        assert first["removed"] == 0

        steady = []
        for _ in range(5):
            t = time.perf_counter()
            result = await sweeper.sweep()
            steady.append(time.perf_counter() - t)
            assert result["kept"] == N
        dry = []
        for _ in range(3):
            t = time.perf_counter()
            result = await sweeper.sweep(dry_run=True)
            dry.append(time.perf_counter() - t)
            assert result["kept"] == N
        print(f"\ncleanup bench: {N} owned TAPs (made in {made:.1f}s with ip -batch)\n"
              f"  bare link dump (baseline), median of 5: {statistics.median(dumps):.3f}s\n"
              f"  first sweep (writes {N} idle clocks into aliases): {first_s:.3f}s\n"
              f"  steady sweep, median of 5: {statistics.median(steady):.3f}s "
              f"(all: {', '.join(f'{x:.3f}' for x in steady)})\n"
              f"  dry-run sweep, median of 3: {statistics.median(dry):.3f}s")
    finally:
        await net.close()
