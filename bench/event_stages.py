"""The daemon's event path stage by stage, without I/O: CPU per event of the link
decode, the watcher (diff against the view, events built) and the encoding (CloudEvent
JSON + AMQP publish frames), for the current tree and older ones, alternating.

`python -m bench.event_stages [REF ...]` measures the working tree and each git REF
(exported with `git archive`), 3 rounds, and prints the medians as a table. Input:
200 TAPs, 40,000 MTU changes round robin, fed to the watcher in reads of 20 (what it
reads per wakeup at about 20,000 changes/s), each notification a copy of a TAP's real
RTM_NEWLINK as this machine's kernel sent it (bench/data/rtm_newlink_tap.bin, 40
attributes) with its index, name and MTU rewritten. What it leaves out (the socket
reads and writes, the broker's confirms, the event loop) is measured by
bench/publisher.py and the events scenario.
"""

from __future__ import annotations

import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data" / "rtm_newlink_tap.bin"
TAPS, CHANGES, READ = 200, 40_000, 20
HOST, EPOCH = "hv-abcdef", "1733100000000000-12345"


def _messages() -> tuple[list[bytearray], list[bytearray]]:
    tmpl = DATA.read_bytes()
    pos, mtu_at, name_at = 32, 0, 0
    while pos + 4 <= len(tmpl):
        length, kind = struct.unpack_from("=HH", tmpl, pos)
        if kind == 4:
            mtu_at = pos + 4
        elif kind == 3:
            name_at = pos + 4
        pos += (length + 3) & ~3
    if tmpl[name_at:name_at + 3] != b"t0\0":
        raise SystemExit("unexpected capture: its name should be t0")

    def one(i: int, mtu: int) -> bytearray:
        b = bytearray(tmpl)
        struct.pack_into("=i", b, 20, 1000 + i)  # ifi_index
        struct.pack_into("=I", b, mtu_at, mtu)
        b[name_at:name_at + 2] = f"{i % 100:02d}".encode()  # same length: same layout
        return b

    return ([one(i, 999) for i in range(TAPS)],
            [one(k % TAPS, 1000 + k // TAPS) for k in range(CHANGES)])


def measure() -> dict[str, Any]:
    """The stages of the vnetd importable here (old trees lack the newer helpers)."""
    import vnetd
    from vnetd.events import cloudevents, frames
    from vnetd.events.bus import EventBus
    from vnetd.net import monitor
    from vnetd.watchers.netlink import NetlinkWatcher

    initial, changes = _messages()
    links = getattr(monitor.MonitorSocket(None, 1 << 20), "_links", None)

    def decode(b: bytearray) -> list[Any]:
        return monitor.decode(b, len(b), links) if links is not None else monitor.decode(b)

    class Sink:
        def __init__(self) -> None:
            self.events: list[tuple[str, str | None, dict[str, Any]]] = []

        def emit(self, t: str, s: str | None, d: dict[str, Any]) -> None:
            self.events.append((t, s, d))

    class Quiet:
        async def open(self) -> int:
            return 1

        def request_dump(self, what: Any) -> int:
            return 1

        def read(self, n: int = 256) -> list[Any]:
            return []

        def close(self) -> None:
            pass

    out: dict[str, Any] = {"vnetd_from": str(Path(os.path.realpath(vnetd.__file__)).parents[1])}
    for b in initial:
        decode(b)
    t0 = time.process_time()
    decoded = [decode(b) for b in changes]
    out["decode_us"] = (time.process_time() - t0) / CHANGES * 1e6
    sink = Sink()
    watcher = NetlinkWatcher(Quiet(), sink, loop_reader=False)
    for b in initial:
        watcher.feed(decode(b))
    msgs = [m for d in decoded for m in d]
    t0 = time.process_time()
    for i in range(0, len(msgs), READ):
        watcher.feed_batch(msgs[i:i + READ])
    out["watcher_us"] = (time.process_time() - t0) / CHANGES * 1e6
    bus = EventBus(HOST, CHANGES * 2, epoch=EPOCH)
    for t, s, d in sink.events:
        bus.emit(t, s, d)
    events = bus.take(CHANGES * 2)
    out["events"] = len(events)
    t0 = time.process_time()
    if hasattr(frames, "Publishes"):
        build = frames.Publishes(1, "vnetd.events", cloudevents.CONTENT_TYPE, 2, 131064)
        enc = cloudevents.Encoder(HOST, EPOCH)
        keys: dict[str, str] = {}
        for e in events:
            key = keys.get(e.type) or keys.setdefault(e.type,
                                                      cloudevents.routing_key(HOST, e.type))
            mid = cloudevents.event_id(EPOCH, e.sequence)
            build.build(key, mid, enc.encode(e, mid))
    else:
        for e in events:
            frames.publish(1, "vnetd.events", cloudevents.routing_key(HOST, e.type),
                           cloudevents.CONTENT_TYPE, 2, cloudevents.event_id(EPOCH, e.sequence),
                           cloudevents.encode(e, HOST, EPOCH), 131064)
    out["encode_frames_us"] = (time.process_time() - t0) / len(events) * 1e6
    return out


def _run(tree: Path) -> dict[str, Any]:
    """measure() in a process whose first sys.path entry holds only `tree`'s vnetd."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="vnetd-stages-") as shim:
        os.symlink(tree / "vnetd", Path(shim) / "vnetd")
        proc = subprocess.run(
            [sys.executable, "-c", "import json, bench.event_stages as s; "
             "print(json.dumps(s.measure()))"], cwd=shim, capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": f"{shim}:{root}"}, check=True, timeout=600)
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main(refs: list[str]) -> None:
    root = Path(__file__).resolve().parents[1]
    trees: list[tuple[str, Path]] = [("working tree", root)]
    tmp = tempfile.TemporaryDirectory(prefix="vnetd-stages-refs-")
    for ref in refs:
        dest = Path(tmp.name) / ref
        dest.mkdir()
        archive = subprocess.run(["git", "-C", str(root), "archive", ref, "vnetd"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        trees.append((ref, dest))
    rows: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in trees}
    try:
        for rnd in range(3):
            for label, tree in (trees if rnd % 2 == 0 else trees[::-1]):
                rows[label].append(_run(tree))
    finally:
        tmp.cleanup()
    print("| vnetd | decode us/change | watcher us/change | encode+frames us/event | sum |")
    print("|---|---|---|---|---|")
    for label, got in rows.items():
        med = {k: statistics.median(r[k] for r in got)
               for k in ("decode_us", "watcher_us", "encode_frames_us")}
        print(f"| {label} | {med['decode_us']:.1f} | {med['watcher_us']:.1f} | "
              f"{med['encode_frames_us']:.1f} | {sum(med.values()):.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
