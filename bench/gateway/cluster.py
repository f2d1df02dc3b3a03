#!/usr/bin/env python3
"""Latency added by shared tenant limits (`[cluster.limits] backend = "redis"`) over the local
limiter: the same `airlockd serve` setup as bench/gateway/run.py (mutual TLS, API key, tenant
limits that never refuse, filters, fsync'd audit log), once with `backend = "local"` and once
with a `redis-server` on a Unix socket, each driven at a fixed rate over one keep-alive
connection.

    cargo build --release -p airlock-daemon --features test-engine --bin airlockd
    python3 bench/gateway/cluster.py                     # ~30 s; prints a Markdown table
    python3 bench/gateway/cluster.py --airlockd target/debug/airlockd --out bench/results/cluster.md

Python standard library only (no `oha` needed): `--connections` client threads (one keep-alive
connection each) send `--rate` requests per second in all for `--duration` seconds, each timed
from its scheduled send time to the full answer (coordinated omission corrected). Prints p50/p99
in milliseconds and the difference. Figures, never asserted.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as gateway  # noqa: E402


def start_redis(work: Path) -> tuple[subprocess.Popen, Path]:
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if not binary:
        sys.exit("neither redis-server nor valkey-server is installed")
    socket = work / "redis.sock"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--save", "", "--appendonly", "no", "--unixsocket", str(socket), "--dir", str(work)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while not socket.exists():
        if time.time() > deadline:
            sys.exit("redis-server did not start")
        time.sleep(0.01)
    return proc, socket


def measure(work: Path, port: int, key: str, rate: float, duration: float, connections: int) -> list[float]:
    """`connections` keep-alive connections (one thread each), each sending at rate/connections
    with its phase offset; every request is timed from its scheduled send time, so a slow
    answer also counts against the requests it delayed (coordinated omission corrected)."""
    ctx = ssl.create_default_context(cafile=str(work / "ca.pem"))
    ctx.load_cert_chain(str(work / f"client-{gateway.TENANT}.pem"), str(work / f"client-{gateway.TENANT}.key"))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    body = gateway.BODY.encode()
    results: list[list[float]] = [[] for _ in range(connections)]
    start = time.perf_counter() + 1.0

    def worker(i: int) -> None:
        conn = http.client.HTTPSConnection("localhost", port, context=ctx)

        def one() -> None:
            conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                sys.exit(f"answer {resp.status}")

        for _ in range(max(1, 50 // connections)):  # warm-up: TLS session, key cache, script load
            one()
        interval = connections / rate
        next_at = start + i * interval / connections
        end = start + duration
        while next_at < end:
            now = time.perf_counter()
            if now < next_at:
                time.sleep(next_at - now)
            one()
            results[i].append(time.perf_counter() - next_at)
            next_at += interval
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for r in results for x in r]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--airlockd", default=gateway.default_airlockd(), help="binary built with --features test-engine")
    p.add_argument("--rate", type=float, default=100, help="requests per second (default 100)")
    p.add_argument("--duration", type=float, default=10, help="seconds per backend (default 10)")
    p.add_argument("--connections", type=int, default=1, help="keep-alive connections, one thread each (default 1)")
    p.add_argument("--out", type=Path, help="also append the Markdown report to this file")
    args = p.parse_args()

    rows = {}
    for backend in ("local", "redis"):
        work = Path(tempfile.mkdtemp(prefix="airlock-cluster-bench-", dir=os.environ.get("BENCH_DIR", "/var/tmp")))
        procs = []
        try:
            extra = ""
            if backend == "redis":
                redis, socket = start_redis(work)
                procs.append(redis)
                extra = f'\n[cluster.limits]\nbackend = "redis"\nurl = "unix://{socket}"\n'
            daemon, port, key = gateway.setup_airlockd(args.airlockd, work, extra=extra)
            procs.insert(0, daemon)
            lat = measure(work, port, key, args.rate, args.duration, args.connections)
            rows[backend] = (len(lat), pct(lat, 50), pct(lat, 99))
            print(f"{backend}: {rows[backend]}", file=sys.stderr)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            shutil.rmtree(work, ignore_errors=True)

    local, redis = rows["local"], rows["redis"]
    lines = [
        f"| limits backend | requests | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
        f"| local | {local[0]} | {local[1]:.3f} | {local[2]:.3f} |",
        f"| redis (Unix socket) | {redis[0]} | {redis[1]:.3f} | {redis[2]:.3f} |",
        f"| added by redis | | {redis[1] - local[1]:+.3f} | {redis[2] - local[2]:+.3f} |",
        "",
        f"- {args.rate:g} req/s over {args.connections} keep-alive connection(s), {args.duration:g} s per backend after 50 warm-up requests, "
        "each request timed from its scheduled send (coordinated omission corrected); "
        f"{os.cpu_count()} CPUs; airlockd: {gateway.version([args.airlockd, '--version'])}",
        f"- command: `python3 bench/gateway/cluster.py {' '.join(sys.argv[1:])}`",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
