#!/usr/bin/env python3
"""A two-tool agent, written as any OpenAI Agents SDK user writes one, run against airlockd.

The agent has two function tools and must call both before it is done: it asks the model
with `tool_choice="required"` (the SDK's `ModelSettings`), runs the call the model makes,
sends the result back as a `tool` message, names the tool still missing as the next turn's
`tool_choice` (an `AgentHooks.on_tool_end` hook), and finishes once both tools have run
(`tool_use_behavior`). The model is reached through the SDK's Chat Completions model over
mutual TLS. Tracing is off: nothing leaves the machine.

    python tests/agent/two_tools.py --base-url https://127.0.0.1:PORT/v1 --model NAME \
        --cert client.pem --key client.key --cacert ca.pem

Prints one line per tool call and a final `done: …` line; exits 1 if the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from typing import Annotated, Literal

import httpx
from openai import AsyncOpenAI
from pydantic import Field

from agents import (
    Agent,
    AgentHooks,
    ModelSettings,
    OpenAIChatCompletionsModel,
    RunContextWrapper,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.agent import ToolsToFinalOutputResult

CALLS: list[str] = []


@function_tool
def lookup_rate(currency: Literal["EUR", "USD", "GBP"]) -> str:
    """The exchange rate of a currency against the US dollar."""
    CALLS.append(f"lookup_rate({currency})")
    return {"EUR": "1.08", "USD": "1.00", "GBP": "1.27"}[currency]


@function_tool
def convert(amount: Annotated[int, Field(ge=1, le=1000)], rate: Literal["1.08", "1.00", "1.27"]) -> str:
    """Converts an amount at a rate."""
    CALLS.append(f"convert({amount}, {rate})")
    return f"{amount * float(rate):.2f}"


TOOLS = ("lookup_rate", "convert")


def called() -> set[str]:
    return {c.split("(")[0] for c in CALLS}


class NameTheMissingTool(AgentHooks):
    async def on_tool_end(self, context, agent, tool, result) -> None:
        missing = [t for t in TOOLS if t not in called()]
        if missing:
            agent.model_settings = agent.model_settings.resolve(ModelSettings(tool_choice=missing[0]))


def both_tools_ran(_ctx: RunContextWrapper, _results: list) -> ToolsToFinalOutputResult:
    done = called() == set(TOOLS)
    return ToolsToFinalOutputResult(is_final_output=done, final_output="; ".join(CALLS) if done else None)


async def main() -> int:
    p = argparse.ArgumentParser()
    for arg in ("--base-url", "--model", "--cert", "--key", "--cacert"):
        p.add_argument(arg, required=True)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    set_tracing_disabled(True)
    tls = ssl.create_default_context(cafile=args.cacert)
    tls.load_cert_chain(args.cert, args.key)

    async def certificate_only(request: httpx.Request) -> None:
        # The client certificate is the credential; the SDK's bearer placeholder is not one.
        request.headers.pop("Authorization", None)

    http = httpx.AsyncClient(verify=tls, event_hooks={"request": [certificate_only]}, timeout=120)
    client = AsyncOpenAI(base_url=args.base_url, api_key="certificate", http_client=http, max_retries=0)
    agent = Agent(
        name="fx",
        instructions="Convert money: look up the rate, then convert.",
        tools=[lookup_rate, convert],
        model=OpenAIChatCompletionsModel(model=args.model, openai_client=client),
        model_settings=ModelSettings(
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=1.0,
            max_tokens=200,
            extra_args={"seed": args.seed},
        ),
        tool_use_behavior=both_tools_ran,
        hooks=NameTheMissingTool(),
        reset_tool_choice=False,
    )
    result = await Runner.run(agent, "How much is 250 EUR in USD?", max_turns=4)
    for call in CALLS:
        print(f"call: {call}")
    print(f"done: {result.final_output} ({len(CALLS)} calls)")
    await http.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
