#!/usr/bin/env python3
"""Airlock vs llama.cpp on a real trained model: same GGUF file, same chat prompt, greedy.

For the source GGUF and the files llama.cpp's own quantizer makes from it (`--types`), this
runs the real `airlockd model generate --chat --json` and llama.cpp (llama-cpp-python), and
prints both answers, the prompt ids of each (they must be equal: the chat template is rendered
from the file's `tokenizer.chat_template` and tokenized by each engine on its own), the first
position where the generated ids differ, and each engine's decode tok/s. Exits 1 when the
prompt ids differ or the first `--match` generated ids do not. See README.md beside this file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# llama.cpp's ftype for each type llama_model_quantize writes (`enum llama_ftype`).
FTYPES = {"f16": 1, "q8_0": 7, "q4_0": 2, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}


def die(msg: str) -> None:
    sys.exit(f"error: {msg}")


def quantize(L, src: Path, dst: Path, kind: str, threads: int) -> Path:
    """llama.cpp's own quantizer (llama-quantize's library call); requantizes a quantized
    source (allow_requantize), as `llama-quantize --allow-requantize` does."""
    if dst.is_file() and dst.stat().st_mtime > src.stat().st_mtime:
        return dst
    params = L.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.nthread = threads
    params.allow_requantize = True
    part = dst.with_suffix(".part")
    rc = L.llama_model_quantize(str(src).encode(), str(part).encode(), params)
    if rc != 0:
        die(f"llama_model_quantize({src} -> {kind}) returned {rc}")
    part.replace(dst)
    return dst


def airlock(binary: Path, gguf: Path, question: str, n: int, threads: int) -> dict:
    cmd = [str(binary), "model", "generate", "--model", str(gguf), "--chat", "--prompt", question,
           "--max-tokens", str(n), "--temperature", "0", "--device", "cpu", "--json"]
    env = {"RAYON_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        die(f"airlockd exited {out.returncode}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def llama_cpp_run(Llama, gguf: Path, prompt_ids: list[int], question: str, n: int, threads: int) -> dict:
    llm = Llama(model_path=str(gguf), n_ctx=max(512, len(prompt_ids) + n + 8), n_threads=threads,
                n_threads_batch=threads, verbose=False)
    # The prompt as llama.cpp renders and tokenizes it itself: the file's template
    # (llama-cpp-python's Jinja renderer), llama_tokenize with special tokens parsed.
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    meta = llm.metadata
    eos = llm.detokenize([llm.token_eos()], special=True).decode(errors="replace")
    bos = llm.detokenize([llm.token_bos()], special=True).decode(errors="replace")
    fmt = Jinja2ChatFormatter(template=meta["tokenizer.chat_template"], eos_token=eos, bos_token=bos)
    rendered = fmt(messages=[{"role": "user", "content": question}]).prompt
    add_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"
    own_ids = llm.tokenize(rendered.encode(), add_bos=add_bos, special=True)
    ids, times = [], []
    t0 = time.perf_counter()
    for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        times.append(time.perf_counter())
        if len(ids) >= n:
            break
        ids.append(tok)  # EOS included, as Airlock reports it
        if tok == llm.token_eos():
            break
    decode = (len(times) - 2) / (times[-1] - times[0]) if len(times) > 2 else 0.0
    return {"prompt_ids": own_ids, "generated_ids": ids, "ttft_s": times[0] - t0 if times else 0.0,
            "text": llm.detokenize(ids).decode(errors="replace"), "decode_tokens_per_s": decode}


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", help="the source GGUF file (e.g. SmolLM2-135M-Instruct.Q4_1.gguf)")
    ap.add_argument("--types", default="q8_0,q4_k_m",
                    help=f"llama.cpp quantizations of the source to test too ({', '.join(FTYPES)}); '' for none")
    ap.add_argument("--question", default="What is the capital of France?")
    ap.add_argument("--tokens", type=int, default=32, help="tokens to generate (default 32)")
    ap.add_argument("--match", type=int, default=8, help="generated ids that must be equal (default 8)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/airlock-real-model", help="where quantized files go")
    ap.add_argument("--airlockd", default=str(REPO / "target/debug/airlockd"))
    args = ap.parse_args()

    src = Path(args.gguf).resolve()
    if not src.is_file():
        die(f"{src}: no such file")
    binary = Path(args.airlockd)
    if not binary.is_file():
        die(f"{binary}: build it with `cargo build --workspace --locked` (or pass --airlockd)")
    try:
        import llama_cpp
    except ImportError:
        die("llama-cpp-python is missing: pip install -r bench/compare/requirements.txt")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    files = [("source", src)]
    for kind in filter(None, args.types.split(",")):
        if kind not in FTYPES:
            die(f"--types: unknown {kind!r} (known: {', '.join(FTYPES)})")
        files.append((kind, quantize(llama_cpp, src, work / f"{src.stem}.{kind}.gguf", kind, args.threads)))

    failed = False
    rows = []
    for kind, path in files:
        print(f"\n=== {path.name} ({kind}, {path.stat().st_size / 2**20:.1f} MiB)")
        air = airlock(binary, path, args.question, args.tokens, args.threads)
        ref = llama_cpp_run(llama_cpp.Llama, path, air["prompt_ids"], args.question, args.tokens, args.threads)
        same_prompt = air["prompt_ids"] == ref["prompt_ids"]
        print(f"prompt ids: {len(air['prompt_ids'])} tokens, "
              f"{'identical' if same_prompt else 'DIFFERENT'} (Airlock {air['prompt_ids']}"
              + ("" if same_prompt else f" vs llama.cpp {ref['prompt_ids']}") + ")")
        div = first_divergence(air["generated_ids"], ref["generated_ids"])
        print(f"Airlock   : {air['text']!r}")
        print(f"llama.cpp : {ref['text']!r}")
        print(f"generated ids: first divergence at {div if div is not None else 'none'} "
              f"(Airlock {len(air['generated_ids'])}, llama.cpp {len(ref['generated_ids'])} tokens)")
        a_tps = air["timings"]["decode_tokens_per_s"]
        print(f"decode tok/s: Airlock {a_tps:.1f}, llama.cpp {ref['decode_tokens_per_s']:.1f} "
              f"({a_tps / ref['decode_tokens_per_s']:.2f}x), {args.threads} threads; "
              f"Airlock device {air['device']}")
        ok = same_prompt and (div is None or div >= min(args.match, len(ref["generated_ids"])))
        failed |= not ok
        rows.append((path.name, same_prompt, div, a_tps, ref["decode_tokens_per_s"], ok))

    print("\n| file | prompt ids | first divergence | Airlock tok/s | llama.cpp tok/s | ok |")
    print("|---|---|---:|---:|---:|---|")
    for name, same, div, a, b, ok in rows:
        print(f"| {name} | {'same' if same else 'DIFFER'} | {div if div is not None else 'none'} "
              f"| {a:.1f} | {b:.1f} | {'yes' if ok else 'NO'} |")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
