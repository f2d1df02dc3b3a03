#!/usr/bin/env python3
"""Summarize a PDF and answer questions about it through Airlock.

A plain OpenAI client: the official `openai` SDK over mutual TLS (an httpx client holding
the client certificate and the gateway's CA) with an API key, `pypdf` for the text. It

1. extracts the PDF's text, page by page;
2. picks a chunk size from the model's context length (`context_length` from
   `GET /v1/models/{id}`, as Airlock reports it, else `--context-tokens`), splits the text into chunks and summarizes each one;
3. merges the chunk summaries into one summary;
4. answers each `--question` from that summary and the chunk that shares the most words
   with the question, streaming the answer.

Against `airlockd dev` (see README.md):

    python examples/pdf_qa/pdf_qa.py --dev-dir airlock-dev --pdf examples/pdf_qa/sample.pdf \\
        --question "Who may approve moving a model into the enclave?"

Exit status: 0 on success, 1 when a request fails or a completion comes back empty,
2 on bad arguments or unreadable files.
"""

from __future__ import annotations

import argparse
import re
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    import httpx
    import openai
    import pypdf
except ImportError as err:  # pragma: no cover - environment problem
    sys.exit(f"error: {err}; install the pinned packages: pip install -r examples/pdf_qa/requirements.txt")

# Tokens kept free in every request for the instructions, the chat template and the reply.
PROMPT_OVERHEAD_TOKENS = 160
SUMMARY_TOKENS = 96
ANSWER_TOKENS = 64


@dataclass
class Settings:
    model: str
    context_tokens: int
    context_source: str
    chunk_chars: int
    chars_per_token: float


class EmptyCompletion(RuntimeError):
    """The model returned no text: report it instead of printing a blank answer."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pdf", required=True, type=Path, help="the PDF to read")
    p.add_argument("--question", action="append", default=[], help="a question (repeatable)")
    p.add_argument(
        "--dev-dir",
        type=Path,
        help="the directory `airlockd dev` wrote: certs/ca.pem, certs/client-demo.{pem,key} "
        "and demo-api-key are taken from it",
    )
    p.add_argument("--base-url", default="https://localhost:8443/v1", help="the gateway's /v1 URL")
    p.add_argument("--cacert", type=Path, help="CA bundle the gateway's certificate chains to")
    p.add_argument("--cert", type=Path, help="client certificate (PEM)")
    p.add_argument("--key", type=Path, help="client private key (PEM)")
    p.add_argument("--api-key-file", type=Path, help="file holding the tenant's API key")
    p.add_argument("--model", help="model id (default: the first one /v1/models lists)")
    p.add_argument(
        "--context-tokens",
        type=int,
        help="the model's context length, when the gateway does not report it",
    )
    p.add_argument(
        "--chars-per-token",
        type=float,
        default=2.0,
        help="conservative characters-per-token estimate used to size chunks (default 2.0)",
    )
    p.add_argument(
        "--max-chunk-chars",
        type=int,
        default=1500,
        help="upper bound on a chunk, even when the context would allow more: smaller chunks "
        "keep each summary focused and each request short (default 1500)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    args = p.parse_args(argv)
    if args.dev_dir:
        certs = args.dev_dir / "certs"
        args.cacert = args.cacert or certs / "ca.pem"
        args.cert = args.cert or certs / "client-demo.pem"
        args.key = args.key or certs / "client-demo.key"
        args.api_key_file = args.api_key_file or args.dev_dir / "demo-api-key"
    missing = [n for n in ("cacert", "cert", "key", "api_key_file") if getattr(args, n) is None]
    if missing:
        p.error("give --dev-dir, or all of --cacert, --cert, --key, --api-key-file "
                f"(missing: {', '.join('--' + m.replace('_', '-') for m in missing)})")
    for name in ("cacert", "cert", "key", "api_key_file"):
        path = getattr(args, name)
        if not path.is_file():
            p.error(f"--{name.replace('_', '-')}: {path}: no such file")
    if not args.question:
        args.question = ["What is this document about?"]
    return args


def make_client(args: argparse.Namespace) -> tuple[openai.OpenAI, httpx.Client]:
    # httpx 0.28 takes the client certificate through an SSLContext passed as `verify`.
    tls = ssl.create_default_context(cafile=str(args.cacert))
    tls.load_cert_chain(str(args.cert), str(args.key))
    http = httpx.Client(verify=tls, timeout=args.timeout)
    api_key = args.api_key_file.read_text(encoding="utf-8").strip()
    client = openai.OpenAI(base_url=args.base_url, api_key=api_key, http_client=http)
    return client, http


def extract_pages(pdf: Path) -> list[str]:
    reader = pypdf.PdfReader(str(pdf))
    return [(page.extract_text() or "").strip() for page in reader.pages]


def discover(args: argparse.Namespace, client: openai.OpenAI, http: httpx.Client) -> Settings:
    models = client.models.list().data
    if not models:
        raise SystemExit("error: the gateway serves no model")
    model = args.model or models[0].id
    context, source = args.context_tokens, "--context-tokens"
    if context is None:
        # Airlock (and some other gateways) report the context length on the model object.
        entry = client.models.retrieve(model)
        context = (entry.model_extra or {}).get("context_length")
        source = "/v1/models"
    if not isinstance(context, int) or context <= PROMPT_OVERHEAD_TOKENS + SUMMARY_TOKENS:
        raise SystemExit(
            f"error: no usable context length for {model} (got {context!r} from {source}); "
            "pass --context-tokens"
        )
    budget = int((context - PROMPT_OVERHEAD_TOKENS - SUMMARY_TOKENS) * args.chars_per_token)
    return Settings(model, context, source, min(budget, args.max_chunk_chars), args.chars_per_token)


def chunk(text: str, size: int) -> list[str]:
    """Splits at paragraph, then sentence, then word boundaries into pieces of ≤ size chars."""
    pieces = re.split(r"(?<=[.!?])\s+|\n{2,}", text)
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        piece = " ".join(piece.split())
        while len(piece) > size:  # a sentence longer than a chunk: cut at a space
            cut = piece.rfind(" ", 0, size) if " " in piece[:size] else size
            chunks.append(piece[:cut])
            piece = piece[cut:].strip()
        if current and len(current) + 1 + len(piece) > size:
            chunks.append(current)
            current = ""
        current = f"{current} {piece}".strip()
    if current:
        chunks.append(current)
    return chunks


def complete(client: openai.OpenAI, s: Settings, prompt: str, max_tokens: int) -> str:
    reply = client.chat.completions.create(
        model=s.model,
        messages=[
            {"role": "system", "content": "You are a careful assistant. Answer only from the given text."},
            {"role": "user", "content": prompt},
        ],
        max_tokens=max_tokens,
        temperature=0,
    )
    text = (reply.choices[0].message.content or "").strip()
    if not text:
        raise EmptyCompletion(f"empty completion (finish_reason {reply.choices[0].finish_reason})")
    return text


def summarize(client: openai.OpenAI, s: Settings, text: str, depth: int = 0) -> list[str]:
    """One summary per chunk; a chunk the model cannot take is halved and retried."""
    try:
        return [complete(client, s, f"Summarize this part of a document in two sentences:\n\n{text}", SUMMARY_TOKENS)]
    except openai.BadRequestError as err:
        if getattr(err, "code", None) != "context_length_exceeded" or depth >= 3:
            raise
        print(f"  (chunk of {len(text)} characters is over the context: splitting it)")
        half = len(text) // 2
        cut = text.rfind(" ", 0, half) if " " in text[:half] else half
        return summarize(client, s, text[:cut], depth + 1) + summarize(client, s, text[cut:], depth + 1)


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]{4,}", text.lower())}


def answer(client: openai.OpenAI, s: Settings, summary: str, chunks: list[str], question: str) -> str:
    best = max(chunks, key=lambda c: len(words(c) & words(question)))
    # The excerpt gives way when summary + excerpt + question would not fit the context.
    room = int((s.context_tokens - PROMPT_OVERHEAD_TOKENS - ANSWER_TOKENS) * s.chars_per_token)
    best = best[: max(0, room - len(summary) - len(question))]
    prompt = f"Summary of the document:\n{summary}\n\nExcerpt:\n{best}\n\nQuestion: {question}"
    stream = client.chat.completions.create(
        model=s.model,
        messages=[
            {"role": "system", "content": "Answer the question from the summary and the excerpt."},
            {"role": "user", "content": prompt},
        ],
        max_tokens=ANSWER_TOKENS,
        temperature=0,
        stream=True,
    )
    parts = []
    print("answer: ", end="", flush=True)
    for event in stream:
        if event.choices and event.choices[0].delta.content:
            parts.append(event.choices[0].delta.content)
            print(event.choices[0].delta.content, end="", flush=True)
    print()
    text = "".join(parts).strip()
    if not text:
        raise EmptyCompletion("empty streamed answer")
    return text


def one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        pages = extract_pages(args.pdf)
    except (OSError, pypdf.errors.PdfReadError) as err:
        print(f"error: {args.pdf}: {err}", file=sys.stderr)
        return 2
    text = "\n\n".join(pages)
    print(f"pdf: {args.pdf}")
    print(f"pages: {len(pages)}")
    print(f"characters: {len(text)}")
    print(f"first words: {' '.join(text.split()[:4])}")
    if not text.strip():
        print("error: no text in the PDF (scanned images need OCR first)", file=sys.stderr)
        return 2

    try:
        client, http = make_client(args)
    except (OSError, ssl.SSLError) as err:
        print(f"error: certificates or API key: {err}", file=sys.stderr)
        return 2
    calls = 0
    try:
        s = discover(args, client, http)
        print(f"model: {s.model} (context {s.context_tokens} tokens, from {s.context_source})")
        chunks = chunk(text, s.chunk_chars)
        print(f"chunks: {len(chunks)} (at most {s.chunk_chars} characters each)")
        summaries = []
        for i, part in enumerate(chunks, 1):
            got = summarize(client, s, part)
            calls += len(got)
            summaries.extend(got)
            print(f"summary {i}/{len(chunks)}: {one_line(' '.join(got))}")
        print(f"chunks summarized: {len(chunks)}")
        summary = summaries[0]
        if len(summaries) > 1:
            merged = "\n".join(f"- {x}" for x in summaries)
            summary = complete(client, s, f"Combine these partial summaries into one short summary:\n\n{merged}", SUMMARY_TOKENS)
            calls += 1
        print(f"document summary: {one_line(summary)}")
        for question in args.question:
            print(f"question: {question}")
            answer(client, s, summary, chunks, question)
            calls += 1
        print(f"answers: {len(args.question)}")
        print(f"completions: {calls}")
    except openai.APIStatusError as err:
        body = err.body if isinstance(err.body, dict) else {}
        detail = body.get("message") or err.message
        print(f"error: the gateway answered {err.status_code} ({body.get('code')}): {detail}", file=sys.stderr)
        return 1
    except openai.APIConnectionError as err:
        print(f"error: cannot reach {args.base_url} over mutual TLS: {err.__cause__ or err}", file=sys.stderr)
        return 1
    except EmptyCompletion as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        http.close()
    print(
        "note: airlockd dev serves a model with random weights: the words above are gibberish, "
        "the flow is real."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
