#!/usr/bin/env python3
"""Summary table and latency plot for parley-bench results (docs/benchmarks.md).

    scripts/bench_report.py [--svg FILE] RESULT.json...

Prints one line per scenario with its headline figure next to issue 9's
target, and, if a throughput result is given, writes an SVG of latency
(p50, p99, p999; log scale) against offered load. Standard library only.
"""
import argparse
import json
import math
import sys


def headline(d):
    r = d["result"]
    s = d["scenario"]
    if s == "idle":
        return ("memory per idle connection", f"{r['bytes_per_connection']:.0f} B ({r['connections']} conns)",
                "<= 6 kB", r["bytes_per_connection"] <= 6000)
    if s == "throughput":
        rows = []
        for ph in r["rates"]:
            g = ph["groups"]["pairs"]
            rows.append((ph["offered_rate"], g["latency"]["p99_ms"]))
        p99_10k = [p for rate, p in rows if rate == 10000]
        extra = f"; p99 at 10k/s {p99_10k[0]:.2f} ms (target <= 3 ms)" if p99_10k else ""
        return ("saturation throughput", f"{r['saturation_rate']:.0f} msgs/s{extra}", ">= 50,000 msgs/s",
                r["saturation_rate"] >= 50000)
    if s == "receipt-rtt":
        g = r["rates"][0]["groups"]["pairs"]
        return ("receipt round trip", f"p50 {g['receipt_rtt']['p50_ms']:.2f} / p99 {g['receipt_rtt']['p99_ms']:.2f} ms at "
                f"{g['offered_rate']:.0f}/s (delivery p99 {g['latency']['p99_ms']:.2f} ms)", "(none)", None)
    if s == "reconnects":
        return ("token reconnects", f"{r['reconnects_per_s']:.0f} /s", ">= 20,000 /s", r["reconnects_per_s"] >= 20000)
    if s == "storm":
        return ("reconnect storm", f"{r['caught_up_s']:.2f} s for {r['devices']} devices", "<= 3 s for 10,000",
                r["caught_up_s"] <= 3 and r["devices"] >= 10000)
    if s == "backfill":
        return ("new-device backfill", f"{r['backfill_rate']:.0f} msgs/s ({r['history']} messages)", "(none)", None)
    if s == "hot":
        return ("hot conversation", f"pairs' p99 x{r['p99_ratio']:.2f} with the hot pair", "<= 2x", r["p99_ratio"] <= 2)
    if s == "history":
        # The worst ratio (largest store / smallest) of each measurement's p50 and p99.
        ra = r["ratios"]
        first, last = r["probes"][0]["fill_messages"], r["probes"][-1]["fill_messages"]
        def worst(keys, q):
            return max(ra[k][q] for k in keys)
        send = ("send_sent_response", "send_arrival")
        hist = ("history_newest", "history_random")
        sync = ("sync_behind_page", "sync_random_page", "sync_fresh_first_page")
        search = tuple(k for k in ("search_frequent", "search_rare") if k in ra)  # older results have none
        line = (f"{first:,} -> {last:,} msgs, worst p50/p99 ratio: send x{worst(send, 'p50'):.2f}/"
                f"x{worst(send, 'p99'):.2f}, history x{worst(hist, 'p50'):.2f}/x{worst(hist, 'p99'):.2f}, "
                f"sync x{worst(sync, 'p50'):.2f}/x{worst(sync, 'p99'):.2f}")
        if search:
            line += f", search x{worst(search, 'p50'):.2f}/x{worst(search, 'p99'):.2f}"
        return ("scale of history", line, "no degradation", None)
    return (s, "?", "", None)


def svg_plot(throughput, path):
    rows = []
    for ph in throughput["result"]["rates"]:
        g = ph["groups"]["pairs"]["latency"]
        rows.append((ph["offered_rate"], g["p50_ms"], g["p99_ms"], g["p999_ms"]))
    rows.sort()
    w, h, ml, mr, mt, mb = 720, 420, 70, 130, 30, 50
    xs = [r[0] for r in rows]
    ys = [v for r in rows for v in r[1:] if v > 0]
    if not rows or not ys:
        return
    xmax = max(xs) * 1.05
    ylo = 10 ** math.floor(math.log10(min(ys)))
    yhi = 10 ** math.ceil(math.log10(max(ys)))
    if yhi <= ylo:
        yhi = ylo * 10

    def px(x):
        return ml + (w - ml - mr) * x / xmax

    def py(y):
        y = max(y, ylo)
        return mt + (h - mt - mb) * (1 - (math.log10(y) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="14">parleyd: delivery latency against offered load '
           f'({throughput["result"]["pairs"]} pairs, durable)</text>']
    d = ylo
    while d <= yhi * 1.001:
        y = py(d)
        out.append(f'<line x1="{ml}" x2="{w - mr}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">{d:g} ms</text>')
        d *= 10
    for x in xs:
        out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{mt}" y2="{h - mb}" stroke="#eee"/>')
        out.append(f'<text x="{px(x):.1f}" y="{h - mb + 16}" text-anchor="middle">{x / 1000:g}k</text>')
    out.append(f'<text x="{(ml + w - mr) / 2}" y="{h - 10}" text-anchor="middle">offered load (messages/s)</text>')
    out.append(f'<line x1="{ml}" x2="{w - mr}" y1="{py(50):.1f}" y2="{py(50):.1f}" stroke="#c00" stroke-dasharray="4"/>')
    out.append(f'<text x="{w - mr + 4}" y="{py(50) + 4:.1f}" fill="#c00">p99 limit 50 ms</text>')
    for i, (name, colour) in enumerate([("p50", "#1f77b4"), ("p99", "#ff7f0e"), ("p999", "#2ca02c")]):
        pts = " ".join(f"{px(r[0]):.1f},{py(r[1 + i]):.1f}" for r in rows)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for r in rows:
            out.append(f'<circle cx="{px(r[0]):.1f}" cy="{py(r[1 + i]):.1f}" r="3" fill="{colour}"/>')
        out.append(f'<text x="{w - mr + 4}" y="{mt + 20 + 18 * i}" fill="{colour}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"plot: {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--svg")
    ap.add_argument("results", nargs="+")
    a = ap.parse_args()
    rows = []
    throughput = None
    for p in a.results:
        with open(p) as f:
            d = json.load(f)
        if d["scenario"] == "throughput":
            throughput = d
        rows.append((d["scenario"],) + headline(d) + (d.get("ok", False),))
    print(f"{'scenario':<12} {'figure':<28} {'measured':<62} {'target':<18} {'met':<5} checks")
    for s, what, value, target, met, ok in rows:
        m = "-" if met is None else ("yes" if met else "no")
        print(f"{s:<12} {what:<28} {value:<62} {target:<18} {m:<5} {'ok' if ok else 'FAILED'}")
    if throughput:
        print("\nthroughput: offered -> delivered, latency (ms)")
        for ph in throughput["result"]["rates"]:
            g = ph["groups"]["pairs"]
            print(f"  {ph['offered_rate']:>8.0f}/s  {g['delivered']:>8}/{g['offered']:<8} p50 {g['latency']['p50_ms']:8.3f}"
                  f"  p99 {g['latency']['p99_ms']:8.3f}  p999 {g['latency']['p999_ms']:8.3f}"
                  f"  rtt p99 {g['receipt_rtt']['p99_ms']:8.3f}  parleyd {100 * ph['parleyd_core_busy']:.0f} %"
                  f"  {'kept up' if g['kept_up'] else 'NOT kept up'}")
        if a.svg:
            svg_plot(throughput, a.svg)
    return 0 if all(r[-1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
