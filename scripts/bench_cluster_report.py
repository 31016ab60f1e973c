#!/usr/bin/env python3
"""Summary of the cluster scale runs (scripts/bench_cluster.sh; docs/benchmarks.md,
"Cluster scale (issue 10)").

    scripts/bench_cluster_report.py [--json OUT] [--check] RESULT.json...

RESULT.json are parley-bench --json files of the `throughput` scenario (one
per node count) and of `idle`. Prints a table per scenario: throughput and
latency per offered rate against the node count (and each node's share),
and the idle memory per connection (user space summed over the nodes,
kernel, Redis) with the extrapolation to 1,000,000 connections. --json
writes the same figures as one JSON file. With --check: exits 1 unless
every run reported ok (parley-bench's final check: every message arrived,
live or through sync, no failed request, every node exited cleanly). With
--check-kept-up as well: also at every rate delivered == offered within the
phase's drain (the smoke run's low rate; a full-size run's rates beyond
saturation fall behind by definition and only show it in the table).
Standard library only.
"""
import argparse
import json
import math
import sys

MILLION = 1_000_000
# A process may hold at most this many files here (issue 9); the per-node
# connection count the extrapolation assumes unless told otherwise.
FILES_PER_PROCESS = 20_000
FD_RESERVE = 64


def fmt_bytes(v):
    return "n/a" if v is None else f"{v:,.0f} B"


def throughput_rows(runs, failures, kept_up):
    rows = []
    for d in sorted(runs, key=lambda d: d["result"]["nodes"] if "nodes" in d["result"] else 1):
        r = d["result"]
        n = r.get("nodes", 1)
        if not d.get("ok"):
            failures.append(f"throughput, {n} node(s): " + "; ".join(d.get("failures", [])))
        for ph in r["rates"]:
            g = ph["groups"]["pairs"]
            if kept_up and (g["delivered"] != g["offered"] or g["not_arrived_after_drain"] != 0):
                failures.append(f"throughput, {n} node(s), {ph['offered_rate']:.0f}/s: delivered {g['delivered']} of "
                                f"{g['offered']} offered, {g['not_arrived_after_drain']} not arrived within the drain")
            rows.append({
                "nodes": n,
                "offered_rate": ph["offered_rate"],
                "offered": g["offered"],
                "delivered": g["delivered"],
                "not_arrived": g["not_arrived_after_drain"],
                "achieved_rate": g["achieved_rate"],
                "p50_ms": g["latency"]["p50_ms"],
                "p99_ms": g["latency"]["p99_ms"],
                "p999_ms": g["latency"]["p999_ms"],
                "rtt_p99_ms": g["receipt_rtt"]["p99_ms"],
                "kept_up": g["kept_up"],
                "parleyd_core_busy": ph["parleyd_core_busy"],
                "parleyd_runqueue_wait": ph["parleyd_runqueue_wait"],
                "cpu_us_per_msg": ph["parleyd_cpu_us_per_msg"],
                "per_node": [{"node": x["node"], "core_busy": x["parleyd_core_busy"],
                              "delivered": x["delivered_to_devices_here"], "p99_ms": x["latency_to_devices_here"]["p99_ms"]}
                             for x in ph.get("nodes", [])],
            })
    return rows


def idle_summary(d, failures):
    r = d["result"]
    if not d.get("ok"):
        failures.append("idle: " + "; ".join(d.get("failures", [])))
    k = r.get("kernel", {})
    user = r["bytes_per_connection"]
    # Kernel: the measured difference covers both ends of each connection
    # (client and server on this machine); a server holds one end.
    caches = k.get("socket_caches_bytes_per_connection_both_ends")
    tcp_buf = k.get("tcp_buffer_bytes_per_connection_both_ends")
    # The socket caches if /proc/slabinfo was readable, else all slab.
    objects = caches if caches is not None else k.get("slab_bytes_per_connection_both_ends")
    kernel_server = None
    if objects is not None:
        # The TCP buffer counter is the machine's: other traffic freeing
        # buffers meanwhile can make its difference negative; count >= 0.
        kernel_server = objects / 2 + (max(tcp_buf, 0) / 2 if tcp_buf is not None else 0)
    redis = (r.get("redis") or {}).get("bytes_per_connection")
    per_node = FILES_PER_PROCESS - FD_RESERVE
    nodes_1m = math.ceil(MILLION / per_node)
    # A node's RSS before any connection: paid once per node.
    bases = [n["rss_before"] for n in r.get("per_node", [])]
    base = sum(bases) / len(bases) if bases else None
    out = {
        "connections": r["connections"],
        "nodes": r.get("nodes", 1),
        "worker_processes": r["processes"],
        "connect_s": r.get("connect_s"),
        "user_bytes_per_connection": user,
        "anon_bytes_per_connection": r["anon_bytes_per_connection"],
        "kernel_socket_caches_bytes_per_connection_both_ends": caches,
        "kernel_tcp_buffer_bytes_per_connection_both_ends": tcp_buf,
        "kernel_all_slab_bytes_per_connection_both_ends": k.get("slab_bytes_per_connection_both_ends"),
        "kernel_bytes_per_server_connection": kernel_server,
        "redis_bytes_per_connection": redis,
        "per_node": r.get("per_node", []),
        "extrapolation_1m": {
            "parleyd_user_gb": user * MILLION / 1e9,
            "kernel_server_side_gb": None if kernel_server is None else kernel_server * MILLION / 1e9,
            "redis_gb": None if redis is None else redis * MILLION / 1e9,
            "nodes_at_20000_files": nodes_1m,
            "node_base_rss_bytes": base,
            "nodes_base_gb": None if base is None else base * nodes_1m / 1e9,
        },
    }
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--check-kept-up", action="store_true")
    ap.add_argument("results", nargs="+")
    a = ap.parse_args()
    runs = []
    for p in a.results:
        with open(p) as f:
            runs.append(json.load(f))
    failures = []
    thr = throughput_rows([d for d in runs if d["scenario"] == "throughput"], failures, a.check_kept_up)
    idle = [idle_summary(d, failures) for d in runs if d["scenario"] == "idle"]

    if thr:
        print("cluster throughput (pairs' two devices on different nodes when nodes >= 2; all nodes share CPU 0)")
        print(f"  {'nodes':>5} {'offered/s':>10} {'delivered/offered':>19} {'p50 ms':>8} {'p99 ms':>8} {'p999 ms':>8}"
              f" {'rtt p99':>8} {'parleyd CPU':>12} {'us/msg':>7}  per node (CPU, p99 to its devices)")
        for t in thr:
            per = ", ".join(f"n{x['node']} {100 * x['core_busy']:.0f}% {x['p99_ms']:.2f}ms" for x in t["per_node"])
            print(f"  {t['nodes']:>5} {t['offered_rate']:>10.0f} {t['delivered']:>9}/{t['offered']:<9} {t['p50_ms']:>8.3f}"
                  f" {t['p99_ms']:>8.3f} {t['p999_ms']:>8.3f} {t['rtt_p99_ms']:>8.3f} {100 * t['parleyd_core_busy']:>11.0f}%"
                  f" {t['cpu_us_per_msg']:>7.1f}  {per}")
    for i in idle:
        x = i["extrapolation_1m"]
        print(f"cluster idle: {i['connections']:,} connections over {i['nodes']} nodes, {i['worker_processes']} client processes"
              f" (connected in {i['connect_s']:.1f} s)")
        for n in i["per_node"]:
            print(f"  node {n['node']}: {n['open_at_end']:,} connections, RSS {n['rss_before'] / 1e6:.1f} -> {n['rss_after'] / 1e6:.1f} MB")
        print(f"  user space (parleyd RSS, summed over nodes): {fmt_bytes(i['user_bytes_per_connection'])} per connection"
              f" (anonymous {fmt_bytes(i['anon_bytes_per_connection'])})")
        print(f"  kernel, both ends: socket caches {fmt_bytes(i['kernel_socket_caches_bytes_per_connection_both_ends'])},"
              f" TCP buffers {fmt_bytes(i['kernel_tcp_buffer_bytes_per_connection_both_ends'])},"
              f" all slab {fmt_bytes(i['kernel_all_slab_bytes_per_connection_both_ends'])};"
              f" server end: {fmt_bytes(i['kernel_bytes_per_server_connection'])}")
        print(f"  redis-server: {fmt_bytes(i['redis_bytes_per_connection'])} per connection")
        kernel = "n/a" if x["kernel_server_side_gb"] is None else f"{x['kernel_server_side_gb']:.1f} GB"
        redis = "n/a" if x["redis_gb"] is None else f"{x['redis_gb']:.2f} GB"
        base = "n/a" if x["nodes_base_gb"] is None else f"{x['nodes_base_gb']:.1f} GB"
        print(f"  x 1,000,000: parleyd {x['parleyd_user_gb']:.1f} GB + kernel (server end) {kernel} + Redis {redis};"
              f" {x['nodes_at_20000_files']} nodes at 20,000 files each, their base RSS {base}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"throughput": thr, "idle": idle, "failures": failures, "ok": not failures}, f, indent=2)
    if failures:
        for m in failures:
            print("FAIL: " + m, file=sys.stderr)
        return 1 if a.check else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
