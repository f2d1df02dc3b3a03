#!/usr/bin/env python3
"""Reference embeddings of a BERT-style model for `engine/tests/bert.rs`'s ignored
`real_model_matches_reference` test (see bench/results/embeddings.md).

    python bench/bert_reference.py st MODEL_DIR OUT.json
        sentence-transformers' token ids and embeddings of TEXTS (CPU, one thread)
    python bench/bert_reference.py llamacpp MODEL.gguf OUT.json
        llama.cpp's (llama-cpp-python) ids and pooled embeddings of the same TEXTS

Output: {"inputs": [{"text", "ids", "embedding"}]} (+ "pooling_type" for llama.cpp).
"""

import json
import sys

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A secure gateway serves OpenAI-compatible embeddings.",
    "Café naïve résumé: déjà vu, Zürich & Ørsted?!",
    "How do I reset my password if I lost access to my e-mail account?",
    "Transformers encode sentences into dense vectors for semantic search; 日本語 too.",
]


def st(model: str, out: str) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    m = SentenceTransformer(model, device="cpu")
    emb = m.encode(TEXTS, convert_to_numpy=True, batch_size=len(TEXTS))
    ids = [m.tokenizer(t, truncation=True, max_length=m.max_seq_length)["input_ids"] for t in TEXTS]
    inputs = [{"text": t, "ids": i, "embedding": [float(x) for x in e]} for t, i, e in zip(TEXTS, ids, emb)]
    json.dump({"inputs": inputs}, open(out, "w"))


def llamacpp(model: str, out: str) -> None:
    from llama_cpp import Llama

    llm = Llama(model_path=model, embedding=True, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=1,
                verbose=False)
    inputs = [{"text": t, "ids": llm.tokenize(t.encode(), add_bos=True, special=False),
               "embedding": [float(x) for x in llm.embed(t, normalize=False)]} for t in TEXTS]
    json.dump({"pooling_type": int(llm.pooling_type()), "inputs": inputs}, open(out, "w"))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("st", "llamacpp"):
        sys.exit(__doc__)
    {"st": st, "llamacpp": llamacpp}[sys.argv[1]](sys.argv[2], sys.argv[3])
