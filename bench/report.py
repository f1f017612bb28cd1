"""Turns Results into bench/results/latest.json, latest.md and PNG plots."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # bench.cluster, bench.ovs and bench.overlay use write_pair alone
    from bench.runner import Results

NOOP = "no-op responder (lean) x64"
"""The goal's baseline: the leanest responder doing vnetd's AMQP work (bench/responder.py)."""
NOOP_AIO_PIKA = "no-op responder (aio-pika) x64"

GOALS: list[tuple[str, str, str, str, str, float | None]] = [
    # (id, text, numerator way, denominator way, scenario, threshold; None: no goal)
    ("e2e_vs_noop", "plug end to end, 64 in flight, vs the no-op responder (lean)",
     "vnetd jobs x64", NOOP, "plug", 0.6),
    ("e2e_vs_noop_aio_pika", "plug end to end, 64 in flight, vs the aio-pika no-op responder "
     "(the baseline before; not the transport's floor)", "vnetd jobs x64", NOOP_AIO_PIKA,
     "plug", None),
    ("e2e_vs_subprocess", "plug end to end, 64 in flight, vs the subprocess way",
     "vnetd jobs x64", "ip per step (subprocess)", "plug", 4.0),
    ("batch_vs_ip_batch", "plug through one batch job vs `ip -batch`", "vnetd one batch",
     "ip -batch", "plug", 0.9),
    ("pipelined_batch_vs_ip_batch",
     "plug through one batch job without stop_on_error (pipelined) vs `ip -batch`",
     "vnetd one batch, pipelined", "ip -batch", "plug", 0.9),
]


def medians(res: Results) -> dict[tuple[str, str, int], dict[str, float]]:
    """Per (scenario, way, n): median ops/s, p50 and p99 over the repetitions."""
    groups: dict[tuple[str, str, int], list[Any]] = defaultdict(list)
    for r in res.runs:
        groups[(r.scenario, r.way, r.n)].append(r)
    out: dict[tuple[str, str, int], dict[str, float]] = {}
    for key, runs in groups.items():
        entry: dict[str, float] = {
            "ops_per_s": statistics.median(r.ops_per_s for r in runs), "reps": len(runs)}
        p50 = [r.percentile(50) for r in runs if r.latencies_ms and len(r.latencies_ms) > 1]
        p99 = [r.percentile(99) for r in runs if r.latencies_ms and len(r.latencies_ms) > 1]
        for what in ("server_cpu_ms", "client_cpu_ms", "broker_cpu_ms"):
            cpu = [v for r in runs if (v := getattr(r, what)) is not None]
            if cpu:
                entry[what] = statistics.median(cpu)
        if p50:
            entry["p50_ms"] = statistics.median(p50)
            entry["p99_ms"] = statistics.median(p99)
        out[key] = entry
    return out


def goals(res: Results, med: dict[tuple[str, str, int], dict[str, float]]) -> list[dict[str, Any]]:
    out = []
    sizes = sorted({r.n for r in res.runs})
    for gid, text, num, den, scen, thr in GOALS:
        for n in sizes:
            a, b = med.get((scen, num, n)), med.get((scen, den, n))
            if a is None or b is None or not b["ops_per_s"]:
                continue
            ratio = a["ops_per_s"] / b["ops_per_s"]
            out.append({"goal": gid, "text": text, "n": n, "target": thr,
                        "ratio": round(ratio, 2), "met": None if thr is None else ratio >= thr,
                        "numerator_ops_per_s": round(a["ops_per_s"], 1),
                        "denominator_ops_per_s": round(b["ops_per_s"], 1)})
    for s in res.scale:
        if s["existing_links"] == 10000:
            out.append({"goal": "ready_10k", "text": "start to READY with 10,000 interfaces",
                        "target": "< 3 s", "value": s["ready_s"], "met": s["ready_s"] < 3})
        out.append({"goal": f"rss_{s['existing_links']}",
                    "text": f"resident memory with {s['existing_links']} interfaces",
                    "target": "< 100 MB", "value": s["rss_mb"], "met": s["rss_mb"] < 100})
    cpu = {w: e.get("server_cpu_ms") for (sc, w, _), e in med.items() if sc == "plug"}
    for count, target in ((0, 1.0), (10000, 1.1)):
        v = cpu.get(f"vnetd jobs x64, {count} existing")
        if v is not None:
            out.append({"goal": f"cpu_per_plug_{count}",
                        "text": f"daemon CPU ms per plug, events on, {count:,} existing "
                                "interfaces", "target": f"<= {target} ms",
                        "value": round(v, 3), "met": v <= target})
    base = cpu.get("vnetd jobs x64, 0 existing")
    for count in (1000, 10000):
        v = cpu.get(f"vnetd jobs x64, {count} existing")
        if v is not None and base:
            out.append({"goal": f"cpu_growth_{count}",
                        "text": f"daemon CPU per plug at {count:,} existing interfaces / at 0",
                        "target": "<= 1.1", "value": round(v / base, 2),
                        "met": v / base <= 1.1})
    for (sc, w, n), e in med.items():
        d = med.get(("libvirt", "libvirt-python", n))
        if sc == "libvirt" and w == "vnetd" and d and e["ops_per_s"]:
            over = d["ops_per_s"] / e["ops_per_s"] - 1
            out.append({"goal": "libvirt_overhead", "n": n,
                        "text": "libvirt network define+start+destroy+undefine: vnetd's time "
                                "over libvirt-python's", "target": "< 5 %",
                        "value": f"{over * 100:.1f} %", "met": over < 0.05})
    for c in res.client_check.values():
        out.append({"goal": "client_not_bottleneck",
                    "text": f"{c['responder']} x64: 2 client processes / 1 (the load client "
                            "is not the limit)", "target": "<= 1.1", "value": c["ratio"],
                    "met": None if c["client_is_bottleneck"] is None
                    else not c["client_is_bottleneck"]})
    current = [e for e in res.events if e.get("vnetd", "current") == "current"]
    at_1000 = [e for e in current if e["rate_asked"] == 1000.0]
    if at_1000 and at_1000[0]["p99_ms"] is not None:
        p99 = at_1000[0]["p99_ms"]
        out.append({"goal": "event_p99", "text": "event latency p99 at 1,000 changes/s",
                    "target": "< 5 ms", "value": p99, "met": p99 < 5})
    else:
        out.append({"goal": "event_p99", "text": "event latency p99 at 1,000 changes/s",
                    "target": "< 5 ms", "value": None, "met": None,
                    "note": res.unavailable.get("events", "no figure")})
    at_10k = [e for e in current if e["rate_asked"] == 10000.0 and e["p99_ms"] is not None]
    if at_10k:
        p99 = at_10k[0]["p99_ms"]
        out.append({"goal": "event_p99_10k", "text": "event latency p99 at 10,000 changes/s",
                    "target": "< 50 ms", "value": p99, "met": p99 < 50})
    # Sustained: no loss (no overrun, so no host.resync) and the last event within a
    # second of the last change (the pipeline kept up, it did not just buffer).
    clean = [e["delivered_per_s"] for e in current if not e["resyncs"]
             and "delivered_per_s" in e and (e.get("lag_ms") or 0) <= 1000]
    if clean:
        best = max(clean)
        out.append({"goal": "events_sustained", "text": "events sustained, kernel to subscriber "
                    "(no overrun, lag <= 1 s)", "target": ">= 20,000/s", "value": best,
                    "met": best >= 20000})
    ceiling = (res.events_ceiling or {}).get("ceiling")
    if ceiling:
        out.append({"goal": "events_broker_ceiling",
                    "text": "the broker's ceiling, one message per event (trivial publisher, "
                            "same message size; vnetd cannot exceed it)", "target": "",
                    "value": ceiling["delivered_per_s"], "met": None})
    return out


def write_pair(out_dir: Path, name: str, result: Any, text: str) -> str:
    """`<name>.json` (the result, indented) and `<name>.md` (its text) in `out_dir`, made
    if missing; returns the text."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(text)
    return text


def write(res: Results, out_dir: Path) -> dict[str, Any]:
    med = medians(res)
    gl = goals(res, med)
    data: dict[str, Any] = {
        "mode": res.mode, "meta": res.meta, "goals": gl, "unavailable": res.unavailable,
        "notes": res.notes,
        "medians": [{"scenario": k[0], "way": k[1], "n": k[2],
                     **{kk: round(v, 3) for kk, v in e.items()}} for k, e in sorted(med.items())],
        "runs": [r.summary() for r in res.runs],
        "scale": res.scale,
        "events": res.events,
        "client_check": res.client_check,
        "publisher": res.publisher,
        "events_ceiling": res.events_ceiling,
    }
    write_pair(out_dir, "latest", data, markdown(data))
    try:
        plots(data, out_dir)
    except ImportError:
        data["notes"].append("matplotlib is not installed: no plots")
    return data


def replot(out_dir: Path) -> None:
    """Draw the plots again from an existing latest.json."""
    plots(json.loads((out_dir / "latest.json").read_text()), out_dir)


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def markdown(data: dict[str, Any]) -> str:
    m = data["meta"]
    lines = [
        f"# vnetd benchmark ({data['mode']} mode)",
        "",
        f"Commit {m.get('commit')}{' (with uncommitted changes)' if m.get('dirty') else ''}, "
        f"kernel {m.get('kernel')}, {m.get('cpus')} CPUs, started {m.get('started')}; "
        f"load average at start {_fmt(m['loadavg_start'][0], 2)}, at end "
        f"{_fmt(m.get('loadavg_end', [None])[0], 2)}; {m.get('seconds')} s. "
        "The machine is shared with other engineers' test runs: only ratios of figures "
        "measured side by side in this run mean anything; medians over the repetitions.",
        "",
        "## Goals",
        "",
        "| goal | N | target | measured | met |",
        "|---|---|---|---|---|",
    ]
    for g in data["goals"]:
        if "ratio" in g:
            measured = (f"{g['ratio']}x ({_fmt(g['numerator_ops_per_s'])} vs "
                        f"{_fmt(g['denominator_ops_per_s'])} ops/s)")
            target, met = (("-", "-") if g["target"] is None else
                           (f">= {g['target']}x", "yes" if g["met"] else "NO"))
            lines.append(f"| {g['text']} | {g['n']} | {target} | {measured} | {met} |")
        else:
            met = "-" if g["met"] is None else ("yes" if g["met"] else "NO")
            value = g.get("note") if g["value"] is None else g["value"]
            lines.append(f"| {g['text']} | | {g['target']} | {value} | {met} |")
    what = {"plug": "N TAPs created and attached", "unplug": "N TAPs deleted",
            "libvirt": "N libvirt networks defined, started, destroyed, undefined "
                       "(one cycle at a time; ops/s = cycles/s)"}
    for scenario in ("plug", "unplug", "libvirt"):
        rows = [r for r in data["medians"] if r["scenario"] == scenario]
        if not rows:
            continue
        lines += ["", f"## {scenario.capitalize()}: {what[scenario]}", "",
                  "| N | way | ops/s | p50 ms | p99 ms | server CPU ms/op | reps |",
                  "|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r["n"], -r["ops_per_s"])):
            lines.append(f"| {r['n']} | {r['way']} | {_fmt(r['ops_per_s'])} | "
                         f"{_fmt(r.get('p50_ms'), 2)} | {_fmt(r.get('p99_ms'), 2)} | "
                         f"{_fmt(r.get('server_cpu_ms'), 2)} | {int(r['reps'])} |")
    if data.get("publisher"):
        lines += ["", "## Event publisher alone", "",
                  "bench/publisher.py: EventBus + EventPublisher in a process of their own, "
                  "events emitted in bursts of 100 per loop iteration, received by a lean "
                  "subscriber (bench/lean_amqp.py) in the same process (its CPU counted too).", "",
                  "| vnetd | rep | events | emitted /s | delivered /s | CPU ms/event | p50 ms "
                  "| p99 ms |", "|---|---|---|---|---|---|---|---|"]
        for p in data["publisher"]:
            lines.append(f"| {p['vnetd']} | {p['rep']} | {p['events']} | {p['emitted_per_s']} "
                         f"| {p['delivered_per_s']} | {p['cpu_ms_per_event']} | {p['p50_ms']} "
                         f"| {p['p99_ms']} |")
    if data.get("client_check"):
        lines += ["", "## Load client check", "",
                  "Each no-op responder, 64 in flight, driven by the benchmark's client in one "
                  "process and by two client processes (32 each), side by side (medians over "
                  "the repetitions; CPU per job of the responder, the client processes and "
                  "the broker):", "",
                  "| responder | N | reps | 1 process ops/s | 2 processes ops/s | 2 / 1 | "
                  "start skew ms | verdict |", "|---|---|---|---|---|---|---|---|"]
        for c in data["client_check"].values():
            verdict = ("no verdict: the processes started more than 10% of the run apart"
                       if c["client_is_bottleneck"] is None else
                       "the client limits the figure" if c["client_is_bottleneck"] else
                       "the client is not the bottleneck")
            lines.append(f"| {c['responder']} | {c['n']} | {c['reps']} | "
                         f"{c['one_process_ops_per_s']} | {c['two_processes_ops_per_s']} | "
                         f"{c['ratio']} | {c['start_skew_ms']} | {verdict} |")
        rows = [r for r in data["medians"] if "client process" in r["way"]]
        lines += ["", "Cores busy: CPU ms per job x jobs/s / 1000 (of this machine's "
                  f"{data['meta'].get('cpus')}); a client that keeps less than one core busy "
                  "is not what limits the figure.", "",
                  "| way | ops/s | responder CPU ms/job | client CPU ms/job | "
                  "broker CPU ms/job | cores busy: responder, client, broker |",
                  "|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: r["way"]):
            busy = ", ".join("-" if r.get(k) is None else f"{r[k] * r['ops_per_s'] / 1000:.2f}"
                             for k in ("server_cpu_ms", "client_cpu_ms", "broker_cpu_ms"))
            lines.append(f"| {r['way']} | {_fmt(r['ops_per_s'])} | "
                         f"{_fmt(r.get('server_cpu_ms'), 3)} | "
                         f"{_fmt(r.get('client_cpu_ms'), 3)} | "
                         f"{_fmt(r.get('broker_cpu_ms'), 3)} | {busy} |")
    if data["scale"]:
        lines += ["", "## Scale: existing interfaces", "",
                  "| existing links | start to READY s | host.snapshot ms | links in snapshot "
                  "| RSS MB | peak RSS MB |", "|---|---|---|---|---|---|"]
        for s in data["scale"]:
            lines.append(f"| {s['existing_links']} | {s['ready_s']} | {s['snapshot_ms']} | "
                         f"{s['snapshot_links']} | {s['rss_mb']} | {s['peak_rss_mb']} |")
    if data["events"]:
        lines += ["", "## Events: kernel change to subscriber", "",
                  "MTU changes on 200 TAPs at a fixed rate (raw RTM_NEWLINK, pipelined: the "
                  "changes due each millisecond in one datagram), matched to the "
                  "`link.changed` events a lean subscriber (bench/lean_amqp.py) on "
                  "`vnetd.events` receives. Changes the watcher folded into a later event are "
                  "not timed. Sustained: no overrun and the last event within 1 s of the last "
                  "change.", "",
                  "`delivered /s`: changes made over the time from the first change to the "
                  "last event received; `lag`: last event after the last change.", "",
                  "| vnetd | rate asked /s | rate sent /s | changes | events matched | "
                  "delivered /s | lag ms | p50 ms | p99 ms | max ms | host.resync (overruns) "
                  "| daemon CPU ms/change |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in data["events"]:
            lines.append(f"| {e.get('vnetd', 'current')} | {e['rate_asked']} | "
                         f"{e['rate_sent']} | {e['changes']} | {e['events_matched']} | "
                         f"{e.get('delivered_per_s')} | {e.get('lag_ms')} | {e['p50_ms']} | "
                         f"{e['p99_ms']} | {e['max_ms']} | {e['resyncs']} | "
                         f"{e['daemon_cpu_ms_per_change']} |")
        first = next((e for e in data["events"] if e["resyncs"]), None)
        lines += ["", "First overrun: " + (f"at {first['rate_sent']} changes/s" if first else
                                           "none at any rate tried")]
        lines += ["", "CPU per message (one event each) of the daemon, the broker and the "
                  "subscriber (bench/lean_amqp.py): a change folded into a later event costs "
                  "the daemon a decode, not a message.", "",
                  "| vnetd | rate asked /s | messages | daemon CPU ms/message | "
                  "broker CPU ms/message | subscriber CPU ms/message |",
                  "|---|---|---|---|---|---|"]
        for e in data["events"]:
            per = e["changes"] / max(e.get("messages") or 0, 1)
            cells = [None if e.get(k) is None else round(e[k] * per, 4) for k in (
                "daemon_cpu_ms_per_change", "broker_cpu_ms_per_change",
                "subscriber_cpu_ms_per_change")]
            lines.append(f"| {e.get('vnetd', 'current')} | {e['rate_asked']} | "
                         f"{e.get('messages')} | {cells[0]} | {cells[1]} | {cells[2]} |")
    ceiling = data.get("events_ceiling") or {}
    if ceiling.get("ceiling"):
        c = ceiling["ceiling"]
        one, two = ceiling["one_subscriber"], ceiling["two_subscribers"]
        lines += ["", "## Events: the broker's ceiling and the subscriber check", "",
                  f"A trivial publisher (bench/lean_amqp.py: prebuilt frames, same exchange, "
                  f"properties and confirms, {c['body_bytes']}-byte bodies) to the same lean "
                  f"subscriber: **{c['delivered_per_s']} messages/s**, broker CPU "
                  f"{c['broker_cpu_ms_per_msg']} ms/message, publisher "
                  f"{c['publisher_cpu_ms_per_msg']}, subscriber "
                  f"{c['subscriber_cpu_ms_per_msg']}. One message per event (the contract) "
                  "means vnetd cannot deliver more events per second than this.", "",
                  f"20,000 changes/s offered, one subscriber: {one['delivered_per_s']}/s "
                  f"delivered ({one['messages']} messages, {one['resyncs']} overruns); two "
                  f"subscriber processes sharing one queue: {two['delivered_per_s']}/s "
                  f"({two['messages']} messages, {two['resyncs']} overruns): "
                  f"{ceiling['two_over_one']}x (above 1.1x would mean the subscriber "
                  "limited the figure)."]
    lines += ["", "## Not measured", ""]
    for k, v in data["unavailable"].items():
        lines.append(f"- {k}: {v}")
    if data["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in data["notes"]]
    return "\n".join(lines) + "\n"


COMPARISONS = {
    # scenario: [(vnetd way, baseline way)], one group of bars each; goals come from GOALS
    "plug": [("vnetd jobs x64", NOOP),
             ("vnetd jobs x64", NOOP_AIO_PIKA),
             ("vnetd jobs x64", "ip per step (subprocess)"),
             ("vnetd one batch", "ip -batch"),
             ("vnetd one batch, pipelined", "ip -batch"),
             ("vnetd jobs x1", "no-op responder (lean) x1")],
    "unplug": [("vnetd jobs x64", "ip per step (subprocess)"),
               ("vnetd jobs x64", "ip -batch (group delete)"),
               ("vnetd one batch, pipelined", "ip -batch (group delete)"),
               ("vnetd one batch", "ip -batch")],
}


def ratios(data: dict[str, Any], scenario: str) -> list[dict[str, Any]]:
    """Per comparison of `scenario`: {vnetd, baseline, goal, by_n: {n: ratio}} from medians
    measured side by side in the same run."""
    ops = {(r["way"], r["n"]): r["ops_per_s"] for r in data["medians"]
           if r["scenario"] == scenario}
    goal_of = {(num, den): thr for _, _, num, den, scen, thr in GOALS if scen == scenario}
    out = []
    for num, den in COMPARISONS.get(scenario, []):
        by_n = {n: ops[(num, n)] / ops[(den, n)] for (way, n) in sorted(ops)
                if way == num and ops.get((den, n))}
        if by_n:
            out.append({"vnetd": num, "baseline": den, "goal": goal_of.get((num, den)),
                        "by_n": by_n})
    return out


def plots(data: dict[str, Any], out_dir: Path) -> None:
    """plug.png / unplug.png: vnetd / baseline per comparison, one bar per N, goal lines;
    scale.png: start time, snapshot time and memory against existing interfaces."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    for scenario in ("plug", "unplug"):
        comps = ratios(data, scenario)
        if not comps:
            continue
        sizes = sorted({n for c in comps for n in c["by_n"]})
        width = 0.8 / len(sizes)
        colors = plt.get_cmap("Blues")([0.45 + 0.5 * i / max(len(sizes) - 1, 1)
                                        for i in range(len(sizes))])
        fig, ax = plt.subplots(figsize=(12.5, 5.2))
        for j, n in enumerate(sizes):
            xs = [i - 0.4 + width * (j + 0.5) for i, c in enumerate(comps) if n in c["by_n"]]
            ys = [c["by_n"][n] for c in comps if n in c["by_n"]]
            bars = ax.bar(xs, ys, width * 0.92, color=colors[j], label=f"N = {n:,}",
                          edgecolor="#333333", linewidth=0.4)
            ax.bar_label(bars, labels=[f"{y:.2g}x" for y in ys], fontsize=7, padding=2)
        goal_drawn = False
        for i, c in enumerate(comps):
            if c["goal"] is not None:
                ax.hlines(c["goal"], i - 0.45, i + 0.45, colors="#c62828", linewidth=2.2,
                          label="_nolegend_" if goal_drawn else "goal")
                ax.annotate(f"goal {c['goal']:g}x", (i + 0.45, c["goal"]), fontsize=7,
                            color="#c62828", ha="right", va="bottom")
                goal_drawn = True
        ax.axhline(1.0, color="#555555", linestyle="--", linewidth=1,
                   label="as fast as the baseline")
        ax.set_yscale("log")
        every = [y for c in comps for y in c["by_n"].values()] + [
            c["goal"] for c in comps if c["goal"]]
        lo, hi = min([*every, 1.0]) / 1.6, max([*every, 1.0]) * 1.8
        ax.set_ylim(lo, hi)
        ticks = [t for t in (0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64) if lo <= t <= hi]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}x"))
        ax.set_xticks(range(len(comps)))
        ax.set_xticklabels([f"{c['vnetd']}\nvs {c['baseline']}" for c in comps], fontsize=8)
        ax.set_ylabel("vnetd / baseline (TAPs per second; higher is better)")
        what = "created and attached" if scenario == "plug" else "deleted"
        ax.set_title(f"{scenario}: N TAPs {what}; vnetd as a multiple of each baseline "
                     "(medians, same run)", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        # Outside the axes: tall bars and goal lines stay readable.
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        fig.savefig(out_dir / f"{scenario}.png", dpi=90)
        plt.close(fig)
    if data["scale"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [max(s["existing_links"], 1) for s in data["scale"]]
        ax.plot(xs, [s["ready_s"] for s in data["scale"]], marker="o", label="start to READY (s)")
        ax.plot(xs, [s["snapshot_ms"] / 1000 for s in data["scale"]], marker="o",
                label="host.snapshot (s)")
        ax.plot(xs, [s["rss_mb"] / 100 for s in data["scale"]], marker="o",
                label="RSS (100 MB)")
        ax.set_xscale("log")
        ax.set_xlabel("existing interfaces (0 plotted at 1)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "scale.png", dpi=90)
        plt.close(fig)
