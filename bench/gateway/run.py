#!/usr/bin/env python3
"""Gateway overhead benchmark: the real `airlockd serve` against nginx's floor, same cores, same run.

    cargo build --release -p airlock-daemon --features test-engine --bin airlockd
    python3 bench/gateway/run.py                         # ~2.5 minutes; prints a Markdown report
    python3 bench/gateway/run.py --out bench/results/gateway.md --label "after group commit"

Python standard library only; the load tool is `oha` (crates.io; `cargo install --locked oha`),
the floor is Debian's `nginx`. One run makes a throwaway directory on disk (not tmpfs: the
audit log's fsyncs are part of what is measured) with a PKI from `airlockd certs init`, audit
keys, a key database with one API key (`airlockd keys create`) and a config that has
everything a production request pays for:

  * mutual TLS (client certificate required, CRL loaded), HTTP/1.1 keep-alive;
  * an API key (`Authorization: Bearer alk_...`, argon2id in the key database; the daemon's
    verification cache is on, as it is by default);
  * tenant limits (request rate, token budget, concurrency: high enough never to refuse) and
    filters (a deny literal, e-mail redaction on prompt and output);
  * the fsync'd audit log (SQLite WAL, `synchronous = FULL`), admission and completion records;
  * the access log (`logging.level = "info"`, the default: one line per request, to a file);
  * the test engine (`backend = "test"`, no model files: the engine's own cost is ~0).

nginx serves `return 200` over mutual TLS with the same server certificate and client CA
(`ssl_verify_client on`). Both are driven with the same client certificate. For each target:

  max        64 connections, as fast as it answers (closed loop): requests per second
  5000/s     fixed rate 5,000 req/s, 64 connections, latency corrected for coordinated omission
  1000/s     fixed rate 1,000 req/s, the same
  unloaded   one connection at 100 req/s (no request waits for another)

Prints p50/p99 in milliseconds, the share of non-200 answers (must be 0), the tool versions
and the command line. For airlockd also two tails read from its own histograms on the admin
listener over each scenario: the audit log's commits, and the request path inside the daemon
(`airlock_request_duration_seconds`: from the route to the response, before the final audit
record; TLS, HTTP parsing and the socket are outside it). Beside the client's p99 the second
tells time spent in the path from time spent waiting outside it. Both are bucket bounds
(…, 1, 2, 4, 8 ms), and the details printed while running give the share of requests within
each bound. A benchmark: figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODEL = "bench-model"
TENANT = "bench"
BODY = json.dumps(
    {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello to the gateway benchmark please"}],
        "max_tokens": 8,
    }
)


def default_airlockd() -> str:
    target = os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))
    return str(Path(target) / "release" / "airlockd")


def run(cmd: list[str], **kw) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return out.stdout


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_airlockd(
    airlockd: str,
    work: Path,
    log_level: str = "info",
    token_budget: bool = True,
    extra: str = "",
    admin_port: int | None = None,
) -> tuple[subprocess.Popen, int, str]:
    run([airlockd, "certs", "init", "--dir", str(work), "--tenant", TENANT])
    run([airlockd, "audit", "keygen", "--dir", str(work / "audit")])
    config = work / "airlockd.toml"
    config.write_text(
        f"""
[listener]
mode = "tls"
address = "127.0.0.1:0"

[listener.tls]
cert = "server.pem"
key = "server.key"
client_ca = "ca.pem"
crls = ["crl.pem"]

[limits]
max_connections = 4096
max_concurrent_requests = 4096
max_connections_per_address = 4096
max_pending_handshakes = 1024

[[models]]
name = "{MODEL}"
backend = "test"
max_queue = 4096
max_active = 8

[logging]
level = "{log_level}"
{f'[admin]{chr(10)}address = "127.0.0.1:{admin_port}"' if admin_port else ""}

[audit]
db = "audit.db"
signing_key = "audit/audit-signing.key"
digest_key = "audit/audit-digest.key"

[auth]
key_db = "keys.db"

[[tenants]]
name = "{TENANT}"
models = ["*"]
requests_per_second = 1000000
burst = 1000000
{"tokens_per_minute = 1000000000" if token_budget else ""}
max_concurrent = 4096
max_tokens = 64
[[tenants.filters]]
id = "no-zeus"
action = "deny"
literal = "project zeus"
case_insensitive = true
[[tenants.filters]]
id = "pii-email"
action = "redact"
detector = "email"
{extra}
"""
    )
    key = run([airlockd, "keys", "create", "--tenant", TENANT, "--config", str(config)]).strip()
    if not key.startswith("alk_"):
        sys.exit(f"keys create printed no key: {key!r}")
    log = open(work / "airlockd.log", "w")
    proc = subprocess.Popen(
        [airlockd, "serve", "--config", str(config)],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    deadline = time.time() + 60
    assert proc.stdout is not None
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            sys.exit(f"airlockd exited: see {work / 'airlockd.log'}")
        m = re.match(r"listening on https://127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1)), key
    sys.exit("airlockd did not print its listening line in 60 s")


def setup_nginx(work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    ngx = work / "nginx"
    (ngx / "logs").mkdir(parents=True)
    conf = ngx / "nginx.conf"
    conf.write_text(
        f"""
worker_processes auto;
pid {ngx}/nginx.pid;
error_log {ngx}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {ngx}/body;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {work}/server.pem;
        ssl_certificate_key {work}/server.key;
        ssl_client_certificate {work}/ca.pem;
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""
    )
    proc = subprocess.Popen(
        ["nginx", "-p", str(ngx), "-c", str(conf), "-g", "daemon off; user root;"],
        stdout=subprocess.DEVNULL,
        stderr=open(ngx / "logs" / "stderr.log", "w"),
    )
    import socket

    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nginx did not listen: see {ngx / 'logs'}")


def oha(args: argparse.Namespace, work: Path, url: str, extra: list[str], auth: list[str]) -> dict:
    cmd = [
        args.oha,
        "--no-tui",
        "--output-format",
        "json",
        "--cacert",
        str(work / "ca.pem"),
        "--cert",
        str(work / f"client-{TENANT}.pem"),
        "--key",
        str(work / f"client-{TENANT}.key"),
        *auth,
        *extra,
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"oha failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout)


def histograms(admin_port: int) -> dict[str, dict[float, int]]:
    """Two histograms from the admin listener, each as a cumulative count per upper bound in
    seconds (`+Inf` as infinity), summed over label sets: `commit`, the audit log's commits;
    `request`, the request path inside the daemon (from the route to the response, before its
    final audit record; excludes TLS, HTTP parsing and the socket)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).read().decode()
    out: dict[str, dict[float, int]] = {"commit": {}, "request": {}}
    for name, key in (("airlock_audit_commit_duration_seconds", "commit"), ("airlock_request_duration_seconds", "request")):
        for m in re.finditer(rf'^{name}_bucket\{{[^}}]*\ble="([^"]+)"[^}}]*\}} (\d+)', text, re.M):
            le = float(m.group(1))
            out[key][le] = out[key].get(le, 0) + int(m.group(2))
    return out


def bucket_figures(before: dict[float, int], after: dict[float, int]) -> dict:
    """Observations during a scenario, and the histogram bounds their p99 and slowest fell
    under."""
    bounds = sorted(after)
    cum = [after[b] - before.get(b, 0) for b in bounds]
    total = cum[-1] if cum else 0

    def bound(q: float) -> float:
        for b, c in zip(bounds, cum):
            if c >= q * total:
                return b * 1000
        return float("inf")

    # The share of observations at or under each bound up to 8 ms (in the printed details).
    within = {f"{b * 1000:g}ms": round(c / total, 4) for b, c in zip(bounds, cum) if total and b <= 0.008}
    return {"count": total, "p99_ms": bound(0.99) if total else 0.0, "max_ms": bound(1.0) if total else 0.0, "within": within}


def cpu_seconds(root: int) -> float:
    """User + system CPU time of process `root` and its children (nginx's workers), every
    thread included, exited ones too (the kernel folds them into the process's figures)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [root]
    children = Path(f"/proc/{root}/task/{root}/children")
    if children.exists():
        pids += [int(c) for c in children.read_text().split()]
    for pid in pids:
        try:
            # Fields after the command name, which may hold spaces: utime and stime are the
            # 14th and 15th fields of the line.
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def figures(result: dict) -> dict:
    codes = {int(k): v for k, v in result.get("statusCodeDistribution", {}).items()}
    total = sum(codes.values())
    # `-z` ends the run with requests in flight: oha counts them as "aborted due to deadline"
    # (one per busy connection). Those are not answers; every other error is.
    errors = sum(v for k, v in result.get("errorDistribution", {}).items() if "deadline" not in k)
    pct = result.get("latencyPercentiles", {})
    return {
        "rps": result["summary"].get("requestsPerSec") or 0.0,
        "p50_ms": (pct.get("p50") or 0.0) * 1000,
        "p99_ms": (pct.get("p99") or 0.0) * 1000,
        "ok": codes.get(200, 0),
        "answered": total,
        "bad": total - codes.get(200, 0) + errors,
    }


SCENARIOS = ["max", "5000", "1000", "unloaded"]


def scenarios(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    d = f"{args.duration}s"
    every = {
        "max": ("max (64 conns)", ["-c", "64", "-z", d]),
        "5000": ("5000/s fixed", ["-c", "64", "-q", "5000", "--latency-correction", "-z", d]),
        "1000": ("1000/s fixed", ["-c", "64", "-q", "1000", "--latency-correction", "-z", d]),
        "unloaded": ("unloaded (1 conn, 100/s)", ["-c", "1", "-q", "100", "--latency-correction", "-z", d]),
    }
    return [every[name] for name in (args.scenario or SCENARIOS)]


def version(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True)
    return (out.stdout + out.stderr).strip().splitlines()[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--airlockd", default=default_airlockd(), help="release binary built with --features test-engine")
    p.add_argument("--oha", default=shutil.which("oha") or "/work/tools/bin/oha")
    p.add_argument("--duration", type=int, default=10, help="seconds per scenario (default 10)")
    p.add_argument("--only", choices=["airlockd", "nginx"], help="run one target only")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--out", type=Path, help="also append the Markdown report to this file")
    p.add_argument("--label", default="", help="a heading for the report (e.g. the commit)")
    p.add_argument("--log-level", default="info", help="logging.level (default info: the access log is on)")
    p.add_argument("--no-token-budget", action="store_true", help="drop the tenant's tokens_per_minute (no prompt token count)")
    p.add_argument(
        "--scenario", action="append", choices=SCENARIOS, help="run only this scenario (repeatable; default all four)"
    )
    p.add_argument("--hold", type=float, default=0, help="after setup, wait this many seconds before measuring (to attach perf)")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="airlock-gw-bench-", dir=os.environ.get("BENCH_DIR", "/var/tmp")))
    procs: list[subprocess.Popen] = []
    rows: dict[str, dict[str, dict]] = {}
    try:
        admin_port = free_port()
        daemon, port, key = setup_airlockd(
            args.airlockd, work, args.log_level, not args.no_token_budget, admin_port=admin_port
        )
        procs.append(daemon)
        nginx, nport = setup_nginx(work)
        procs.append(nginx)
        pids = {"airlockd": daemon.pid, "nginx": nginx.pid}
        targets = {
            "airlockd": (
                f"https://127.0.0.1:{port}/v1/chat/completions",
                ["-m", "POST", "-H", f"Authorization: Bearer {key}", "-T", "application/json", "-d", BODY],
            ),
            "nginx": (f"https://127.0.0.1:{nport}/", []),
        }
        if args.only:
            targets = {args.only: targets[args.only]}
        print(f"airlockd pid {daemon.pid} on :{port} (admin :{admin_port}), nginx on :{nport}, work dir {work}", file=sys.stderr)
        if args.hold:
            time.sleep(args.hold)
        for name, (url, auth) in targets.items():
            # Warm-up: TLS sessions, key cache, allocator, SQLite pages.
            oha(args, work, url, ["-c", "64", "-z", "2s"], auth)
            for label, extra in scenarios(args):
                before = cpu_seconds(pids[name])
                hist_before = histograms(admin_port) if name == "airlockd" else {}
                result = figures(oha(args, work, url, extra, auth))
                used = cpu_seconds(pids[name]) - before
                if name == "airlockd":
                    hist_after = histograms(admin_port)
                    # The audit log's own tail: a request waits for one or two commits.
                    result["audit"] = bucket_figures(hist_before["commit"], hist_after["commit"])
                    # The request path's own tail, measured inside the daemon: beside the
                    # client's p99 it tells time in the path from time outside it.
                    result["inside"] = bucket_figures(hist_before["request"], hist_after["request"])
                # The server's own CPU per answered request: a figure that, unlike req/s,
                # does not depend on how the load tool and the server share the cores.
                result["cpu_us"] = used * 1e6 / result["answered"] if result["answered"] else 0.0
                rows.setdefault(label, {})[name] = result
                print(f"{name:9} {label:26} {rows[label][name]}", file=sys.stderr)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    lines = []
    if args.label:
        lines += [f"### {args.label}", ""]
    lines += [
        "| scenario | airlockd req/s | airlockd p50 ms | airlockd p99 ms | airlockd CPU µs/req | audit commits: p99 / slowest ≤ ms | request path inside airlockd: p99 ≤ ms | nginx req/s | nginx p50 ms | nginx p99 ms | nginx CPU µs/req | non-200 or error (airlockd/nginx) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, by in rows.items():
        a, n = by.get("airlockd"), by.get("nginx")

        def cell(r, k, fmt):
            return format(r[k], fmt) if r else "–"

        def commits(r):
            if not r or "audit" not in r:
                return "–"
            c = r["audit"]
            return f"{c['p99_ms']:g} / {c['max_ms']:g} ({c['count']} commits)"

        def inside(r):
            if not r or "inside" not in r:
                return "–"
            return f"{r['inside']['p99_ms']:g}"

        lines.append(
            f"| {label} | {cell(a, 'rps', '.0f')} | {cell(a, 'p50_ms', '.3f')} | {cell(a, 'p99_ms', '.3f')} | {cell(a, 'cpu_us', '.0f')} "
            f"| {commits(a)} | {inside(a)} "
            f"| {cell(n, 'rps', '.0f')} | {cell(n, 'p50_ms', '.3f')} | {cell(n, 'p99_ms', '.3f')} | {cell(n, 'cpu_us', '.0f')} "
            f"| {a['bad'] if a else '–'}/{n['bad'] if n else '–'} |"
        )
    maxrow = rows.get("max (64 conns)", {})
    if "airlockd" in maxrow and "nginx" in maxrow and maxrow["nginx"]["rps"]:
        lines += ["", f"max req/s ratio airlockd/nginx: **{maxrow['airlockd']['rps'] / maxrow['nginx']['rps']:.3f}x**"]
        if maxrow["nginx"]["cpu_us"]:
            lines += [f"CPU per request at max, airlockd/nginx: **{maxrow['airlockd']['cpu_us'] / maxrow['nginx']['cpu_us']:.1f}x**"]
    lines += [
        "",
        f"- load tool: {version([args.oha, '--version'])}; {version(['nginx', '-v'])}; "
        f"airlockd: {version([args.airlockd, '--version'])}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, kernel {platform.release()}; "
        f"{args.duration} s per scenario, after a 2 s warm-up",
        f"- command: `python3 bench/gateway/run.py {' '.join(sys.argv[1:])}`",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
