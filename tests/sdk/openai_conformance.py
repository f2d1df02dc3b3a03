#!/usr/bin/env python3
"""OpenAI SDK conformance check for a running airlockd.

Drives the gateway with the official, unmodified `openai` Python SDK over mutual TLS and
exits non-zero on any deviation from the OpenAI API shapes and behaviours that clients
rely on. One line is printed per check, then a final line `N passed, M failed`.

    python tests/sdk/openai_conformance.py \
        --base-url https://127.0.0.1:8443/v1 \
        --cert DIR/certs/client-demo.pem --key DIR/certs/client-demo.key \
        --cacert DIR/certs/ca.pem --model airlock-tiny-random

Exit status: 0 all checks passed, 1 at least one failed, 2 bad arguments or setup.
See tests/sdk/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

try:
    import httpx
    import openai
    from openai.types import Completion, Model
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
except ImportError as err:  # pragma: no cover - environment problem, not a deviation
    sys.exit(f"error: {err}; install the pinned SDK: pip install -r tests/sdk/requirements.txt")

PROMPT_MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
LEGACY_PROMPT = "Once upon a time"


class Deviation(AssertionError):
    """The gateway did something an OpenAI client would not expect."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Deviation(message)


def strict(model_cls: type, obj: Any) -> Any:
    """Validate an SDK object (or raw dict) against the SDK's pydantic type.

    The SDK builds response objects leniently (no validation), so a wrong type or a
    missing required field would otherwise go unnoticed until a user touches it."""
    data = obj if isinstance(obj, dict) else obj.to_dict(mode="json")
    try:
        return model_cls.model_validate(data)
    except Exception as err:  # pydantic.ValidationError
        raise Deviation(f"response does not validate as {model_cls.__name__}: {err}") from None


def short(text: Any, limit: int = 60) -> str:
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------- context


@dataclass
class Ctx:
    args: argparse.Namespace
    http: httpx.Client  # mutual TLS, used by the SDK and for raw requests
    client: openai.OpenAI

    @property
    def model(self) -> str:
        return self.args.model

    def url(self, path: str) -> str:
        return self.args.base_url.rstrip("/") + path

    def raw_post(self, path: str, body: bytes | dict, timeout: float | None = None) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.http.post(
            self.url(path),
            content=content,
            headers={"content-type": "application/json", "authorization": f"Bearer {self.args.api_key}"},
            timeout=timeout or self.args.timeout,
        )

    def chat(self, **kw: Any) -> ChatCompletion:
        kw.setdefault("model", self.model)
        kw.setdefault("messages", PROMPT_MESSAGES)
        return self.client.chat.completions.create(**kw)


def tls_context(cacert: str, cert: str | None, key: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cacert)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def make_http(args: argparse.Namespace, with_client_cert: bool = True) -> httpx.Client:
    # Equivalent to httpx.Client(cert=(cert, key), verify=cacert), without httpx 0.28's
    # deprecation warning for those two arguments.
    ctx = tls_context(args.cacert, args.cert if with_client_cert else None, args.key if with_client_cert else None)
    return httpx.Client(verify=ctx, timeout=args.timeout)


def make_sdk(args: argparse.Namespace, http: httpx.Client) -> openai.OpenAI:
    # max_retries=0: a retried 5xx or reset would hide exactly the deviations we look for.
    return openai.OpenAI(base_url=args.base_url, api_key=args.api_key, http_client=http, max_retries=0)


# ---------------------------------------------------------------------------- checks

CHECKS: list[tuple[str, Callable[[Ctx], str | None]]] = []


def check(name: str) -> Callable:
    def register(fn: Callable[[Ctx], str | None]) -> Callable[[Ctx], str | None]:
        CHECKS.append((name, fn))
        return fn

    return register


# 1 --------------------------------------------------------------------------


@check("models.list")
def models_list(ctx: Ctx) -> str:
    page = ctx.client.models.list()
    models = list(page)
    for m in models:
        strict(Model, m)
        expect(m.object == "model", f"model {m.id!r}: object is {m.object!r}, want 'model'")
    ids = [m.id for m in models]
    expect(ctx.model in ids, f"model {ctx.model!r} not in models.list(): {ids}")
    return f"{len(ids)} model(s): {', '.join(ids)}"


@check("models.retrieve")
def models_retrieve(ctx: Ctx) -> str:
    m = strict(Model, ctx.client.models.retrieve(ctx.model))
    expect(m.id == ctx.model, f"retrieve({ctx.model!r}) returned id {m.id!r}")
    expect(m.object == "model", f"object is {m.object!r}, want 'model'")
    return f"owned_by={m.owned_by!r}"


# 2 --------------------------------------------------------------------------


def check_chat_completion(r: ChatCompletion, *, max_tokens: int | None = None) -> ChatCompletion:
    r = strict(ChatCompletion, r)
    expect(r.id.startswith("chatcmpl-"), f"id {r.id!r} does not start with 'chatcmpl-'")
    expect(r.object == "chat.completion", f"object is {r.object!r}, want 'chat.completion'")
    expect(len(r.choices) == 1, f"want exactly 1 choice, got {len(r.choices)}")
    c = r.choices[0]
    expect(c.index == 0, f"choices[0].index is {c.index}")
    expect(c.message.role == "assistant", f"message.role is {c.message.role!r}, want 'assistant'")
    expect(isinstance(c.message.content, str), f"message.content is {type(c.message.content).__name__}, want str")
    expect(c.finish_reason in ("stop", "length"), f"finish_reason is {c.finish_reason!r}, want 'stop' or 'length'")
    u = r.usage
    expect(u is not None, "usage is missing")
    expect(u.prompt_tokens > 0, f"usage.prompt_tokens is {u.prompt_tokens}, want > 0")
    expect(u.completion_tokens >= 0, f"usage.completion_tokens is {u.completion_tokens}")
    expect(
        u.total_tokens == u.prompt_tokens + u.completion_tokens,
        f"usage.total_tokens {u.total_tokens} != prompt {u.prompt_tokens} + completion {u.completion_tokens}",
    )
    if max_tokens is not None:
        expect(u.completion_tokens <= max_tokens, f"completion_tokens {u.completion_tokens} > limit {max_tokens}")
        if c.finish_reason == "stop":
            pass  # EOS before the limit
        elif u.completion_tokens < max_tokens:
            raise Deviation(f"finish_reason 'length' but only {u.completion_tokens} of {max_tokens} tokens")
    return r


@check("chat non-streaming (max_tokens=8, temperature=0)")
def chat_basic(ctx: Ctx) -> str:
    raw = ctx.client.chat.completions.with_raw_response.create(
        model=ctx.model, messages=PROMPT_MESSAGES, max_tokens=8, temperature=0
    )
    ctype = raw.headers.get("content-type", "")
    expect(ctype.startswith("application/json"), f"content-type is {ctype!r}, want application/json")
    r = check_chat_completion(raw.parse(), max_tokens=8)
    u = r.usage
    return (
        f"finish={r.choices[0].finish_reason} usage={u.prompt_tokens}+{u.completion_tokens}={u.total_tokens} "
        f"content={short(r.choices[0].message.content)}"
    )


# 3 --------------------------------------------------------------------------


@check("chat seed=42 temperature=0.8 is reproducible")
def chat_seed(ctx: Ctx) -> str:
    kw = dict(max_tokens=16, temperature=0.8, seed=42)
    a = check_chat_completion(ctx.chat(**kw), max_tokens=16)
    b = check_chat_completion(ctx.chat(**kw), max_tokens=16)
    ca, cb = a.choices[0].message.content, b.choices[0].message.content
    expect(ca == cb, f"same seed, different output: {short(ca)} vs {short(cb)}")
    expect(a.id != b.id, f"two completions share id {a.id!r}")
    return f"content={short(ca)}"


# 4 --------------------------------------------------------------------------


@check("chat streaming (include_usage) matches non-streaming")
def chat_stream(ctx: Ctx) -> str:
    kw = dict(max_tokens=16, temperature=0)
    ref = check_chat_completion(ctx.chat(**kw), max_tokens=16)

    stream = ctx.chat(**kw, stream=True, stream_options={"include_usage": True})
    chunks = [strict(ChatCompletionChunk, ch) for ch in stream]
    expect(len(chunks) >= 2, f"only {len(chunks)} chunk(s)")
    ids = {ch.id for ch in chunks}
    expect(len(ids) == 1, f"chunks carry {len(ids)} different ids: {sorted(ids)}")
    cid = ids.pop()
    expect(cid.startswith("chatcmpl-"), f"chunk id {cid!r} does not start with 'chatcmpl-'")
    for i, ch in enumerate(chunks):
        expect(ch.object == "chat.completion.chunk", f"chunk {i}: object is {ch.object!r}")

    *body, last = chunks
    expect(last.choices == [], f"last chunk has {len(last.choices)} choice(s); want [] (the usage chunk)")
    expect(last.usage is not None, "last chunk has no usage although include_usage was set")
    for i, ch in enumerate(body):
        expect(ch.usage is None, f"chunk {i} (not last) carries usage")
        expect(len(ch.choices) == 1, f"chunk {i} has {len(ch.choices)} choices, want 1")
        expect(ch.choices[0].index == 0, f"chunk {i}: choices[0].index is {ch.choices[0].index}")

    first = body[0].choices[0].delta
    expect(first.role == "assistant", f"first delta role is {first.role!r}, want 'assistant'")
    finished = [(i, ch.choices[0].finish_reason) for i, ch in enumerate(body) if ch.choices[0].finish_reason]
    expect(len(finished) == 1, f"want exactly one chunk with finish_reason, got {finished}")
    expect(finished[0][0] == len(body) - 1, f"finish_reason on chunk {finished[0][0]}, not the last choice chunk")
    finish = finished[0][1]
    expect(finish in ("stop", "length"), f"finish_reason is {finish!r}")

    text = "".join(ch.choices[0].delta.content or "" for ch in body)
    want = ref.choices[0].message.content
    expect(text == want, f"streamed content {short(text)} != non-streaming {short(want)}")
    expect(finish == ref.choices[0].finish_reason, f"finish_reason {finish!r} != non-streaming {ref.choices[0].finish_reason!r}")
    u, ru = last.usage, ref.usage
    expect(
        u.total_tokens == u.prompt_tokens + u.completion_tokens,
        f"stream usage.total_tokens {u.total_tokens} != {u.prompt_tokens} + {u.completion_tokens}",
    )
    expect(
        (u.prompt_tokens, u.completion_tokens) == (ru.prompt_tokens, ru.completion_tokens),
        f"stream usage {u.prompt_tokens}+{u.completion_tokens} != non-streaming {ru.prompt_tokens}+{ru.completion_tokens}",
    )
    return f"{len(chunks)} chunks, finish={finish}, content={short(text)}"


# 5 --------------------------------------------------------------------------


@check("chat max_completion_tokens=3")
def chat_max_completion_tokens(ctx: Ctx) -> str:
    r = check_chat_completion(ctx.chat(max_completion_tokens=3, temperature=0), max_tokens=3)
    return f"finish={r.choices[0].finish_reason} completion_tokens={r.usage.completion_tokens}"


# 6 --------------------------------------------------------------------------


def check_completion(r: Completion, max_tokens: int) -> Completion:
    r = strict(Completion, r)
    expect(r.id.startswith("cmpl-"), f"id {r.id!r} does not start with 'cmpl-'")
    expect(r.object == "text_completion", f"object is {r.object!r}, want 'text_completion'")
    expect(len(r.choices) == 1, f"want exactly 1 choice, got {len(r.choices)}")
    c = r.choices[0]
    expect(isinstance(c.text, str), f"choices[0].text is {type(c.text).__name__}")
    expect(c.finish_reason in ("stop", "length"), f"finish_reason is {c.finish_reason!r}")
    u = r.usage
    expect(u is not None, "usage is missing")
    expect(u.total_tokens == u.prompt_tokens + u.completion_tokens, f"usage totals inconsistent: {u}")
    expect(u.completion_tokens <= max_tokens, f"completion_tokens {u.completion_tokens} > max_tokens {max_tokens}")
    return r


@check("legacy completions non-streaming")
def legacy_completion(ctx: Ctx) -> str:
    r = ctx.client.completions.create(model=ctx.model, prompt=LEGACY_PROMPT, max_tokens=8, temperature=0)
    r = check_completion(r, 8)
    return f"finish={r.choices[0].finish_reason} text={short(r.choices[0].text)}"


def strict_completion_chunk(ch: Completion) -> Completion:
    """Validate a legacy streaming chunk. The SDK reuses `Completion` for chunks, whose
    `finish_reason` is typed non-null, yet OpenAI sends null until the last chunk; allow that."""
    data = ch.to_dict(mode="json")
    for c in data.get("choices") or []:
        if isinstance(c, dict) and c.get("finish_reason", "x") is None:
            c["finish_reason"] = "stop"  # placeholder for validation only
    strict(Completion, data)
    return ch


@check("legacy completions streaming matches non-streaming")
def legacy_completion_stream(ctx: Ctx) -> str:
    kw = dict(model=ctx.model, prompt=LEGACY_PROMPT, max_tokens=8, temperature=0)
    ref = check_completion(ctx.client.completions.create(**kw), 8)
    chunks = [strict_completion_chunk(ch) for ch in ctx.client.completions.create(**kw, stream=True)]
    expect(chunks, "stream produced no chunks")
    for i, ch in enumerate(chunks):
        expect(ch.id.startswith("cmpl-"), f"chunk {i}: id {ch.id!r} does not start with 'cmpl-'")
        expect(ch.object == "text_completion", f"chunk {i}: object is {ch.object!r}")
    with_choices = [ch for ch in chunks if ch.choices]
    text = "".join(ch.choices[0].text for ch in with_choices)
    finished = [ch.choices[0].finish_reason for ch in with_choices if ch.choices[0].finish_reason]
    expect(len(finished) == 1, f"want exactly one chunk with finish_reason, got {finished}")
    want = ref.choices[0].text
    expect(text == want, f"streamed text {short(text)} != non-streaming {short(want)}")
    return f"{len(chunks)} chunks, finish={finished[0]}"


# 6b -------------------------------------------------------------------------


@check("chat logprobs (top_logprobs=2), plain and streamed")
def chat_logprobs(ctx: Ctx) -> str:
    kw = dict(max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    r = check_chat_completion(ctx.chat(**kw), max_tokens=8)
    lp = r.choices[0].logprobs
    expect(lp is not None and lp.content, f"no logprobs.content: {lp!r}")
    for e in lp.content:
        expect(e.logprob <= 0, f"logprob {e.logprob} > 0")
        expect(e.bytes == list(e.token.encode()), f"bytes {e.bytes} are not the token's {e.token!r}")
        expect(len(e.top_logprobs) == 2, f"{len(e.top_logprobs)} top_logprobs, want 2")
        expect(e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob, "top_logprobs not sorted")
    streamed = []
    for ch in ctx.chat(**kw, stream=True):
        ch = strict(ChatCompletionChunk, ch)
        if ch.choices and ch.choices[0].logprobs and ch.choices[0].logprobs.content:
            streamed.extend(ch.choices[0].logprobs.content)
    expect(
        [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in lp.content],
        "streamed logprobs differ from the non-streaming ones",
    )
    return f"{len(lp.content)} tokens, first={lp.content[0].token!r} {lp.content[0].logprob:.3f}"


# 6c -------------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
# What the model is asked; the test engine echoes it, so there it comes back as a call.
TOOL_PROMPT = [{"role": "user", "content": '<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>'}]


@check("tools: calls plain and streamed, or refused by name without the tools capability")
def chat_tools(ctx: Ctx) -> str:
    err = sdk_error(
        lambda: ctx.chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}),
        openai.BadRequestError,
        400,
    )
    expect(err.param == "tool_choice.function.name", f"unknown named tool: error.param is {err.param!r}")
    caps = (ctx.client.models.retrieve(ctx.model).model_extra or {}).get("capabilities", [])
    if "tools" not in caps:
        for choice in ("auto", "required"):
            err = sdk_error(lambda: ctx.chat(tools=TOOLS, tool_choice=choice, max_tokens=1), openai.BadRequestError, 400)
            expect(err.param == "tools", f"tool_choice={choice}: error.param is {err.param!r}, want 'tools'")
            expect(ctx.model in err.message, f"the refusal does not name the model: {err.message!r}")
        return f"no tools capability: refused, param={err.param!r}"
    kw = dict(messages=TOOL_PROMPT, tools=TOOLS, max_tokens=64, temperature=0)
    # Not `check_chat_completion`: with calls, `content` is null, as OpenAI sends it.
    r = strict(ChatCompletion, ctx.chat(**kw))
    choice = r.choices[0]
    if choice.finish_reason != "tool_calls":
        return f"the model answered without a call ({short(choice.message.content)})"
    calls = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or []]
    expect(calls and all(i.startswith("call_") for i, _, _ in calls), f"calls: {calls}")
    streamed: dict[int, dict] = {}
    finish = None
    for ch in ctx.chat(**kw, stream=True):
        ch = strict(ChatCompletionChunk, ch)
        for d in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            entry = streamed.setdefault(d.index, {"name": None, "arguments": ""})
            if d.function and d.function.name:
                entry["name"] = d.function.name
            if d.function and d.function.arguments:
                entry["arguments"] += d.function.arguments
        if ch.choices and ch.choices[0].finish_reason:
            finish = ch.choices[0].finish_reason
    expect(finish == "tool_calls", f"streamed finish_reason {finish!r}")
    got = [(e["name"], json.loads(e["arguments"])) for _, e in sorted(streamed.items())]
    expect(got == [(n, a) for _, n, a in calls], f"streamed calls {got} differ from {calls}")
    return f"{len(calls)} call(s): {calls[0][1]}({calls[0][2]})"


# Every value of this schema is short, so even the random-weight dev model finishes it.
STRUCTURED_PROMPT = [{"role": "user", "content": "Triage this ticket: the VPN is down for everyone."}]


def triage_model():
    from typing import Literal

    import pydantic

    class Triage(pydantic.BaseModel):
        priority: Literal["low", "medium", "high"]
        escalate: bool
        team: int = pydantic.Field(ge=1, le=5)

    return Triage


@check("structured outputs: chat.completions.parse(response_format=<pydantic model>), json_schema streamed, json_object")
def chat_structured(ctx: Ctx) -> str:
    caps = (ctx.client.models.retrieve(ctx.model).model_extra or {}).get("capabilities", [])
    if "structured_outputs" not in caps:
        err = sdk_error(
            lambda: ctx.chat(response_format={"type": "json_object"}, max_tokens=1), openai.BadRequestError, 400
        )
        expect(err.param == "response_format", f"error.param is {err.param!r}")
        return "no structured_outputs capability: refused by name"
    Triage = triage_model()
    completions = ctx.client.chat.completions
    parse = getattr(completions, "parse", None) or ctx.client.beta.chat.completions.parse
    r = parse(model=ctx.model, messages=STRUCTURED_PROMPT, response_format=Triage, max_tokens=60, temperature=1, seed=3)
    choice = r.choices[0]
    expect(choice.finish_reason == "stop", f"finish_reason {choice.finish_reason!r}: {short(choice.message.content)}")
    parsed = choice.message.parsed
    expect(isinstance(parsed, Triage), f"parsed is {parsed!r}")
    # The same schema by hand, streamed: the deltas join to a value the model validates.
    schema = {"name": "triage", "strict": True, "schema": Triage.model_json_schema()}
    schema["schema"]["additionalProperties"] = False
    text = ""
    for ch in ctx.chat(
        messages=STRUCTURED_PROMPT,
        response_format={"type": "json_schema", "json_schema": schema},
        max_tokens=60,
        temperature=0,
        stream=True,
    ):
        ch = strict(ChatCompletionChunk, ch)
        if ch.choices and ch.choices[0].delta.content:
            text += ch.choices[0].delta.content
    Triage.model_validate_json(text)
    # json_object: an object (when the model finishes within max_tokens).
    r = ctx.chat(messages=STRUCTURED_PROMPT, response_format={"type": "json_object"}, max_tokens=40)
    content = r.choices[0].message.content or ""
    expect(content.startswith("{"), f"json_object answer {short(content)}")
    if r.choices[0].finish_reason == "stop":
        expect(isinstance(json.loads(content), dict), f"json_object answer {short(content)}")
    # The Responses API's text.format, through responses.parse where the SDK has it.
    resp = ctx.client.responses.parse(
        model=ctx.model, input=STRUCTURED_PROMPT[0]["content"], text_format=Triage, max_output_tokens=60
    )
    expect(isinstance(resp.output_parsed, Triage), f"responses.parse output_parsed {resp.output_parsed!r}")
    return f"parsed {parsed!r}; streamed {short(text)}"


@check("responses.create plain and stream=True (text matches, events numbered)")
def responses_create(ctx: Ctx) -> str:
    from openai.types.responses import Response, ResponseStreamEvent  # noqa: F401

    kw = dict(model=ctx.model, input=PROMPT_MESSAGES[0]["content"], max_output_tokens=16, temperature=0)
    r = strict(Response, ctx.client.responses.create(**kw))
    expect(r.id.startswith("resp_"), f"id {r.id!r} does not start with 'resp_'")
    expect(r.status in ("completed", "incomplete"), f"status {r.status!r}")
    if r.status == "incomplete":
        expect(r.incomplete_details.reason == "max_output_tokens", f"incomplete_details {r.incomplete_details}")
    u = r.usage
    expect(u.total_tokens == u.input_tokens + u.output_tokens, f"usage {u}")
    text = r.output_text
    events = list(ctx.client.responses.create(**kw, stream=True))
    for i, e in enumerate(events):
        expect(e.sequence_number == i, f"event {i} ({e.type}) has sequence_number {e.sequence_number}")
    kinds = [e.type for e in events]
    expect(kinds[:2] == ["response.created", "response.in_progress"], f"opening events {kinds[:2]}")
    expect(kinds[-1] in ("response.completed", "response.incomplete"), f"last event {kinds[-1]}")
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = strict(Response, events[-1].response)
    expect(streamed == final.output_text, f"deltas {short(streamed)} != final {short(final.output_text)}")
    expect(streamed == text, f"streamed {short(streamed)} != non-streaming {short(text)}")
    err = sdk_error(
        lambda: ctx.client.responses.create(model=ctx.model, input="hi", previous_response_id="resp_x"),
        openai.BadRequestError,
        400,
    )
    expect(err.param == "previous_response_id", f"previous_response_id: error.param is {err.param!r}")
    return f"status={r.status} {len(events)} events, text={short(text)}"


@check("embeddings.create plain, base64 (decoded by the SDK) and dimensions")
def embeddings_create(ctx: Ctx) -> str:
    from openai.types import CreateEmbeddingResponse

    models = ctx.client.models.list().data
    served = [m.id for m in models if "embeddings" in (m.model_extra or {}).get("capabilities", [])]
    if not served:
        err = sdk_error(lambda: ctx.client.embeddings.create(model=ctx.model, input="hi"), openai.BadRequestError, 400)
        expect(err.param == "model", f"no embeddings model: error.param is {err.param!r}")
        return "no model has the embeddings capability: refused by name"
    model = served[0]
    inputs = ["The quick brown fox.", "An unrelated sentence about tea."]
    # `encoding_format="float"`: the numbers as JSON, as sent.
    plain = strict(CreateEmbeddingResponse, ctx.client.embeddings.create(model=model, input=inputs, encoding_format="float"))
    expect(plain.object == "list" and plain.model == model, f"response {plain.object!r} {plain.model!r}")
    expect([d.index for d in plain.data] == [0, 1], f"indices {[d.index for d in plain.data]}")
    u = plain.usage
    expect(u.prompt_tokens > 0 and u.total_tokens == u.prompt_tokens, f"usage {u}")
    vec = plain.data[0].embedding
    norm = sum(x * x for x in vec) ** 0.5
    expect(abs(norm - 1) < 1e-3, f"norm {norm}")
    # The SDK's default asks for base64 and decodes it: the same numbers (f32 exactly).
    b64 = strict(CreateEmbeddingResponse, ctx.client.embeddings.create(model=model, input=inputs))
    expect(
        all(abs(a - b) < 1e-6 for a, b in zip(b64.data[0].embedding, vec)) and len(b64.data[0].embedding) == len(vec),
        "base64 vector differs from the float one",
    )
    short_vec = ctx.client.embeddings.create(model=model, input=inputs[0], dimensions=8, encoding_format="float").data[0].embedding
    expect(len(short_vec) == 8, f"dimensions=8 gave {len(short_vec)}")
    expect(abs(sum(x * x for x in short_vec) ** 0.5 - 1) < 1e-3, "shortened vector not normalized")
    err = sdk_error(
        lambda: ctx.client.embeddings.create(model=model, input="hi", dimensions=len(vec) + 1),
        openai.BadRequestError,
        400,
    )
    expect(err.param == "dimensions", f"dimensions too large: error.param is {err.param!r}")
    return f"{model}: {len(vec)} dims, {u.prompt_tokens} tokens"


@check("legacy completions logprobs=2")
def legacy_logprobs(ctx: Ctx) -> str:
    r = ctx.client.completions.create(model=ctx.model, prompt=LEGACY_PROMPT, max_tokens=8, temperature=0, logprobs=2)
    r = check_completion(r, 8)
    lp = r.choices[0].logprobs
    expect(lp is not None and lp.tokens, f"no logprobs: {lp!r}")
    n = len(lp.tokens)
    for name in ("token_logprobs", "top_logprobs", "text_offset"):
        got = getattr(lp, name)
        expect(got is not None and len(got) == n, f"{name} has {got and len(got)} entries, want {n}")
    return f"{n} tokens"


# 7 --------------------------------------------------------------------------


def error_object(resp: httpx.Response, want_status: int) -> dict:
    body_text = resp.text[:300]
    expect(resp.status_code == want_status, f"HTTP {resp.status_code}, want {want_status}; body: {body_text}")
    ctype = resp.headers.get("content-type", "")
    expect(ctype.startswith("application/json"), f"error content-type is {ctype!r}, want application/json")
    try:
        body = resp.json()
    except ValueError:
        raise Deviation(f"error body is not JSON: {body_text!r}") from None
    expect(isinstance(body, dict) and isinstance(body.get("error"), dict), f"no 'error' object in {body_text}")
    err = body["error"]
    missing = [k for k in ("message", "type", "param", "code") if k not in err]
    expect(not missing, f"error object lacks {missing}: {err}")
    expect(isinstance(err["message"], str) and err["message"], f"error.message is {err['message']!r}")
    expect(isinstance(err["type"], str) and err["type"], f"error.type is {err['type']!r}")
    expect(err["param"] is None or isinstance(err["param"], str), f"error.param is {err['param']!r}")
    expect(err["code"] is None or isinstance(err["code"], str), f"error.code is {err['code']!r}")
    return err


def sdk_error(call: Callable[[], Any], cls: type, status: int) -> openai.APIStatusError:
    try:
        result = call()
    except cls as err:
        expect(err.status_code == status, f"{cls.__name__} with status {err.status_code}, want {status}")
        expect(isinstance(err.body, dict) and err.body.get("message"), f"error body lacks message: {err.body!r}")
        return err
    except openai.APIStatusError as err:
        raise Deviation(f"raised {type(err).__name__} (HTTP {err.status_code}: {err.message}), want {cls.__name__}") from None
    raise Deviation(f"no error; got {short(result, 120)}")


@check("unknown model -> NotFoundError")
def err_unknown_model(ctx: Ctx) -> str:
    name = "no-such-model-airlock-conformance"
    err = sdk_error(lambda: ctx.chat(model=name, max_tokens=1), openai.NotFoundError, 404)
    err2 = sdk_error(lambda: ctx.client.models.retrieve(name), openai.NotFoundError, 404)
    return f"type={err.type!r} code={err.code!r}; models.retrieve: code={err2.code!r}"


@check("n=3: three choices (seeded: choice i = solo seed+i), streamed by index; n=17 -> BadRequestError")
def chat_n(ctx: Ctx) -> str:
    kw = dict(max_tokens=8, temperature=0.9, seed=7)
    r = ctx.chat(n=3, **kw)
    expect(len(r.choices) == 3, f"{len(r.choices)} choices, want 3")
    expect([c.index for c in r.choices] == [0, 1, 2], f"indexes {[c.index for c in r.choices]}")
    texts = [c.message.content for c in r.choices]
    # Each choice samples as a solo request with seed + index would.
    for i, text in enumerate(texts):
        solo = ctx.chat(**{**kw, "seed": 7 + i}).choices[0].message.content
        expect(text == solo, f"choice {i} {short(text)} != solo seed {7 + i} {short(solo)}")
    solo_tokens = ctx.chat(**kw).usage
    expect(r.usage.prompt_tokens == solo_tokens.prompt_tokens, "prompt counted more than once")
    stream = ctx.chat(n=3, **kw, stream=True, stream_options={"include_usage": True})
    chunks = [strict(ChatCompletionChunk, ch) for ch in stream]
    streamed, finishes = ["", "", ""], [None, None, None]
    for ch in chunks:
        for c in ch.choices:
            streamed[c.index] += c.delta.content or ""
            if c.finish_reason:
                expect(finishes[c.index] is None, f"choice {c.index} finished twice")
                finishes[c.index] = c.finish_reason
    expect(streamed == texts, f"streamed {[short(t) for t in streamed]} != {[short(t) for t in texts]}")
    expect(finishes == [c.finish_reason for c in r.choices], f"stream finish reasons {finishes}")
    u = chunks[-1].usage
    expect(
        (u.prompt_tokens, u.completion_tokens) == (r.usage.prompt_tokens, r.usage.completion_tokens),
        f"stream usage {u} != {r.usage}",
    )
    err = sdk_error(lambda: ctx.chat(n=17, max_tokens=1), openai.BadRequestError, 400)
    expect(err.param in (None, "n"), f"error.param is {err.param!r}, want 'n' (or null)")
    return f"choices={[short(t, 20) for t in texts]} usage={r.usage.prompt_tokens}+{r.usage.completion_tokens}"


@check('temperature="hot" -> 400 with error.{message,type,param,code}')
def err_bad_temperature(ctx: Ctx) -> str:
    body = {"model": ctx.model, "messages": PROMPT_MESSAGES, "max_tokens": 1, "temperature": "hot"}
    err = error_object(ctx.raw_post("/chat/completions", body), 400)
    expect(err["param"] in (None, "temperature"), f"error.param is {err['param']!r}, want 'temperature' (or null)")
    # The same through the SDK (extra_body overrides the typed argument).
    sdk_error(lambda: ctx.chat(max_tokens=1, extra_body={"temperature": "hot"}), openai.BadRequestError, 400)
    return f"type={err['type']!r} param={err['param']!r} code={err['code']!r}"


@check("oversized body -> 413")
def err_oversized(ctx: Ctx) -> str:
    size = int(ctx.args.oversize_mb * 1024 * 1024)
    body = json.dumps({"model": ctx.model, "messages": [{"role": "user", "content": "a" * size}]}).encode()
    try:
        resp = ctx.raw_post("/chat/completions", body, timeout=max(ctx.args.timeout, 60))
    except httpx.TransportError as err:
        probe = probe_declared_length(ctx, len(body))
        raise Deviation(
            f"client never saw a response to a {len(body)}-byte body ({type(err).__name__}: {err}); the server "
            f"likely answered early and closed/reset the connection while the body was still being sent, so "
            f"clients lose the 413 (raw probe declaring Content-Length without sending it: {probe})"
        ) from None
    err = error_object(resp, 413)
    return f"{len(body)} bytes: type={err['type']!r} code={err['code']!r}"


def probe_declared_length(ctx: Ctx, length: int) -> str:
    """Send only headers declaring `length` body bytes and report the status line, if any."""
    u = urlsplit(ctx.url("/chat/completions"))
    tls = tls_context(ctx.args.cacert, ctx.args.cert, ctx.args.key)
    try:
        with socket.create_connection((u.hostname, u.port or 443), timeout=10) as raw:
            with tls.wrap_socket(raw, server_hostname=u.hostname) as s:
                s.sendall(
                    f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\ncontent-type: application/json\r\n"
                    f"content-length: {length}\r\n\r\n".encode()
                )
                head = s.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
                return repr(head) if head else "connection closed without a response"
    except OSError as err:
        return f"{type(err).__name__}: {err}"


# 8 --------------------------------------------------------------------------


@check("no client certificate -> TLS handshake fails")
def no_client_cert(ctx: Ctx) -> str:
    notes = []
    with make_http(ctx.args, with_client_cert=False) as bare:
        try:
            resp = bare.get(ctx.url("/models"), headers={"authorization": f"Bearer {ctx.args.api_key}"})
        except httpx.TransportError as err:
            # TLS 1.2 fails in the handshake (ConnectError); with TLS 1.3 the client finishes
            # its side first and may only see the server's alert on the first read.
            notes.append(f"httpx: {type(err).__name__}: {first_line(err)}")
        else:
            raise Deviation(f"server answered HTTP {resp.status_code} to a client without a certificate")
        sdk = make_sdk(ctx.args, bare)
        try:
            sdk.models.list()
        except openai.APIConnectionError as err:
            notes.append(f"SDK: {type(err).__name__} ({type(err.__cause__).__name__})")
        except openai.APIStatusError as err:
            raise Deviation(f"SDK without certificate got HTTP {err.status_code}, want a connection error") from None
        else:
            raise Deviation("SDK without a client certificate listed models")
    return "; ".join(notes)


def first_line(err: BaseException) -> str:
    text = str(err) or repr(err)
    return text.splitlines()[0][:120]


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="e.g. https://127.0.0.1:8443/v1")
    p.add_argument("--cert", required=True, help="client certificate (PEM)")
    p.add_argument("--key", required=True, help="client private key (PEM)")
    p.add_argument("--cacert", required=True, help="CA that signed the server certificate (PEM)")
    p.add_argument("--model", required=True, help="model name the gateway serves, e.g. airlock-tiny-random")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "unused"), help="bearer token (default: 'unused')")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout in seconds (default 120)")
    p.add_argument("--oversize-mb", type=float, default=20.0, help="body size for the 413 check (default 20 MB)")
    p.add_argument("-k", "--only", action="append", default=[], help="run only checks whose name contains this (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of unexpected exceptions")
    args = p.parse_args(argv)
    for name in ("cert", "key", "cacert"):
        path = getattr(args, name)
        if not os.path.isfile(path):
            p.error(f"--{name}: no such file: {path}")
    if not args.base_url.startswith("https://"):
        p.error("--base-url must be https:// (the gateway only speaks mutual TLS)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.simplefilter("default")
    try:
        http = make_http(args)
    except (ssl.SSLError, OSError) as err:
        print(f"error: loading TLS material: {err}", file=sys.stderr)
        return 2
    client = make_sdk(args, http)
    ctx = Ctx(args=args, http=http, client=client)
    print(f"openai {openai.__version__}, httpx {httpx.__version__}; {args.base_url} model={args.model}")

    selected = [(n, f) for n, f in CHECKS if not args.only or any(k.lower() in n.lower() for k in args.only)]
    if not selected:
        print(f"error: no check matches {args.only}", file=sys.stderr)
        return 2
    passed = failed = 0
    for name, fn in selected:
        start = time.monotonic()
        try:
            detail = fn(ctx)
        except Deviation as err:
            failed += 1
            print(f"FAIL {name}: {err}")
        except openai.APIStatusError as err:
            failed += 1
            print(f"FAIL {name}: unexpected {type(err).__name__} HTTP {err.status_code}: {err.message}")
        except openai.APIConnectionError as err:
            failed += 1
            cause = err.__cause__
            print(f"FAIL {name}: connection error: {err} ({type(cause).__name__}: {cause})")
        except Exception as err:  # a crash in the SDK's parsing is a deviation too
            failed += 1
            print(f"FAIL {name}: unexpected {type(err).__name__}: {err}")
            if args.verbose:
                traceback.print_exc()
        else:
            passed += 1
            elapsed = time.monotonic() - start
            print(f"PASS {name} ({elapsed:.2f}s)" + (f": {detail}" if detail else ""))
    http.close()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
