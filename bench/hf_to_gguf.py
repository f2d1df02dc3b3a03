#!/usr/bin/env python3
"""Convert a Hugging Face Llama-family directory to a GGUF file that llama.cpp loads.

usage: hf_to_gguf.py MODEL_DIR --out FILE.gguf [--outtype f32|f16|q8_0|q4_0] [--pre NAME]

Follows llama.cpp's convert_hf_to_gguf.py conventions (LlamaModel / Qwen2Model):
  * tensor names token_embd, blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,ffn_norm,
    ffn_gate,ffn_up,ffn_down}, output_norm, output (absent when embeddings are tied);
  * Llama q/k rows are permuted per head (HF rotate-half → llama.cpp interleaved RoPE);
    Qwen2 is left as is (llama.cpp runs it with NEOX RoPE);
  * llama.* / qwen2.* hyper-parameters, llama3 RoPE scaling as a `rope_freqs` F32 tensor,
    linear scaling as rope.scaling.{type,factor};
  * byte-level BPE tokenizer as tokenizer.ggml.model "gpt2" with tokens, token_type,
    merges, pre-tokenizer name, special ids, add_bos_token and chat_template;
  * 1-D tensors (norms, biases, rope_freqs) stay F32; 2-D tensors get --outtype
    (falling back to F16 where a row is not a multiple of the 32-element block).

Requires: pip install -r bench/requirements-gguf.txt (gguf, numpy; safetensors are read with numpy alone).
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np

import gguf

LLAMA3_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
QWEN2_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)

OUTTYPES = {
    "f32": (None, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}

ARCHES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",  # llama.cpp converts Mistral as llama
    "Qwen2ForCausalLM": "qwen2",
}


def die(msg: str) -> None:
    print(f"hf_to_gguf: error: {msg}", file=sys.stderr)
    sys.exit(1)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores each head's rows as [pairs' first halves, second halves]; llama.cpp wants
    the two elements of each rotated pair adjacent (same as convert_hf_to_gguf.permute)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def open_tensors(model_dir: Path):
    """Yields (name, float32 numpy array) for every tensor, single file or sharded."""
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        wm = json.loads(index.read_text())["weight_map"]
        files = [model_dir / f for f in sorted(set(wm.values()))]
    else:
        die(f"{model_dir}: no model.safetensors nor model.safetensors.index.json")
    for f in files:
        yield from read_safetensors(f)


# safetensors dtypes this converter reads, as (numpy dtype of the stored bits, to float32).
_DTYPES = {
    "F32": (np.float32, lambda a: a),
    "F16": (np.float16, lambda a: a.astype(np.float32)),
    # bfloat16 is the upper half of a float32: widen the bits, no rounding involved.
    "BF16": (np.uint16, lambda a: (a.astype(np.uint32) << 16).view(np.float32)),
}


def read_safetensors(path: Path):
    """Yields (name, float32 array) from one .safetensors file, read with numpy alone (the
    format is an 8-byte header length, a JSON header, then each tensor's bytes)."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            die(f"{path}: tensor {name}: dtype {info['dtype']} is not supported (F32, F16, BF16)")
        stored, widen = _DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        raw = np.frombuffer(data[start:end], dtype=stored).reshape(info["shape"])
        yield name, widen(raw)


def llama3_rope_factors(hp: dict, rs: dict, head_dim: int) -> np.ndarray:
    base = hp.get("rope_theta", 10000.0)
    factor = rs.get("factor", 8.0)
    low = rs.get("low_freq_factor", 1.0)
    high = rs.get("high_freq_factor", 4.0)
    old_ctx = rs.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    low_wl, high_wl = old_ctx / low, old_ctx / high
    out = []
    for freq in freqs:
        wl = 2 * math.pi / freq
        if wl < high_wl:
            out.append(1.0)
        elif wl > low_wl:
            out.append(factor)
        else:
            smooth = (old_ctx / wl - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def detect_pre(tok: dict) -> str:
    text = json.dumps(tok.get("pre_tokenizer"))
    if json.dumps(LLAMA3_REGEX)[1:-1] in text:
        return "llama-bpe"
    if json.dumps(QWEN2_REGEX)[1:-1] in text:
        return "qwen2"
    return "default"


def write_vocab(w: gguf.GGUFWriter, model_dir: Path, vocab_size: int, pre: str | None) -> None:
    tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = tok.get("model", {})
    pts = json.dumps(tok.get("pre_tokenizer"))
    if model.get("type") != "BPE" or "ByteLevel" not in pts:
        die(
            f"{model_dir}/tokenizer.json: only byte-level BPE tokenizers are converted "
            "(SentencePiece models need llama.cpp's convert_hf_to_gguf.py and tokenizer.model)"
        )
    reverse = {i: t for t, i in model["vocab"].items()}
    added = {a["id"]: a for a in tok.get("added_tokens", [])}
    for i, a in added.items():
        reverse[i] = a["content"]
    n = max(vocab_size, max(reverse) + 1)
    tokens, types = [], []
    for i in range(n):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(
                gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre or detect_pre(tok))
    w.add_token_list(tokens)
    w.add_token_types(types)
    # merges, bos/eos ids, add_bos_token and chat_template, read as llama.cpp does.
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    # Checkpoints that add BOS through tokenizer.json's post-processor (Llama 3) rather than
    # tokenizer_config.json's add_bos_token: say so explicitly, as newer llama.cpp converters do.
    post = json.dumps(tok.get("post_processor"))
    bos_id = special.special_token_ids.get("bos")
    adds_bos = '"TemplateProcessing"' in post and bos_id is not None and f'"ids": [{bos_id}]' in post
    special.add_special_token.setdefault("bos", adds_bos)
    special.add_to_gguf(w)


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Convert a Hugging Face Llama/Qwen2 directory to GGUF (llama.cpp layout).",
        usage="%(prog)s MODEL_DIR --out FILE.gguf [--outtype f32|f16|q8_0|q4_0] [--pre NAME]",
    )
    ap.add_argument("model_dir", type=Path, help="HF directory (config.json, safetensors, tokenizer.json)")
    ap.add_argument("--out", type=Path, required=True, help="GGUF file to write")
    ap.add_argument("--outtype", choices=sorted(OUTTYPES), default="f16", help="2-D tensor type (default f16)")
    ap.add_argument("--pre", help="tokenizer.ggml.pre override (default: detected, e.g. llama-bpe)")
    ap.add_argument("--name", help="general.name (default: the directory name)")
    args = ap.parse_args()

    d: Path = args.model_dir
    if not (d / "config.json").exists():
        die(f"{d}/config.json: missing")
    hp = json.loads((d / "config.json").read_text())
    arch_name = (hp.get("architectures") or [""])[0]
    arch = ARCHES.get(arch_name)
    if arch is None:
        die(f"{d}/config.json: architecture {arch_name!r} not supported ({', '.join(ARCHES)})")
    qtype, ftype = OUTTYPES[args.outtype]

    n_head = hp["num_attention_heads"]
    n_kv = hp.get("num_key_value_heads", n_head)
    hidden = hp["hidden_size"]
    head_dim = hp.get("head_dim") or hidden // n_head
    n_layer = hp["num_hidden_layers"]
    rope_theta = hp.get("rope_theta") or (hp.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    rs = hp.get("rope_scaling") or hp.get("rope_parameters") or {}
    rope_type = rs.get("rope_type", rs.get("type", "default"))

    w = gguf.GGUFWriter(args.out, arch)
    w.add_name(args.name or d.resolve().name)
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float(rope_theta))
    w.add_layer_norm_rms_eps(hp.get("rms_norm_eps", 1e-6))
    w.add_file_type(ftype)
    if arch == "llama":
        w.add_vocab_size(hp["vocab_size"])
        w.add_rope_dimension_count(head_dim)
    if "head_dim" in hp:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if rope_type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rs["factor"])
    elif rope_type not in ("default", "llama3"):
        die(f"{d}/config.json: rope_scaling type {rope_type!r} not supported")
    write_vocab(w, d, hp["vocab_size"], args.pre)

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }

    def gguf_name(hf: str) -> str | None:
        if hf in names:
            return names[hf]
        parts = hf.split(".")
        if len(parts) >= 5 and parts[0] == "model" and parts[1] == "layers":
            stem, suffix = ".".join(parts[3:-1]), parts[-1]
            if stem in per_layer:
                return f"blk.{parts[2]}.{per_layer[stem]}.{suffix}"
        return None

    counts: dict[str, int] = {}
    tied = hp.get("tie_word_embeddings", False)

    def add(name: str, data: np.ndarray) -> None:
        if data.ndim <= 1 or qtype is None:
            w.add_tensor(name, data.astype(np.float32))
            kind = "F32"
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, data.astype(np.float16))
            kind = "F16"
        else:
            try:
                w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
                kind = qtype.name
            except gguf.QuantError:
                w.add_tensor(name, data.astype(np.float16))
                kind = "F16"
        counts[kind] = counts.get(kind, 0) + 1

    if rope_type == "llama3":
        add("rope_freqs.weight", llama3_rope_factors(hp, rs, head_dim))
    for hf, data in open_tensors(d):
        if hf.endswith("rotary_emb.inv_freq"):
            continue
        if hf == "lm_head.weight" and tied:
            continue
        name = gguf_name(hf)
        if name is None:
            die(f"{d}: tensor {hf!r} has no GGUF name")
        if arch == "llama" and ".attn_q." in name:
            data = permute(data, n_head)
        elif arch == "llama" and ".attn_k." in name:
            data = permute(data, n_kv)
        add(name, data)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    total = sum(counts.values())
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): arch {arch}, {total} tensors ({summary})")


if __name__ == "__main__":
    main()
