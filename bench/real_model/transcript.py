#!/usr/bin/env python3
"""Ask a real model a question through `airlockd serve` over mutual TLS with the OpenAI SDK.

`airlockd dev` prepares a dev PKI (tenant `demo`), audit keys, an API key and a config; this
script then points the config's model at the GGUF file (named as a file, with its
`FILE.manifest.json` written by `airlockd model manifest`), starts `airlockd serve`, sends the
question with the official OpenAI Python SDK (client certificate + API key, greedy) and prints
the transcript. Needs tests/sdk/requirements.txt (openai, httpx). See README.md.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", help="the model file")
    ap.add_argument("--name", default="smollm2", help="the model name to serve it as")
    ap.add_argument("--question", action="append", help="repeatable (default: the capital of France)")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--dir", default="/tmp/airlock-real-model-serve", help="PKI, config, audit log")
    ap.add_argument("--airlockd", default=str(REPO / "target/debug/airlockd"))
    args = ap.parse_args()
    questions = args.question or ["What is the capital of France?"]
    import httpx
    import openai

    binary, d = args.airlockd, Path(args.dir)
    shutil.rmtree(d, ignore_errors=True)
    port = free_port()
    # `airlockd dev` writes everything, then serves: stop it once it listens.
    dev = subprocess.Popen([binary, "dev", "--dir", str(d), "--port", str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in dev.stdout:
        if "listening on" in line or "Press Ctrl-C" in line:
            break
    dev.terminate()
    dev.wait()
    gguf = Path(args.gguf).resolve()
    subprocess.run([binary, "model", "manifest", str(gguf)], check=True)
    config = d / "airlockd.toml"
    text = config.read_text()
    text = re.sub(r'\[\[models\]\]\nname = "[^"]*"\npath = "[^"]*"',
                  f'[[models]]\nname = "{args.name}"\npath = "{gguf}"', text)
    config.write_text(text)
    serve = subprocess.Popen([binary, "serve", "--config", str(config)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        for line in serve.stdout:
            if "listening on" in line:
                break
            if time.time() > deadline:
                sys.exit("airlockd did not start")
        pki = d / "certs"
        tls = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        tls.load_cert_chain(str(pki / "client-demo.pem"), str(pki / "client-demo.key"))
        key = (d / "demo-api-key").read_text().strip()
        client = openai.OpenAI(base_url=f"https://localhost:{port}/v1", api_key=key,
                               http_client=httpx.Client(verify=tls))
        print(f"$ airlockd serve --config {config}   # {args.name} = {gguf.name}, mutual TLS, audit on")
        for q in questions:
            reply = client.chat.completions.create(
                model=args.name, messages=[{"role": "user", "content": q}],
                max_tokens=args.max_tokens, temperature=0)
            print(f"\nuser      > {q}")
            print(f"assistant > {reply.choices[0].message.content}")
            print(f"            (finish_reason={reply.choices[0].finish_reason}, "
                  f"usage={reply.usage.prompt_tokens}+{reply.usage.completion_tokens} tokens)")
    finally:
        serve.terminate()
        serve.wait()


if __name__ == "__main__":
    main()
