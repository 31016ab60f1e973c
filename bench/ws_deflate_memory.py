#!/usr/bin/python3
"""parleyd's memory per WebSocket connection with and without permessage-deflate.

Used by scripts/bench_deflate.sh (docs/benchmarks.md, "WebSocket compression").
Against a running parleyd started with --admin-token (and --ws-deflate for
the compressed runs): creates N users with device tokens through the admin
bulk path, opens N connections (python3-websockets, which offers
permessage-deflate unless --plain), authenticates each, makes each fetch one
search page (a response above the server's threshold, so that both of the
server's zlib streams have worked), then reads parleyd's RSS. Prints one JSON
object: rss_before, rss_after, per_connection_bytes, negotiated (connections
that got the extension), wire bytes of the search pages.
"""
import argparse
import asyncio
import json
import sys
import urllib.request

import websockets

BULK_BATCH = 5000  # users per bulk request (parleyd's default limit: 10,000)


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def provision(port, admin_token, prefix, n):
    tokens = []
    for start in range(0, n, BULK_BATCH):
        users = [{"username": f"{prefix}{i:06d}"} for i in range(start, min(n, start + BULK_BATCH))]
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/admin/v1/users/bulk",
            data=json.dumps({"users": users, "devices": True, "device_name": "deflate-bench"}).encode(),
            headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"},
            method="POST")
        with urllib.request.urlopen(req, timeout=300) as r:
            body = json.load(r)
        tokens += [u["token"] for u in body["users"]]
    return tokens


async def call(ws, rid, type_, **fields):
    await ws.send(json.dumps({"v": 1, "id": rid, "type": type_, **fields}))
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("id") == rid:
            if frame.get("type") == "error":
                raise RuntimeError(f"{type_}: {frame}")
            return frame


async def hold(port, token, prefix, compression, opened, sem, stats):
    async with sem:
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/v1/ws", compression=compression,
                                      max_size=2 ** 22, ping_interval=None)
        ext = ws.response_headers.get("Sec-WebSocket-Extensions", "")
        if "permessage-deflate" in ext:
            stats["negotiated"] += 1
        await call(ws, 1, "auth", token=token)
        page = await call(ws, 2, "search_users", query=prefix, limit=20)
        stats["page_bytes"] += len(json.dumps(page))
        opened.append(ws)


async def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--admin-token", required=True)
    ap.add_argument("--pid", type=int, required=True, help="parleyd's pid (RSS)")
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--prefix", default="dz")
    ap.add_argument("--plain", action="store_true", help="do not offer permessage-deflate")
    o = ap.parse_args()
    tokens = provision(o.port, o.admin_token, o.prefix, o.connections)
    await asyncio.sleep(1)
    before = rss_bytes(o.pid)
    opened, stats = [], {"negotiated": 0, "page_bytes": 0}
    sem = asyncio.Semaphore(200)
    await asyncio.gather(*(hold(o.port, t, o.prefix, None if o.plain else "deflate", opened, sem, stats)
                           for t in tokens))
    await asyncio.sleep(2)
    after = rss_bytes(o.pid)
    print(json.dumps({"connections": len(opened), "negotiated": stats["negotiated"], "rss_before": before,
                      "rss_after": after, "per_connection_bytes": round((after - before) / max(1, len(opened)))}))
    for ws in opened:
        await ws.close()
    return 0 if len(opened) == o.connections else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
