#!/usr/bin/env python3
"""Soak test: mixed traffic at a fixed rate through a real `airlockd serve` for a long time.

    python3 bench/soak/soak.py                                   # 30 minutes, 20 requests/s
    python3 bench/soak/soak.py --duration 3m --airlockd target/debug/airlockd

Python standard library only. One run makes a throwaway directory (PKI from `airlockd certs
init`, audit keys, key database, config), starts `airlockd serve` on the deterministic test
engine (`backend = "test"`, no model files; `--model-dir` serves a real Hugging Face directory
instead), and for `--duration` sends, at `--rate` requests per second, a fixed mix of:

  chat          non-streamed chat completion with an API key                 -> 200
  cert          the same with the client certificate alone                  -> 200
  stream        streamed chat, read to the end                              -> 200
  cancel        streamed chat, connection closed after the first chunks     -> 200 head
  models        GET /v1/models                                              -> 200
  unknown_key   a well-formed key the database never held                   -> 401
  no_tenant     a certificate no tenant owns, no key                        -> 401
  forbidden     a tenant asking for a model it may not use                  -> 403
  throttled     a tenant over its request rate (a few pass)                 -> 429 (or 200)
  guess         wrong secrets for a real key id (pre-hash throttle)         -> 401, then 429

and in the background: a SIGHUP reload every `--reload-every`, and every `--key-every` a key
created with `airlockd keys create` (used at once: must be 200) and the oldest revoked with
`airlockd keys revoke` (checked to be refused within 1.5 s).

It reports, at start and end, the daemon's resident memory and open file descriptors (from
/proc) and the engine's KV-cache bytes (admin `/status`); per kind, the statuses and p50/p99
latency; and, after a clean SIGTERM, whether every request that got a 2xx was audited (an
audit record with its x-request-id; `admit` + `complete` for inference) and whether
`airlockd audit verify` passes. A benchmark: figures are printed, and the exit status is
1 when a check failed (unexpected statuses, unaudited 2xx, a key refused after create, a
revoked key still accepted, audit verify failing), 0 otherwise. Not a CI test.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODEL = "soak-model"
TENANT_CERTS = ["soak", "keyholder", "narrow", "slow", "anon", "guesser"]
# (kind, weight): the traffic mix, in requests per 100.
MIX = [
    ("chat", 30), ("cert", 12), ("stream", 10), ("cancel", 10), ("models", 5),
    ("unknown_key", 8), ("no_tenant", 5), ("forbidden", 8), ("throttled", 8), ("guess", 4),
]
EXPECTED = {
    "chat": {200}, "cert": {200}, "stream": {200}, "cancel": {200}, "models": {200},
    "unknown_key": {401}, "no_tenant": {401}, "forbidden": {403},
    "throttled": {200, 429}, "guess": {401, 429},
}


def die(message: str) -> None:
    sys.exit(f"soak: error: {message}")


def duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30m, 90s)")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    return float(m.group(1)) * scale


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        die(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr.strip()[-2000:]}")
    return out


def config_text(d: Path, args: argparse.Namespace) -> str:
    if args.model_dir:
        model = f'path = "{args.model_dir}"\ndevice = "cpu"\nmax_queue = 256\n'
    else:
        model = f'backend = "test"\ntest_token_delay = "{args.token_delay_ms}ms"\n'
    return f"""[listener]
address = "127.0.0.1:0"

[listener.tls]
cert = "{d}/certs/server.pem"
key = "{d}/certs/server.key"
client_ca = "{d}/certs/ca.pem"
crls = ["{d}/certs/crl.pem"]

[limits]
shutdown_grace = "20s"
# Every simulated client shares 127.0.0.1, with one keep-alive connection per worker thread and
# certificate (up to workers x 6): far over the per-address default of 64 meant for real peers.
max_connections_per_address = {args.workers * len(TENANT_CERTS) + 16}
request_deadline = "120s"

[[models]]
name = "{MODEL}"
{model}
[auth]
key_db = "{d}/keys.db"

[[tenants]]
name = "soak"
models = ["*"]
cert_cn = ["soak"]

[[tenants]]
name = "keyed"
models = ["*"]

[[tenants]]
name = "narrow"
models = ["some-other-model"]
cert_cn = ["narrow"]

[[tenants]]
name = "slow"
models = ["*"]
cert_cn = ["slow"]
requests_per_minute = 30
burst = 3

[logging]
level = "warn"

[admin]
address = "127.0.0.1:0"

[audit]
db = "{d}/audit/audit.db"
signing_key = "{d}/audit/audit-signing.key"
digest_key = "{d}/audit/audit-digest.key"
"""


class Daemon:
    """`airlockd serve` with a throwaway PKI, keys and config."""

    def __init__(self, args: argparse.Namespace):
        self.bin = str(args.airlockd)
        self.dir = Path(tempfile.mkdtemp(prefix="airlock-soak-", dir=args.work))
        certs = ["certs", "init", "--dir", str(self.dir / "certs")]
        for t in TENANT_CERTS:
            certs += ["--tenant", t]
        run([self.bin, *certs])
        run([self.bin, "audit", "keygen", "--dir", str(self.dir / "audit")])
        self.config = self.dir / "airlockd.toml"
        self.config.write_text(config_text(self.dir, args))
        run([self.bin, "check-config", "--config", str(self.config)])
        self.log = (self.dir / "airlockd.log").open("w")
        self.proc = subprocess.Popen(
            [self.bin, "serve", "--config", str(self.config)],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        self.port, self.admin = self._wait_listening(args.load_timeout)
        self.contexts: dict[str, ssl.SSLContext] = {}
        for t in TENANT_CERTS:
            ctx = ssl.create_default_context(cafile=str(self.dir / "certs/ca.pem"))
            ctx.load_cert_chain(str(self.dir / f"certs/client-{t}.pem"), str(self.dir / f"certs/client-{t}.key"))
            self.contexts[t] = ctx

    def _wait_listening(self, timeout: float) -> tuple[int, str]:
        found: dict[str, str] = {}

        def read() -> None:
            for line in self.proc.stdout:
                if m := re.match(r"listening on https://[^:]+:(\d+)", line):
                    found["port"] = m.group(1)
                if m := re.match(r"admin listening on (\S+)", line):
                    found["admin"] = m.group(1)
                if len(found) == 2:
                    break
            for _ in self.proc.stdout:  # keep the pipe drained
                pass

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while len(found) < 2 and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.05)
        if len(found) < 2:
            self.proc.kill()
            die(f"airlockd did not start; its log ends:\n{(self.dir / 'airlockd.log').read_text()[-3000:]}")
        return int(found["port"]), found["admin"]

    def keys(self, *args: str) -> str:
        return run([self.bin, "keys", *args, "--config", str(self.config)]).stdout

    def create_key(self) -> str:
        out = self.keys("create", "--tenant", "keyed")
        keys = re.findall(r"alk_[A-Za-z0-9_]+", out)
        if not keys:
            die(f"`airlockd keys create` printed no key: {out}")
        return keys[0]

    def status(self) -> dict:
        conn = http.client.HTTPConnection(self.admin.removeprefix("http://"), timeout=10)
        conn.request("GET", "/status")
        return json.loads(conn.getresponse().read())

    def sample(self) -> dict:
        """RSS (KiB; and its anonymous part: the file-backed rest is mostly the binary's
        code paged in as paths run), open fds and KV-cache bytes now."""
        rss = anon = 0
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("RssAnon:"):
                anon = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        status = self.status()
        return {"rss_kib": rss, "anon_kib": anon, "fds": fds,
                "kv_bytes": status["engine"]["kv_cache_bytes"],
                "prefix_bytes": status["engine"].get("prefix_cache_bytes", 0),
                "requests_in_flight": status["requests_in_flight"], "ready": status.get("ready")}

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


class Client:
    """HTTPS requests over keep-alive connections, one per thread and certificate."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.local = threading.local()

    def _conn(self, cert: str) -> http.client.HTTPSConnection:
        conns = self.local.__dict__.setdefault("conns", {})
        if cert not in conns:
            conns[cert] = http.client.HTTPSConnection(
                "localhost", self.daemon.port, context=self.daemon.contexts[cert], timeout=120)
        return conns[cert]

    def _drop(self, cert: str) -> None:
        conn = self.local.__dict__.get("conns", {}).pop(cert, None)
        if conn is not None:
            conn.close()

    def request(self, cert: str, method: str, path: str, body: dict | None = None,
                key: str | None = None, cancel_after: int | None = None) -> tuple[int, str]:
        """Returns (status, request id). `cancel_after`: close after that many SSE chunks."""
        rid = str(uuid.uuid4())
        headers = {"x-request-id": rid}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        if key:
            headers["authorization"] = f"Bearer {key}"
        for attempt in range(2):
            conn = self._conn(cert)
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                if cancel_after is not None and resp.status == 200:
                    chunks = 0
                    while chunks < cancel_after and resp.readline():
                        chunks += 1
                    self._drop(cert)  # the client goes away mid-stream
                else:
                    resp.read()
                    if resp.will_close:
                        self._drop(cert)
                return resp.status, rid
            except (http.client.HTTPException, OSError):
                self._drop(cert)
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")


BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def well_formed_key(key_id: str | None = None) -> str:
    """A key that passes the format and checksum check (policy/src/key.rs), so the daemon
    looks its id up: a made-up id (unknown key) or a real id with a wrong secret (a guess)."""
    key_id = key_id or "".join(random.choices(BASE62, k=12))
    body = f"alk_{key_id}_" + "".join(random.choices(BASE62, k=22))
    crc, out = zlib.crc32(body.encode()), ""
    for _ in range(6):
        out = BASE62[crc % 62] + out
        crc //= 62
    return body + out


def chat(stream: bool = False, model: str = MODEL, tokens: int = 16) -> dict:
    return {"model": model, "stream": stream, "max_tokens": tokens,
            "messages": [{"role": "user", "content": "one two three four five six seven eight nine ten " * 4}]}


class Soak:
    def __init__(self, args: argparse.Namespace, daemon: Daemon):
        self.args = args
        self.d = daemon
        self.client = Client(daemon)
        self.lock = threading.Lock()
        self.keys: list[str] = [daemon.create_key()]
        self.revoked: list[tuple[str, float]] = []
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.ok_ids: dict[str, str] = {}  # request id -> kind, for every 2xx
        self.problems: list[str] = []
        self.guess_key = daemon.create_key()
        self.events = Counter()
        self.late = 0

    def problem(self, text: str) -> None:
        with self.lock:
            if len(self.problems) < 200:
                self.problems.append(text)
            self.events["problems"] += 1

    def one(self, kind: str) -> None:
        with self.lock:
            key = random.choice(self.keys)
        c = self.client
        start = time.perf_counter()
        try:
            if kind == "chat":
                status, rid = c.request("keyholder", "POST", "/v1/chat/completions", chat(), key=key)
            elif kind == "cert":
                status, rid = c.request("soak", "POST", "/v1/chat/completions", chat())
            elif kind == "stream":
                status, rid = c.request("soak", "POST", "/v1/chat/completions", chat(True, tokens=24))
            elif kind == "cancel":
                status, rid = c.request("keyholder", "POST", "/v1/chat/completions", chat(True, tokens=200), key=key, cancel_after=3)
            elif kind == "models":
                status, rid = c.request("soak", "GET", "/v1/models")
            elif kind == "unknown_key":
                status, rid = c.request("anon", "POST", "/v1/chat/completions", chat(), key=well_formed_key())
            elif kind == "no_tenant":
                status, rid = c.request("anon", "POST", "/v1/chat/completions", chat())
            elif kind == "forbidden":
                status, rid = c.request("narrow", "POST", "/v1/chat/completions", chat())
            elif kind == "throttled":
                status, rid = c.request("slow", "POST", "/v1/chat/completions", chat())
            elif kind == "guess":
                wrong = well_formed_key(self.guess_key[4:16])
                status, rid = c.request("guesser", "POST", "/v1/chat/completions", chat(), key=wrong)
            else:
                raise AssertionError(kind)
        except Exception as e:  # noqa: BLE001 - a failed request is a finding, not a crash
            self.problem(f"{kind}: {type(e).__name__}: {e}")
            with self.lock:
                self.statuses[kind]["error"] += 1
            return
        elapsed = (time.perf_counter() - start) * 1000
        with self.lock:
            self.statuses[kind][status] += 1
            self.latency[kind].append(elapsed)
            if 200 <= status < 300:
                self.ok_ids[rid] = kind
        if status not in EXPECTED[kind]:
            self.problem(f"{kind}: unexpected status {status} (request {rid})")

    def key_churn(self) -> None:
        """A new key, used at once; the oldest revoked, checked refused within 1.5 s."""
        key = self.d.create_key()
        status, rid = self.client.request("keyholder", "POST", "/v1/chat/completions", chat(), key=key)
        with self.lock:
            self.events["keys_created"] += 1
            self.statuses["new_key"][status] += 1
            if status == 200:
                self.ok_ids[rid] = "new_key"
        if status != 200:
            self.problem(f"a key used right after `keys create` got {status}")
        with self.lock:
            self.keys.append(key)
            old = self.keys.pop(0) if len(self.keys) > 3 else None
        if old is None:
            return
        self.d.keys("revoke", old[4:16])
        revoked_at = time.monotonic()
        # The bound is on when a request is sent, not when its answer comes back: under load
        # a request sent just before the revocation reached the daemon may take seconds.
        while True:
            sent = time.monotonic() - revoked_at
            status, rid = self.client.request("keyholder", "POST", "/v1/chat/completions", chat(tokens=2), key=old)
            if 200 <= status < 300:
                with self.lock:
                    self.ok_ids[rid] = "revoked_key"
            if status == 401:
                break
            if sent > 1.5:
                self.problem(f"a revoked key was still accepted for a request sent {sent:.2f} s after `keys revoke`")
                break
            time.sleep(0.05)
        with self.lock:
            self.events["keys_revoked"] += 1

    def background(self, stop: threading.Event) -> None:
        next_reload = time.monotonic() + self.args.reload_every
        next_key = time.monotonic() + self.args.key_every
        while not stop.wait(0.2):
            now = time.monotonic()
            if now >= next_reload:
                self.d.proc.send_signal(signal.SIGHUP)
                self.events["reloads"] += 1
                next_reload += self.args.reload_every
            if now >= next_key:
                try:
                    self.key_churn()
                except Exception as e:  # noqa: BLE001
                    self.problem(f"key churn: {type(e).__name__}: {e}")
                next_key += self.args.key_every

    def traffic(self) -> None:
        kinds = [k for k, w in MIX for _ in range(w)]
        random.shuffle(kinds)
        interval = 1.0 / self.args.rate
        stop = threading.Event()
        bg = threading.Thread(target=self.background, args=(stop,), daemon=True)
        bg.start()
        started = time.monotonic()
        end = started + self.args.duration
        n = 0
        next_report = started + 30
        # At most two requests queued per worker: past that the sender waits, and falls late.
        slots = threading.BoundedSemaphore(self.args.workers * 2)
        with ThreadPoolExecutor(self.args.workers) as pool:
            while True:
                due = started + n * interval
                now = time.monotonic()
                if due >= end:
                    break
                if due > now:
                    time.sleep(due - now)
                elif now - due > 1.0:
                    self.late += 1  # the pool cannot keep up with the rate
                slots.acquire()
                pool.submit(self.one, kinds[n % len(kinds)]).add_done_callback(lambda _: slots.release())
                n += 1
                if time.monotonic() >= next_report:
                    s = self.d.sample()
                    print(f"  {time.monotonic() - started:6.0f} s  {n} requests  rss {s['rss_kib']} KiB (anon {s['anon_kib']})  "
                          f"fds {s['fds']}  kv {s['kv_bytes']} B  prefixes {s['prefix_bytes']} B  in flight {s['requests_in_flight']}  "
                          f"problems {self.events['problems']}", flush=True)
                    next_report += 30
        stop.set()
        bg.join()
        self.sent = n
        self.wall = time.monotonic() - started


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[int((len(values) - 1) * p)]


def audit_check(d: Daemon, ok_ids: dict[str, str]) -> tuple[int, int, bool, str]:
    """(2xx requests without their records, records read, verify ok, verify output)."""
    db = d.dir / "audit/audit.db"
    out = run([d.bin, "audit", "export", "--db", str(db), "--format", "jsonl"]).stdout
    kinds: dict[str, set] = defaultdict(set)
    records = 0
    for line in out.splitlines():
        r = json.loads(line)
        records += 1
        if r.get("request_id"):
            kinds[r["request_id"]].add(r.get("kind"))
    missing = 0
    for rid, kind in ok_ids.items():
        seen = kinds.get(rid, set())
        inference = kind not in ("models",)
        if not seen or (inference and not {"admit", "complete"} <= seen):
            missing += 1
    verify = subprocess.run(
        [d.bin, "audit", "verify", "--db", str(db), "--pubkey", str(d.dir / "audit/audit-signing.pub")],
        capture_output=True, text=True)
    return missing, records, verify.returncode == 0, (verify.stdout + verify.stderr).strip()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_bin = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release/airlockd"
    p.add_argument("--airlockd", type=Path, default=default_bin, help=f"the binary (default {default_bin})")
    p.add_argument("--duration", type=duration, default=duration("30m"), help="how long to send traffic (30m)")
    p.add_argument("--rate", type=float, default=20.0, help="requests per second (20)")
    p.add_argument("--workers", type=int, default=32, help="client threads (32)")
    p.add_argument("--reload-every", type=duration, default=duration("60s"), help="SIGHUP period (60s)")
    p.add_argument("--key-every", type=duration, default=duration("20s"), help="key create+revoke period (20s)")
    p.add_argument("--token-delay-ms", type=int, default=5, help="test engine delay per token (5)")
    p.add_argument("--model-dir", type=Path, help="serve this Hugging Face model directory instead of the test engine")
    p.add_argument("--load-timeout", type=duration, default=duration("300s"))
    p.add_argument("--work", type=Path, default=None, help="parent of the throwaway directory (system temp)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if not args.airlockd.exists():
        die(f"{args.airlockd} does not exist: `cargo build --release -p airlock-daemon`, or pass --airlockd")
    random.seed(args.seed)

    d = Daemon(args)
    print(f"airlockd {d.proc.pid} on port {d.port}, admin {d.admin}, dir {d.dir}", flush=True)
    soak = Soak(args, d)
    first = d.sample()
    print(f"start: rss {first['rss_kib']} KiB, fds {first['fds']}, kv {first['kv_bytes']} B", flush=True)
    soak.traffic()
    time.sleep(2)  # streams cancelled at the very end finish their records
    last = d.sample()
    code = d.stop()
    missing, records, verified, verify_out = audit_check(d, soak.ok_ids)

    print()
    print(f"## Soak: {soak.wall:.0f} s, {soak.sent} requests at {args.rate:g}/s "
          f"({soak.sent / soak.wall:.1f}/s achieved, {soak.late} sent > 1 s late)")
    print()
    print("| | start | end | change |")
    print("|---|---|---|---|")
    for k, label in [("rss_kib", "RSS (KiB)"), ("anon_kib", "of which anonymous (KiB)"),
                     ("fds", "open fds"), ("kv_bytes", "KV cache (bytes)"),
                     ("prefix_bytes", "cached prefixes (bytes)")]:
        print(f"| {label} | {first[k]} | {last[k]} | {last[k] - first[k]:+} |")
    print()
    print("| kind | requests | statuses | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for kind in [k for k, _ in MIX] + ["new_key"]:
        c = soak.statuses.get(kind, Counter())
        lat = soak.latency.get(kind, [])
        st = ", ".join(f"{s}: {n}" for s, n in sorted(c.items(), key=lambda x: str(x[0])))
        print(f"| {kind} | {sum(c.values())} | {st} | {pct(lat, 0.5):.1f} | {pct(lat, 0.99):.1f} |")
    print()
    print(f"reloads {soak.events['reloads']}, keys created {soak.events['keys_created']}, "
          f"revoked {soak.events['keys_revoked']}; in flight at the end {last['requests_in_flight']}; "
          f"exit status {code}")
    print(f"2xx responses {len(soak.ok_ids)}, unaudited {missing}; audit records {records}; "
          f"audit verify: {'ok' if verified else 'FAILED'} ({verify_out.splitlines()[-1] if verify_out else ''})")
    failed = bool(soak.problems) or missing > 0 or not verified or code != 0
    if soak.problems:
        print(f"\n{soak.events['problems']} problems, first ones:")
        for line in soak.problems[:20]:
            print(f"  {line}")
    print(f"\nresult: {'FAILED' if failed else 'ok'}  (daemon dir kept: {d.dir})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
