#!/usr/bin/env python3
"""Airlock vs llama.cpp (through llama-cpp-python) on the same weights, same thread count.

    .venv/bin/python bench/compare/run.py                      # CPU, 2 threads -> bench/results/cpu.md
    .venv/bin/python bench/compare/run.py --device gpu --gpu-bandwidth-gbs 3350   # -> gpu.md

One run: makes sure the random-weight Llama-3.2-1B-shaped model exists (bench/gen_llama_1b.py),
converts it to GGUF with bench/hf_to_gguf.py (F16 and Q8_0 by default), measures llama.cpp
in process through llama-cpp-python's low-level API (several sequences batched into one
llama_decode, as llama.cpp's own server does), starts `airlockd serve` on the same weights and
measures it through its OpenAI API over mutual TLS with streaming, then prints a markdown
table (Airlock, llama.cpp, ratio) and writes it with the machine, versions and the command.

What is measured (both engines, greedy, EOS ignored, identical prompt token ids):
  decode      one stream: (tokens - 1) / (time of the last token - time of the first token)
  prefill     a --prompt-tokens prompt, one output token: prompt tokens / time to first token
  aggregate   N concurrent streams of a short prompt + --stream-tokens each:
              all generated tokens / wall time from the first request to the last token

Figures only; nothing is asserted. See bench/compare/README.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import random
import re
import shlex
import shutil
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BOS = 128000
# Prompt ids are drawn from the real BPE tokens of the generated tokenizer (ids < ~1k), so
# both engines see ordinary tokens; BOS is prepended explicitly (token-id prompts get none).
PROMPT_ID_RANGE = (300, 1000)
SHORT_PROMPT = 16
# The llama.cpp commit vendored by each llama-cpp-python release measured here (read from
# vendor/llama.cpp of the release's sdist; the package does not expose it at run time).
LLAMA_CPP_COMMITS = {"0.3.36": "0c1e57098bba43ac29e6e3b677cdceebdd22334f"}
# GGUF type names (bench/hf_to_gguf.py --outtype) and the Airlock `quantize` value with the
# same kind of weights; None = Airlock's default (the checkpoint's own bf16, f32 compute on CPU).
# SAME_FILE: both engines load the one GGUF file llama.cpp's quantizer wrote (Airlock names
# it as a file in `[[models]] path`), e.g. Q4_K_M's mix of Q4_K, Q6_K, Q5_0 and Q8_0 tensors.
SAME_FILE = "same GGUF file"
FORMATS = {
    "f32": None,
    "f16": None,
    "q8_0": "q8",
    "q4_0": "q4",
    "q4_k_m": SAME_FILE,
    "q5_k_m": SAME_FILE,
}
# llama.cpp's `enum llama_ftype` for the types made with its quantizer (llama_model_quantize).
# With --gguf every one of them is a same-file format (a real model's file requantized).
QUANTIZER_FTYPES = {"q4_k_m": 15, "q5_k_m": 17, "q8_0": 7, "q4_0": 2, "f16": 1}


def die(message: str) -> None:
    sys.exit(f"error: {message}")


@dataclass
class Figures:
    """tok/s per metric for one engine and weight format; missing = not measured."""

    decode: float | None = None
    prefill: float | None = None
    aggregate: dict[int, float] = field(default_factory=dict)
    note: str = ""


def prompt_ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [BOS] + [rng.randrange(*PROMPT_ID_RANGE) for _ in range(n - 1)]


def safetensors_params(model: Path) -> int:
    """Parameter count from the safetensors headers (no tensor data is read)."""
    total = 0
    for path in sorted(model.glob("*.safetensors")):
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, meta in header.items():
            if name != "__metadata__":
                n = 1
                for d in meta["shape"]:
                    n *= d
                total += n
    if total == 0:
        die(f"{model}: no *.safetensors tensors found")
    return total


# ---------------------------------------------------------------------------------------------
# Model and GGUF preparation


def ensure_model(args: argparse.Namespace) -> Path:
    model = Path(args.model)
    if (model / "config.json").is_file() and list(model.glob("*.safetensors")):
        return model
    if args.model_given:
        die(f"{model}: not a Hugging Face model directory (config.json + *.safetensors)")
    print(f"generating the random-weight 1B model in {model} ...", flush=True)
    run([sys.executable, str(REPO / "bench/gen_llama_1b.py"), "--out", str(model)])
    return model


def quantize_gguf(L, src: Path, outtype: str, work: Path, reconvert: bool, threads: int) -> Path:
    """llama.cpp's own quantizer (what `llama-quantize` calls) on `src`; a quantized source
    is requantized (`--allow-requantize`)."""
    out = work / f"{src.stem}-{outtype}.gguf"
    if out.is_file() and out.stat().st_mtime > src.stat().st_mtime and not reconvert:
        print(f"reusing {out}", flush=True)
        return out
    print(f"quantizing {src.name} to {outtype.upper()} with llama.cpp's quantizer ...", flush=True)
    params = L.llama_model_quantize_default_params()
    params.ftype = QUANTIZER_FTYPES[outtype]
    params.nthread = threads
    params.allow_requantize = True
    part = out.with_suffix(".part")
    if L.llama_model_quantize(str(src).encode(), str(part).encode(), params) != 0:
        die(f"llama_model_quantize({src}, {outtype}) failed (run with --llama-verbose to see why)")
    part.replace(out)
    return out


def convert(model: Path, outtype: str, work: Path, reconvert: bool) -> Path:
    converter = REPO / "bench" / "hf_to_gguf.py"
    if not converter.is_file():
        die(f"{converter} is missing: it converts the model to GGUF for llama.cpp")
    out = work / f"{model.name}-{outtype}.gguf"
    newest = max(p.stat().st_mtime for p in model.iterdir() if p.is_file())
    if out.is_file() and out.stat().st_mtime > newest and not reconvert:
        print(f"reusing {out}", flush=True)
        return out
    print(f"converting {model} to {outtype.upper()} GGUF ...", flush=True)
    part = out.with_suffix(".part")  # an interrupted conversion is never reused
    run([sys.executable, str(converter), str(model), "--outtype", outtype, "--out", str(part)])
    part.replace(out)
    return out


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if result.returncode != 0:
        die(f"`{shlex.join(cmd)}` exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


# ---------------------------------------------------------------------------------------------
# llama.cpp through llama-cpp-python's low-level API


def import_llama_cpp():
    try:
        import llama_cpp  # noqa: PLC0415 - optional dependency, checked here
        import numpy  # noqa: F401, PLC0415
    except ImportError as err:
        die(
            f"{err}: install the pinned llama-cpp-python, built for this CPU:\n"
            '  CMAKE_ARGS="-DGGML_NATIVE=ON" .venv/bin/pip install -r bench/compare/requirements.txt'
        )
    return llama_cpp


class LlamaCpp:
    """One GGUF model and one context able to decode `n_seq` sequences in one batch."""

    def __init__(self, L, gguf: Path, args: argparse.Namespace, n_seq: int, n_ctx: int):
        import numpy as np  # noqa: PLC0415

        self.L, self.np = L, np
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 999 if args.device == "gpu" else 0
        self.model = L.llama_model_load_from_file(str(gguf).encode(), mp)
        if not self.model:
            die(f"llama.cpp could not load {gguf} (run with --llama-verbose to see why)")
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = max(args.prompt_tokens, n_seq * SHORT_PROMPT)
        cp.n_ubatch = min(512, cp.n_batch)
        cp.n_seq_max = n_seq
        # One KV cache shared by all sequences, as llama-server's default (--kv-unified).
        cp.kv_unified = True
        cp.n_threads = cp.n_threads_batch = args.threads
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            die(f"llama.cpp could not create a context for {gguf} (n_ctx {n_ctx}, {n_seq} sequences)")
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.n_seq = n_seq
        self.batch = L.llama_batch_init(cp.n_batch, 0, n_seq)

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)

    def clear(self) -> None:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    def decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """items: (token, position, sequence, wants logits)."""
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(items)
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            die(f"llama_decode returned {rc}")

    def argmax(self, i: int) -> int:
        ptr = self.L.llama_get_logits_ith(self.ctx, i)
        return int(self.np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax())

    def generate(self, prompts: list[list[int]], n_new: int) -> list[float]:
        """Greedy, EOS ignored: all prompts prefilled in one batch, then one batched decode
        per step. Returns the time each step's tokens were ready (first = after prefill)."""
        self.clear()
        items, last = [], []
        for s, p in enumerate(prompts):
            for j, tok in enumerate(p):
                items.append((tok, j, s, j == len(p) - 1))
            last.append(len(items) - 1)
        self.decode(items)
        nxt = [self.argmax(i) for i in last]
        times = [time.perf_counter()]
        pos = [len(p) for p in prompts]
        for _ in range(n_new - 1):
            self.decode([(nxt[s], pos[s], s, True) for s in range(len(prompts))])
            nxt = [self.argmax(s) for s in range(len(prompts))]
            pos = [q + 1 for q in pos]
            times.append(time.perf_counter())
        return times


def bench_llama_cpp(L, gguf: Path, args: argparse.Namespace) -> Figures:
    n_seq = max(args.streams)
    n_ctx = max(
        args.prompt_tokens + 8,
        SHORT_PROMPT + args.decode_tokens + 8,
        n_seq * (SHORT_PROMPT + args.stream_tokens + 8),
    )
    n_ctx = (n_ctx + 255) // 256 * 256
    t = time.perf_counter()
    eng = LlamaCpp(L, gguf, args, n_seq, n_ctx)
    print(f"  loaded in {time.perf_counter() - t:.1f} s", flush=True)
    fig = Figures()
    try:
        eng.generate([prompt_ids(SHORT_PROMPT, 1)], 4)  # warm-up
        eng.clear()
        p = prompt_ids(args.prompt_tokens, 2)
        t0 = time.perf_counter()
        eng.decode([(tok, j, 0, j == len(p) - 1) for j, tok in enumerate(p)])
        eng.argmax(len(p) - 1)
        fig.prefill = len(p) / (time.perf_counter() - t0)
        print(f"  prefill {fig.prefill:.1f} tok/s", flush=True)
        times = eng.generate([prompt_ids(SHORT_PROMPT, 3)], args.decode_tokens)
        fig.decode = (len(times) - 1) / (times[-1] - times[0])
        print(f"  decode {fig.decode:.2f} tok/s", flush=True)
        for n in args.streams:
            prompts = [prompt_ids(SHORT_PROMPT, 100 + s) for s in range(n)]
            t0 = time.perf_counter()
            times = eng.generate(prompts, args.stream_tokens)
            fig.aggregate[n] = n * args.stream_tokens / (times[-1] - t0)
            print(f"  {n} streams: {fig.aggregate[n]:.2f} tok/s", flush=True)
    finally:
        eng.close()
    if args.busy and args.threads > 1:
        # ggml's threads meet at a spinning barrier after every op: when another process
        # takes one of their cores, the others wait for it. One thread shows what is lost.
        one = argparse.Namespace(**{**vars(args), "threads": 1})
        eng = LlamaCpp(L, gguf, one, 1, n_ctx)
        try:
            times = eng.generate([prompt_ids(SHORT_PROMPT, 3)], min(32, args.decode_tokens))
        finally:
            eng.close()
        fig.note = f"decode with 1 thread instead of {args.threads}: {(len(times) - 1) / (times[-1] - times[0]):.2f} tok/s"
        print(f"  {fig.note}", flush=True)
    return fig


# ---------------------------------------------------------------------------------------------
# Airlock through its HTTP API


class Airlock:
    """A running `airlockd serve` with a throwaway PKI, audit keys, API key and config."""

    def __init__(self, binary: Path, model: Path, args: argparse.Namespace, quantize: str | None):
        import httpx  # noqa: PLC0415

        self.httpx = httpx
        self.dir = Path(tempfile.mkdtemp(prefix="airlock-", dir=args.work))
        run([str(binary), "certs", "init", "--dir", str(self.dir / "certs"), "--tenant", "bench"])
        run([str(binary), "audit", "keygen", "--dir", str(self.dir / "audit")])
        config = self.dir / "airlockd.toml"
        config.write_text(config_text(self.dir, model, args, quantize))
        run([str(binary), "check-config", "--config", str(config)])
        out = run([str(binary), "keys", "create", "--tenant", "bench", "--config", str(config)]).stdout
        keys = re.findall(r"alk_[A-Za-z0-9_]+", out)
        if not keys:
            die(f"`airlockd keys create` printed no key:\n{out}")
        self.key = keys[0]
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
        cmd = [str(binary), "serve", "--config", str(config)]
        if args.device == "cpu" and (os.cpu_count() or 1) > args.threads and shutil.which("taskset"):
            cmd = ["taskset", "-c", f"0-{args.threads - 1}", *cmd]
        self.log = (self.dir / "airlockd.log").open("w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.port = self._wait_listening(args.load_timeout)
        tls = ssl.create_default_context(cafile=str(self.dir / "certs/ca.pem"))
        tls.load_cert_chain(str(self.dir / "certs/client-bench.pem"), str(self.dir / "certs/client-bench.key"))
        self.tls = tls

    def _wait_listening(self, timeout: float) -> int:
        found: list[int] = []

        def read() -> None:
            for line in self.proc.stdout:
                m = re.match(r"listening on https://[^:]+:(\d+)", line)
                if m:
                    found.append(int(m.group(1)))
                    break

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            self.close()
            tail = (self.dir / "airlockd.log").read_text()[-3000:]
            die(f"airlockd did not start listening within {timeout:.0f} s; its log ends:\n{tail}")
        return found[0]

    def client(self):
        c = self.httpx.Client(
            base_url=f"https://localhost:{self.port}",
            verify=self.tls,
            timeout=None,
            headers={"authorization": f"Bearer {self.key}"},
        )
        c.get("/v1/models").raise_for_status()  # connection and key cache warm before timing
        return c

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def config_text(d: Path, model: Path, args: argparse.Namespace, quantize: str | None) -> str:
    q = f'quantize = "{quantize}"\n' if quantize else ""
    return f"""[listener]
address = "127.0.0.1:0"

[listener.tls]
cert = "{d}/certs/server.pem"
key = "{d}/certs/server.key"
client_ca = "{d}/certs/ca.pem"
crls = ["{d}/certs/crl.pem"]

[limits]
request_deadline = "60m"

[[models]]
name = "bench"
path = "{model}"
device = "{args.device}"
# The manifest check costs load time only, not throughput.
verify = false
max_queue = 64
max_active = {max(args.streams)}
{q}
[auth]
key_db = "keys.db"

[[tenants]]
name = "bench"
models = ["*"]
cert_cn = ["bench"]

[logging]
level = "warn"

[audit]
db = "{d}/audit/audit.db"
signing_key = "{d}/audit/audit-signing.key"
digest_key = "{d}/audit/audit-digest.key"
"""


def stream(client, prompt: list[int], max_tokens: int) -> tuple[float, float, float, int]:
    """One streamed completion. Returns (sent, first token, finish, completion tokens)."""
    body = {
        "model": "bench",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    first = finish = None
    tokens = 0
    with client.stream("POST", "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            die(f"airlockd answered {resp.status_code}: {resp.read().decode()[:500]}")
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            chunk = json.loads(line[6:])
            if "error" in chunk:
                die(f"airlockd stream error: {chunk['error']}")
            for choice in chunk.get("choices") or []:
                # A token that decodes to no text (a special token) sends no chunk of its own;
                # the first chunk of any kind marks the first token.
                if first is None:
                    first = now
                if choice.get("finish_reason"):
                    finish = now
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if first is None or finish is None or tokens == 0:
        die("airlockd stream ended without tokens, finish_reason or usage")
    return sent, first, finish, tokens


def bench_airlock(binary: Path, model: Path, args: argparse.Namespace, quantize: str | None) -> Figures:
    t = time.perf_counter()
    srv = Airlock(binary, model, args, quantize)
    print(f"  loaded in {time.perf_counter() - t:.1f} s", flush=True)
    fig = Figures()
    try:
        n_max = max(args.streams)
        clients = [srv.client() for _ in range(n_max)]
        stream(clients[0], prompt_ids(SHORT_PROMPT, 1), 4)  # warm-up
        sent, first, _, _ = stream(clients[0], prompt_ids(args.prompt_tokens, 2), 1)
        fig.prefill = args.prompt_tokens / (first - sent)
        print(f"  prefill {fig.prefill:.1f} tok/s", flush=True)
        _, first, finish, n = stream(clients[0], prompt_ids(SHORT_PROMPT, 3), args.decode_tokens)
        fig.decode = (n - 1) / (finish - first)
        print(f"  decode {fig.decode:.2f} tok/s", flush=True)
        for n in args.streams:
            results: list[tuple] = [None] * n

            def one(i: int) -> None:
                results[i] = stream(clients[i], prompt_ids(SHORT_PROMPT, 100 + i), args.stream_tokens)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
            t0 = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            if any(r is None for r in results):
                die(f"a stream of the {n}-stream run failed (see above)")
            end = max(r[2] for r in results)
            fig.aggregate[n] = sum(r[3] for r in results) / (end - t0)
            print(f"  {n} streams: {fig.aggregate[n]:.2f} tok/s", flush=True)
        for c in clients:
            c.close()
    except SystemExit:
        print(f"airlockd's log: {srv.dir / 'airlockd.log'}", file=sys.stderr)
        raise
    finally:
        srv.close()
    shutil.rmtree(srv.dir, ignore_errors=True)  # kept (with airlockd.log) only after a failure
    return fig


def airlock_binary(args: argparse.Namespace) -> Path:
    profile_dir = "debug" if args.profile == "dev" else args.profile
    # cargo's own variable: a checkout that builds into another target directory.
    binary = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / profile_dir / "airlockd"
    if args.build or not binary.is_file():
        cmd = ["cargo", "build", "--workspace", "--locked", "--profile", args.profile]
        print(f"building: {shlex.join(cmd)}", flush=True)
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            die(f"`{shlex.join(cmd)}` failed")
    if not binary.is_file():
        die(f"{binary} is missing: build it with `cargo build --workspace --locked --profile {args.profile}`")
    # A private copy, so that a rebuild during the run cannot change the engine between rows.
    frozen = Path(args.work) / "airlockd"
    shutil.copy2(binary, frozen)
    return frozen


def inspected_params(binary: Path, gguf: Path) -> int:
    """Parameter count from `airlockd model inspect` (headers only)."""
    out = run([str(binary), "model", "inspect", str(gguf), "--json", "--no-bandwidth"]).stdout
    return int(json.loads(out)["parameters"])


def quantize_supported() -> bool:
    """Whether this checkout's config accepts `quantize` in [[models]] (older checkouts, which
    the script can also measure, did not)."""
    config = REPO / "daemon/src/config"
    return any(re.search(r"\bquantize\b", f.read_text()) for f in config.rglob("*.rs"))


# ---------------------------------------------------------------------------------------------
# Report


def machine_info(args: argparse.Namespace, L, binary: Path) -> list[str]:
    def sh(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, text=True, capture_output=True, cwd=REPO).stdout.strip()
        except OSError:
            return "?"

    cpu = re.search(r"Model name:\s*(.+)", sh(["lscpu"]))
    rev = sh(["git", "rev-parse", "--short", "HEAD"])
    dirty = " (with uncommitted changes)" if sh(["git", "status", "--porcelain", "--untracked-files=no"]) else ""
    lines = [
        f"- CPU: {cpu.group(1) if cpu else platform.processor()}, {os.cpu_count()} logical cores; "
        f"**{args.threads} threads** for both engines",
        f"- OS: {platform.platform()}; Python {platform.python_version()}; load average at start "
        f"{args.load_at_start:.2f} (anything else running on these cores makes the figures noisy)",
        f"- Airlock: `{sh([str(binary), '--version'])}`, git {rev}{dirty}, "
        f"`target/{'debug' if args.profile == 'dev' else args.profile}/airlockd` "
        f"(cargo profile `{args.profile}`), {sh(['rustc', '--version'])}",
    ]
    if L is not None:
        v = getattr(L, "__version__", "?")
        info = L.llama_print_system_info().decode(errors="replace").strip()
        lines.append(
            f"- llama.cpp: llama-cpp-python {v}, vendored llama.cpp commit "
            f"{LLAMA_CPP_COMMITS.get(v, 'unknown (not in LLAMA_CPP_COMMITS)')}; system info: `{info}`"
        )
    if args.device == "gpu":
        gpu = sh(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
        lines.append(f"- GPU: {gpu or 'unknown (no nvidia-smi)'}")
    return lines


def fmt(x: float | None) -> str:
    return "—" if x is None else (f"{x:.1f}" if x >= 10 else f"{x:.2f}")


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def table(rows: list[tuple[str, Figures | None, Figures | None, str]], args) -> list[str]:
    out = [
        "| weights | metric | Airlock tok/s | llama.cpp tok/s | Airlock / llama.cpp |",
        "|---|---|---:|---:|---:|",
    ]
    for label, air, lcpp, _ in rows:
        metrics = [
            (f"decode, 1 stream, {args.decode_tokens} tokens", "decode"),
            (f"prefill, {args.prompt_tokens}-token prompt", "prefill"),
        ] + [(f"aggregate, {n} stream{'s' if n > 1 else ''} × {args.stream_tokens} tokens", n) for n in args.streams]
        for name, key in metrics:
            def get(f: Figures | None, key=key):
                if f is None:
                    return None
                return getattr(f, key) if isinstance(key, str) else f.aggregate.get(key)

            a, b = get(air), get(lcpp)
            out.append(f"| {label} | {name} | {fmt(a)} | {fmt(b)} | {ratio(a, b)} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF model directory (default /tmp/airlock-llama-1b, generated if absent)")
    ap.add_argument("--gguf", help="instead of --model: a GGUF file (e.g. a real model) that "
                    "llama.cpp's quantizer requantizes to each of --formats (q4_k_m, q5_k_m, q8_0, q4_0, f16; "
                    "default q4_k_m); both engines then load the same file")
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for both engines (default 2)")
    ap.add_argument("--formats", help="GGUF types to compare, comma-separated: f32,f16,q8_0,q4_0,"
                    "q4_k_m,q5_k_m "
                    "(default: f32,f16,q8_0 on CPU, f16 on GPU)")
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--streams", default="1,4,16", help="concurrent stream counts (default 1,4,16)")
    ap.add_argument("--stream-tokens", type=int, default=128, help="tokens per stream in the aggregate runs "
                    "(default 128: with 32, the 16 prompts' prefill is a quarter of the 16-stream run's wall time)")
    ap.add_argument("--profile", default="dev", help="cargo profile of airlockd (default dev: "
                    "target/debug, dependencies at opt-level 2; `release` takes ~20 min to build)")
    ap.add_argument("--build", action="store_true", help="run `cargo build --workspace --locked` first")
    ap.add_argument("--work", default="/tmp/airlock-compare", help="GGUF files and daemon state")
    ap.add_argument("--reconvert", action="store_true", help="convert to GGUF even if up to date")
    ap.add_argument("--skip", choices=["airlock", "llama.cpp"], action="append", default=[])
    ap.add_argument("--load-timeout", type=float, default=900, help="seconds for airlockd to load")
    ap.add_argument("--gpu-bandwidth-gbs", type=float, help="GPU memory bandwidth in GB/s "
                    "(e.g. 3350 for H100 SXM): adds the decode bound weight bytes/token ÷ bandwidth")
    ap.add_argument("--out", help="markdown results (default bench/results/{cpu,gpu}.md)")
    ap.add_argument("--note", action="append", default=[], help="a line added to the notes")
    ap.add_argument("--llama-verbose", action="store_true", help="keep llama.cpp's own log")
    args = ap.parse_args()
    args.model_given = args.model is not None
    args.model = args.model or "/tmp/airlock-llama-1b"
    args.streams = sorted({int(s) for s in args.streams.split(",")})
    default_formats = "q4_k_m" if args.gguf else ("f16" if args.device == "gpu" else "f32,f16,q8_0")
    formats = (args.formats or default_formats).split(",")
    if args.gguf and any(f not in QUANTIZER_FTYPES for f in formats):
        die(f"--gguf: only the types llama.cpp's quantizer makes here ({', '.join(QUANTIZER_FTYPES)})")
    for f in formats:
        if f not in FORMATS:
            die(f"--formats: unknown type {f!r} (known: {', '.join(FORMATS)})")
    if args.threads < 1 or min(args.streams) < 1 or args.decode_tokens < 2 or args.stream_tokens < 1:
        die("--threads, --streams and --stream-tokens must be ≥ 1, --decode-tokens ≥ 2")
    out_path = Path(args.out) if args.out else REPO / "bench/results" / f"{args.device}.md"
    Path(args.work).mkdir(parents=True, exist_ok=True)
    started = time.time()
    args.load_at_start = os.getloadavg()[0]
    # Busy: other work already wants more of the machine than --threads leaves free.
    args.busy = args.device == "cpu" and args.load_at_start > (os.cpu_count() or 1) - args.threads + 0.5

    model = Path(args.gguf).resolve() if args.gguf else ensure_model(args)
    L = None
    if "llama.cpp" not in args.skip:
        L = import_llama_cpp()
        L.llama_backend_init()
        if not args.llama_verbose:
            args._log_cb = L.llama_log_callback(lambda level, text, user: None)
            L.llama_log_set(args._log_cb, ctypes.c_void_p())
        if args.gguf:
            # Prompts start with the file's own BOS (the default is Llama 3's).
            global BOS
            BOS = L.Llama(model_path=str(model), vocab_only=True, verbose=False).token_bos()
    binary = airlock_binary(args) if "airlock" not in args.skip else REPO / "target/debug/airlockd"
    has_quantize = quantize_supported()

    rows = []
    measured: dict[str | None, Figures] = {}
    for f in formats:
        q = FORMATS[f]
        lcpp = air = None
        notes = []
        if q == SAME_FILE or args.gguf:
            if L is None:
                die(f"{f}: the file is made with llama.cpp's quantizer, so llama.cpp cannot be skipped")
            src = model if args.gguf else convert(model, "f16", Path(args.work), args.reconvert)
            gguf = quantize_gguf(L, src, f, Path(args.work), args.reconvert, args.threads)
            print(f"llama.cpp {f.upper()} ({gguf.stat().st_size / 2**30:.2f} GiB) ...", flush=True)
            lcpp = bench_llama_cpp(L, gguf, args)
            if "airlock" not in args.skip:
                print(f"Airlock, the same {f.upper()} file ...", flush=True)
                air = bench_airlock(binary, gguf, args, None)
            rows.append((f"GGUF {f.upper()}, the same file", air, lcpp,
                         f"llama.cpp GGUF {f.upper()}: {lcpp.note}" if lcpp.note else ""))
            continue
        if L is not None:
            gguf = convert(model, f, Path(args.work), args.reconvert)
            print(f"llama.cpp {f.upper()} ({gguf.stat().st_size / 2**30:.2f} GiB) ...", flush=True)
            lcpp = bench_llama_cpp(L, gguf, args)
        if "airlock" in args.skip:
            pass
        elif q is not None and not has_quantize:
            notes.append(f"Airlock `quantize = \"{q}\"` does not exist in this checkout: row not measured")
        elif q in measured:
            air = measured[q]  # the same Airlock configuration, compared with another GGUF type
        else:
            what = f'quantize = "{q}"' if q else "checkpoint bf16"
            print(f"Airlock {what} ...", flush=True)
            try:
                air = measured[q] = bench_airlock(binary, model, args, q)
            except SystemExit as err:
                if q is None:
                    raise
                # The key is newer than some builds: say so in the table, keep the other rows.
                print(f"  failed: {err}", file=sys.stderr)
                notes.append(f'Airlock `quantize = "{q}"` failed: {str(err).splitlines()[0][:300]}')
        air_w = f'`quantize = "{q}"`' if q else "bf16 safetensors"
        label = f"{air_w} vs GGUF {f.upper()}"
        if lcpp is not None and lcpp.note:
            notes.append(f"llama.cpp GGUF {f.upper()}: {lcpp.note}")
        rows.append((label, air, lcpp, "; ".join(notes)))

    if args.gguf:
        params = inspected_params(binary, model)
        what = "a GGUF file"
    else:
        params = safetensors_params(model)
        what = "random weights, Llama-3.2-1B shapes"
    lines = [
        f"# Airlock vs llama.cpp, {args.device.upper()}",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} by `bench/compare/run.py` "
        f"on `{model}` ({params / 1e9:.3f} B parameters, {what}). "
        "Same weights, same prompt token ids, greedy, EOS ignored, same thread count.",
        "",
        "```sh",
        ".venv/bin/python " + shlex.join(["bench/compare/run.py", *sys.argv[1:]]),
        "```",
        "",
        *table(rows, args),
        "",
    ]
    if args.device == "gpu" and args.gpu_bandwidth_gbs:
        bytes_per_token = params * 2  # f16; tied embeddings are read once, as the output matrix
        bound = args.gpu_bandwidth_gbs * 1e9 / bytes_per_token
        lines += [
            f"Decode bound from memory bandwidth: {bytes_per_token / 1e9:.2f} GB of f16 weights read per "
            f"token ÷ {args.gpu_bandwidth_gbs:.0f} GB/s = **{bound:.0f} tok/s** (KV cache reads ignored).",
            "",
            "| engine | decode tok/s | % of bound |",
            "|---|---:|---:|",
        ]
        for label, air, lcpp, _ in rows:
            for name, f in (("Airlock", air), ("llama.cpp", lcpp)):
                if f is not None and f.decode is not None:
                    lines.append(f"| {name} ({label}) | {fmt(f.decode)} | {100 * f.decode / bound:.1f}% |")
        lines.append("")
    lines += ["Machine and versions:", "", *machine_info(args, L, binary), "", "Notes:", ""]
    if args.busy:
        lines.append(
            f"- **The machine was busy** (load average {args.load_at_start:.2f} on {os.cpu_count()} cores at "
            "start): these figures are not a fair speed comparison. llama.cpp suffers most: its threads "
            "spin at a barrier after every op, so one descheduled thread stalls the others (its 1-thread "
            "decode below is then faster than 2 threads); Airlock's rayon pool degrades more gently. "
            "Rerun on an idle machine."
        )
    lines += [f"- {n}" for _, _, _, n in rows if n]
    lines += [
        "- decode: (tokens − 1) / (last token − first token) of one stream; prefill: prompt tokens ÷ "
        "time to the first token (Airlock: from the request to the first streamed chunk, HTTP and mTLS "
        "included); aggregate: all generated tokens ÷ wall time from the first request to the last "
        f"token, {SHORT_PROMPT}-token prompts' prefill included.",
        "- llama.cpp runs in process through llama-cpp-python's low-level API: all streams share one "
        "context (`n_seq_max` = the largest stream count, unified KV cache) and are decoded together in "
        "one `llama_batch` per step, prompts prefilled in one batch, as llama-server does.",
        "- Airlock runs as `airlockd serve` with mutual TLS, an API key, the audit log and streaming "
        f"(`/v1/completions`, token-id prompts, `ignore_eos`), `RAYON_NUM_THREADS={args.threads}`, "
        f"`max_active` = {max(args.streams)}.",
    ]
    if args.gguf:
        lines.append("- Both engines load the same GGUF file, written by llama.cpp's own quantizer "
                     "(`llama_model_quantize`, requantizing when the source is quantized): Airlock names it as a "
                     "file in `[[models]] path` and runs its tensors in their stored types (no `quantize` key).")
    elif args.device == "cpu":
        lines.append("- Airlock's CPU backend keeps the bf16 checkpoint's weights as bf16 (widened to f32 in "
                     "registers, f32 activations and accumulation): the F16 row compares the same weight bytes "
                     "per token; the F32 row gives llama.cpp twice the bytes; the Q8_0 row compares Airlock's "
                     "`quantize = \"q8\"` (the same Q8_0 block format) with llama.cpp's Q8_0.")
    if args.profile == "dev":
        lines.append("- airlockd is the dev-profile binary (`cargo build --workspace --locked`): the engine, "
                     "engine at opt-level 3 without debug assertions, policy and every dependency (burn) at "
                     "opt-level 2, the daemon crate at opt-level 0; "
                     "`--profile release` builds the release one (~20 min on 2 cores).")
    lines += [f"- {n}" for n in args.note]
    text = "\n".join(lines) + "\n"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)
    print("\n" + text)
    print(f"wrote {out_path} ({(time.time() - started) / 60:.1f} min)")


if __name__ == "__main__":
    main()
