#!/usr/bin/env python3
"""A/B comparison of parleyd builds or flags on the throughput scenario.

docs/benchmarks.md, "A/B method". On a machine shared with other work,
latency is noisy; what carries over is parleyd's CPU time per message (from
/proc/PID/stat, measured by parley-bench) and its syscalls per message. This
runs `parley-bench throughput` once per variant per round, the variants
interleaved within each round (so slow drifts in the machine's load hit all
of them alike), and prints per variant and rate the median over the rounds.

  scripts/bench_ab.py --bench build/release/bin/parley-bench \
      --variant base=/path/to/main/parleyd \
      --variant new=build/release/bin/parleyd \
      --variant new-nowait=build/release/bin/parleyd,--commit-adaptive-wait-us,0 \
      --rounds 3 --rates 1000,2000 --duration 10

Within the first rate's measured window it also reads parleyd's /metrics at
its start and end and reports, per message offered, parleyd's CPU by thread
(from /proc/PID/task: the I/O thread, the store's writer, checkpointer and
search writer, the rest summed), the writer's own WAL checkpoints (the tail
after each background checkpoint: sends wait behind them), the WebSocket
frames and socket writes (parley_outbound_frames_total, parley_outbound_writes_total;
builds without those counters show none), the store commits
(parley_store_commits_total), the pages written to SQLite's WAL
(parley_store_wal_pages_written_total) and the WAL write calls that reached
the kernel (parley_store_wal_os_writes_total), and the store writer's time
in commits per message (parley_store_commit_seconds_sum: background steps
that run as the writer's own transactions count too) and its commits that
took longer than 5 ms per 1,000 messages (what sends queued behind).

--strace-seconds N attaches `strace -c -f` to parleyd for N seconds in the
middle of the first rate's measured window and reports syscalls per message
by call (strace slows parleyd: run it as separate rounds, and do not mix
their CPU figures with the others). Each variant is
NAME=PARLEYD[,EXTRA_ARG...]; an EXTRA_ARG that starts with `bench:` goes to
parley-bench's throughput scenario instead of parleyd (`bench:--spin`: the
load generator busy-polls). Exit status non-zero if any run failed.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def parse_variant(text):
    name, _, rest = text.partition("=")
    parts = rest.split(",")
    if not name or not parts[0]:
        raise argparse.ArgumentTypeError("variant must be NAME=PARLEYD[,ARG...]")
    return name, parts[0], parts[1:]


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def machine_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def find_pid(data_dir, deadline):
    while time.time() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"parleyd") and data_dir.encode() in args:
                return int(pid)
        time.sleep(0.05)
    return None


# The commit-time histogram's bucket of commits up to 5 ms (parley_store_commit_seconds).
SLOW_COMMITS = 'parley_store_commit_seconds_bucket{le="0.005"}'


def scrape(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def thread_cpu(pid):
    """CPU seconds so far of each of a process's threads, summed by thread name."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


# Threads reported by name in the per-thread table; the rest are summed as "other".
THREADS = ["parleyd", "store-writer", "store-ckpt", "store-search/0"]


def parse_strace(path):
    calls = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\S+)\s*$", line)
            if m and m.group(2) != "total":
                calls[m.group(2)] = int(m.group(1))
    calls["total"] = sum(calls.values())
    return calls


def run_once(args, name, parleyd, extra, strace_s):
    work = tempfile.mkdtemp(prefix=f"bench-ab-{name}-")
    out_json = os.path.join(work, "result.json")
    cmd = ["taskset", "-c", str(args.load_cpu), args.bench, "--parleyd", parleyd, "--server-cpu", str(args.server_cpu),
           "--work-dir", work, "--json", out_json]
    for a in extra:
        if not a.startswith("bench:"):
            cmd += ["--parleyd-arg", a]
    cmd += ["throughput", "--pairs", str(args.pairs), "--rates", args.rates, "--warmup", str(args.warmup),
            "--duration", str(args.duration)]
    cmd += [a[len("bench:"):] for a in extra if a.startswith("bench:")]
    load0 = loadavg()
    busy0 = machine_busy()
    strace_out = os.path.join(work, "strace.txt")
    # Its own session with a raised autogroup priority, as scripts/bench_peers.sh
    # does: this kernel schedules sessions (autogroups) fairly against each
    # other, whatever a task's nice, so without it parleyd competes with the
    # caller's own session (e.g. a build) for its core.
    wrap = ["setsid", "-w", "bash", "-c", 'echo "$0" >/proc/self/autogroup 2>/dev/null || true; exec "$@"',
            str(args.nice)] if args.nice is not None else []
    proc = subprocess.Popen(wrap + ["stdbuf", "-oL"] + cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    watcher = None
    window = {}

    def watch():
        # The first rate's measured window: [warm-up, warm-up + duration).
        time.sleep(args.warmup + 0.5)
        try:
            with open(os.path.join(work, "port")) as f:
                port = int(f.read().strip())
        except (OSError, ValueError):
            return
        pid = find_pid(os.path.join(work, "data"), time.time() + 2)
        t0, m0, c0 = time.time(), scrape(port), thread_cpu(pid) if pid else {}
        if strace_s:
            time.sleep(max(0.0, (args.duration - 1 - strace_s) / 2))
            if pid:
                subprocess.run(["timeout", "-s", "INT", str(strace_s), "strace", "-c", "-f", "-p", str(pid), "-o",
                                strace_out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(max(0.0, t0 + args.duration - 1 - time.time()))
        t1, m1, c1 = time.time(), scrape(port), thread_cpu(pid) if pid else {}
        window.update(seconds=t1 - t0, before=m0, after=m1, threads={k: v - c0.get(k, 0.0) for k, v in c1.items()})

    for line in proc.stdout:
        log.append(line)
        if watcher is None and line.startswith("parley-bench throughput"):
            watcher = threading.Thread(target=watch)
            watcher.start()
    rc = proc.wait()
    if watcher:
        watcher.join()
    busy1 = machine_busy()
    result = {"name": name, "rc": rc, "load_before": load0, "log": "".join(log)}
    total = busy1[1] - busy0[1]
    result["machine_busy"] = (busy1[0] - busy0[0]) / total if total else 0
    try:
        with open(out_json) as f:
            result["json"] = json.load(f)
    except (OSError, ValueError):
        result["json"] = None
    if strace_s and os.path.exists(strace_out):
        result["strace"] = parse_strace(strace_out)
    if window.get("before") and window.get("after"):
        msgs = float(args.rates.split(",")[0]) * window["seconds"]
        per = {}
        for key in ["parley_outbound_frames_total", "parley_outbound_writes_total", "parley_store_commits_total",
                    "parley_store_wal_pages_written_total", "parley_store_wal_os_writes_total",
                    "parley_store_commit_seconds_sum", "parley_store_commit_seconds_count", SLOW_COMMITS,
                    "parley_store_writer_checkpoint_seconds_sum", "parley_store_writer_checkpoint_seconds_count"]:
            if key in window["before"] and key in window["after"]:
                per[key] = (window["after"][key] - window["before"][key]) / msgs
        if SLOW_COMMITS in per and "parley_store_commit_seconds_count" in per:
            # Commits that took longer than 5 ms: the count less those in the 5 ms bucket.
            per["slow_commits"] = per["parley_store_commit_seconds_count"] - per[SLOW_COMMITS]
        for name, seconds in window.get("threads", {}).items():
            key = name if name in THREADS else "other"
            per["cpu:" + key] = per.get("cpu:" + key, 0.0) + seconds / msgs
        result["per_msg"] = per
    shutil.rmtree(work, ignore_errors=True)
    return result


def scaled(key, factor, pm):
    """The median of a per-message figure times `factor`, or a dash if a run lacks it."""
    if not pm or not all(key in p for p in pm):
        return "—"
    return f"{factor * statistics.median(p[key] for p in pm):.2f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", required=True)
    p.add_argument("--variant", action="append", type=parse_variant, required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rates", default="1000,2000")
    p.add_argument("--pairs", type=int, default=500)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--strace-seconds", type=float, default=0)
    p.add_argument("--json", help="write every run's figures here")
    p.add_argument("--nice", type=int, default=-19, help="autogroup nice of the runs' session (see run_once)")
    args = p.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    runs = []
    failed = False
    for rnd in range(args.rounds):
        for name, parleyd, extra in args.variant:
            r = run_once(args, name, parleyd, extra, args.strace_seconds)
            r["round"] = rnd
            runs.append(r)
            ok = r["rc"] == 0 and r["json"] is not None
            failed |= not ok
            summary = []
            if r["json"]:
                for row in r["json"]["result"]["rates"]:
                    g = row["groups"]["pairs"]
                    summary.append(f'{row["offered_rate"]:.0f}/s {row["parleyd_cpu_us_per_msg"]:.1f} us/msg '
                                   f'p50 {g["latency"]["p50_ms"]:.2f} p99 {g["latency"]["p99_ms"]:.2f} ms '
                                   f'{g["delivered"]}/{g["offered"]}')
            print(f"round {rnd} {name}: {'ok' if ok else 'FAILED rc=' + str(r['rc'])}; load {r['load_before']:.1f}, "
                  f"machine busy {100 * r['machine_busy']:.0f} %; " + "; ".join(summary), flush=True)
            if not ok:
                sys.stdout.write(r["log"][-3000:])
    print()
    print("| variant | offered/s | parleyd CPU us/msg (median; runs) | p50 ms | p99 ms | receipt rtt p99 ms | "
          "delivered/offered | parleyd core busy | waiting for CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, _, _ in args.variant:
        for i, rate in enumerate(rates):
            rows = []
            for r in runs:
                if r["name"] == name and r["json"] and i < len(r["json"]["result"]["rates"]):
                    rows.append(r["json"]["result"]["rates"][i])
            if not rows:
                continue
            med = lambda f: statistics.median(f(x) for x in rows)
            cpu = [x["parleyd_cpu_us_per_msg"] for x in rows]
            g = lambda x: x["groups"]["pairs"]
            print(f"| {name} | {rate:.0f} | **{statistics.median(cpu):.1f}** ({' / '.join(f'{c:.1f}' for c in cpu)}) | "
                  f"{med(lambda x: g(x)['latency']['p50_ms']):.2f} | {med(lambda x: g(x)['latency']['p99_ms']):.2f} | "
                  f"{med(lambda x: g(x)['receipt_rtt']['p99_ms']):.2f} | "
                  f"{' / '.join(str(g(x)['delivered']) + '/' + str(g(x)['offered']) for x in rows)} | "
                  f"{100 * med(lambda x: x['parleyd_core_busy']):.0f} % | {100 * med(lambda x: x['parleyd_runqueue_wait']):.0f} % |")
    print()
    print(f"Per message offered at {rates[0]:.0f} msgs/s, from parleyd's /metrics over the measured window (median):")
    print("| variant | frames written | socket writes (frames' own) | store commits | WAL pages | WAL write calls "
          "| writer's commit time µs | commits > 5 ms per 1,000 msgs |")
    print("|---|---|---|---|---|---|---|---|")
    for name, _, _ in args.variant:
        pm = [r["per_msg"] for r in runs if r["name"] == name and r.get("per_msg")]
        if not pm:
            continue
        cell = lambda k: f"{statistics.median(p[k] for p in pm):.2f}" if all(k in p for p in pm) else "—"
        print(f"| {name} | {cell('parley_outbound_frames_total')} | {cell('parley_outbound_writes_total')} | "
              f"{cell('parley_store_commits_total')} | {cell('parley_store_wal_pages_written_total')} | "
              f"{cell('parley_store_wal_os_writes_total')} | {scaled('parley_store_commit_seconds_sum', 1e6, pm)} | "
              f"{scaled('slow_commits', 1e3, pm)} |")
    print()
    print(f"parleyd's CPU per message offered at {rates[0]:.0f} msgs/s by thread, µs (/proc/PID/task over the same "
          "window; median), and the writer's own checkpoints (parley_store_writer_checkpoint_seconds):")
    print("| variant | " + " | ".join(THREADS) + " | other | writer's checkpoints per 1,000 msgs | their mean ms |")
    print("|---|" + "---|" * (len(THREADS) + 3))
    for name, _, _ in args.variant:
        pm = [r["per_msg"] for r in runs if r["name"] == name and r.get("per_msg")]
        if not pm:
            continue
        cells = [scaled("cpu:" + t, 1e6, pm) for t in THREADS + ["other"]]
        means = [p["parley_store_writer_checkpoint_seconds_sum"] / p["parley_store_writer_checkpoint_seconds_count"]
                 for p in pm if p.get("parley_store_writer_checkpoint_seconds_count")]
        mean = f"{1e3 * statistics.median(means):.2f}" if means else "—"
        print(f"| {name} | " + " | ".join(cells) +
              f" | {scaled('parley_store_writer_checkpoint_seconds_count', 1e3, pm)} | {mean} |")
    if args.strace_seconds:
        first = rates[0]
        print()
        print(f"Syscalls per message, strace -c -f for {args.strace_seconds:.0f} s at {first:.0f} msgs/s "
              f"(median over rounds):")
        names = ["sendmsg", "recvmsg", "epoll_wait", "futex", "pwrite64", "fdatasync", "write", "read", "pread64"]
        print("| variant | all | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        msgs = first * args.strace_seconds
        for name, _, _ in args.variant:
            st = [r["strace"] for r in runs if r["name"] == name and r.get("strace")]
            if not st:
                continue
            per = lambda k: statistics.median((s.get(k, 0) if k != "all" else s.get("total", 0)) / msgs for s in st)
            print(f"| {name} | {per('all'):.1f} | " + " | ".join(f"{per(k):.2f}" for k in names) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{k: v for k, v in r.items() if k != "log"} for r in runs], f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
