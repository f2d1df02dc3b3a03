#!/usr/bin/env python3
"""Write a random-weight model with the exact shapes of Llama-3.2-1B.

    .venv/bin/python bench/gen_llama_1b.py --out /tmp/llama-1b-random            # ~2.5 GB
    .venv/bin/python bench/gen_llama_1b.py --out /tmp/llama-1b-l1 --layers 1      # quick test

Output: a Hugging Face Llama directory (config.json, model.safetensors in bf16,
tokenizer.json, tokenizer_config.json, generation_config.json, special_tokens_map.json)
plus airlock-manifest.json. Weights are random (fixed seed): the model produces
gibberish; it exists for throughput / latency / memory benchmarks only.

Needs only numpy (the safetensors file is written by hand because numpy has no
bfloat16; it is streamed tensor by tensor, in chunks, so memory stays ~100 MB).
The tokenizer is derived from the committed default model's byte-level BPE
(engine/assets/default-model/tokenizer.json): its ~1k real tokens keep their ids,
ids up to 127999 are filled with unreachable filler tokens " tok<N>" (so every id
decodes to some text), and 128000..128255 are the Llama-3.1/3.2 special tokens at
their real ids (<|begin_of_text|>=128000, <|eot_id|>=128009, ...).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER_DIR = REPO / "engine" / "assets" / "default-model"

VOCAB = 128256
N_REGULAR = 128000  # ids below are regular BPE tokens, 128000.. are special tokens

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0",
    "use_cache": True,
    "vocab_size": VOCAB,
}

GENERATION_CONFIG = {
    "bos_token_id": 128000,
    "do_sample": True,
    "eos_token_id": [128001, 128008, 128009],
    "temperature": 0.6,
    "top_p": 0.9,
}


def llama3_special_tokens() -> list[tuple[int, str]]:
    named = {
        128000: "<|begin_of_text|>",
        128001: "<|end_of_text|>",
        128004: "<|finetune_right_pad_id|>",
        128006: "<|start_header_id|>",
        128007: "<|end_header_id|>",
        128008: "<|eom_id|>",
        128009: "<|eot_id|>",
        128010: "<|python_tag|>",
    }
    out, reserved = [], 0
    for i in range(N_REGULAR, VOCAB):
        if i in named:
            out.append((i, named[i]))
        else:
            out.append((i, f"<|reserved_special_token_{reserved}|>"))
            reserved += 1
    return out


def build_tokenizer(src_dir: Path, out: Path) -> None:
    src = json.loads((src_dir / "tokenizer.json").read_text(encoding="utf-8"))
    src_cfg = json.loads((src_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    src_special = {t["content"] for t in src["added_tokens"]}
    model = src["model"]
    vocab = {tok: i for tok, i in model["vocab"].items() if tok not in src_special}
    assert sorted(vocab.values()) == list(range(len(vocab))), "source regular vocab must be contiguous"
    # Fillers: "Ġtok<N>" (ByteLevel: Ġ = space). No merge produces them, so encoding never
    # emits them, but every id < 128000 decodes to text.
    for i in range(len(vocab), N_REGULAR):
        vocab[f"\u0120tok{i}"] = i
    model["vocab"] = vocab
    specials = llama3_special_tokens()
    src["added_tokens"] = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, s in specials
    ]
    # Post-processor: <|begin_of_text|> at its real id.
    def fix(pp):
        if pp.get("type") == "Sequence":
            for p in pp["processors"]:
                fix(p)
        elif pp.get("type") == "TemplateProcessing":
            pp["special_tokens"] = {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                          "tokens": ["<|begin_of_text|>"]}}
    fix(src["post_processor"])
    with open(out / "tokenizer.json", "w", encoding="utf-8") as f:
        json.dump(src, f, ensure_ascii=False)

    tcfg = {
        "added_tokens_decoder": {
            str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for i, s in specials
        },
        "bos_token": "<|begin_of_text|>",
        "chat_template": src_cfg["chat_template"],
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|eot_id|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    write_json(out / "tokenizer_config.json", tcfg)
    write_json(out / "special_tokens_map.json", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})


def tensor_specs(layers: int) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, init) in the order HF lists them; tied => no lm_head.weight."""
    h, i, hd = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["head_dim"]
    q, kv = CONFIG["num_attention_heads"] * hd, CONFIG["num_key_value_heads"] * hd
    specs = [("model.embed_tokens.weight", (VOCAB, h), "normal")]
    for l in range(layers):
        p = f"model.layers.{l}."
        specs += [
            (p + "input_layernorm.weight", (h,), "norm"),
            (p + "mlp.down_proj.weight", (h, i), "normal"),
            (p + "mlp.gate_proj.weight", (i, h), "normal"),
            (p + "mlp.up_proj.weight", (i, h), "normal"),
            (p + "post_attention_layernorm.weight", (h,), "norm"),
            (p + "self_attn.k_proj.weight", (kv, h), "normal"),
            (p + "self_attn.o_proj.weight", (h, q), "normal"),
            (p + "self_attn.q_proj.weight", (q, h), "normal"),
            (p + "self_attn.v_proj.weight", (kv, h), "normal"),
        ]
    specs.append(("model.norm.weight", (h,), "norm"))
    return specs


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (uint16). No NaNs expected."""
    u = x.astype(np.float32, copy=False).view(np.uint32)
    u = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (u >> np.uint32(16)).astype("<u2")


def write_safetensors(path: Path, specs, seed: int, std: float, chunk: int = 1 << 22) -> None:
    header, off = {}, 0
    for name, shape, _ in specs:
        nbytes = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # align data to 8 bytes, as the reference writer does
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name, shape, init in specs:
            n = int(np.prod(shape))
            done = 0
            while done < n:
                m = min(chunk, n - done)
                if init == "norm":
                    x = rng.uniform(0.8, 1.2, size=m).astype(np.float32)
                else:
                    x = rng.standard_normal(m, dtype=np.float32)
                    x *= np.float32(std)
                f.write(f32_to_bf16_bits(x).tobytes())
                done += m
    assert path.stat().st_size == 8 + len(hb) + off


def write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=True)
        f.write("\n")


def write_manifest(model_dir: Path) -> None:
    files = []
    for p in sorted(model_dir.rglob("*")):
        rel = p.relative_to(model_dir).as_posix()
        if not p.is_file() or rel == "airlock-manifest.json":
            continue
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for b in iter(lambda: f.read(1 << 22), b""):
                h.update(b)
        files.append({"path": rel, "size": p.stat().st_size, "sha256": h.hexdigest()})
    files.sort(key=lambda e: e["path"])
    write_json(model_dir / "airlock-manifest.json", {"files": files})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output directory (created; must be empty or absent)")
    ap.add_argument("--layers", type=int, default=16, help="num_hidden_layers (16 = real Llama-3.2-1B; 1 for a quick test)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--std", type=float, default=0.02, help="std of the normal init of matrices")
    ap.add_argument("--tokenizer-from", type=Path, default=DEFAULT_TOKENIZER_DIR,
                    help="dir with a Llama-3-style byte-level BPE tokenizer.json + tokenizer_config.json")
    ap.add_argument("--force", action="store_true", help="allow writing into a non-empty --out")
    args = ap.parse_args()

    out: Path = args.out
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"{out} is not empty (use --force)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    cfg = dict(CONFIG, num_hidden_layers=args.layers)
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json", GENERATION_CONFIG)
    build_tokenizer(args.tokenizer_from, out)
    specs = tensor_specs(args.layers)
    n_params = sum(int(np.prod(s)) for _, s, _ in specs)
    print(f"writing {len(specs)} tensors, {n_params / 1e9:.3f} B params, {2 * n_params / 2**30:.2f} GiB bf16 ...",
          flush=True)
    write_safetensors(out / "model.safetensors", specs, args.seed, args.std)
    write_manifest(out)
    print(f"done in {time.time() - t0:.1f} s: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
