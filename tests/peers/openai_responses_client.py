"""The official OpenAI Python client against parlor's /v1/responses with an
MCP server as a tool (hosted MCP, parlor the host).

Usage: openai_responses_client.py BASE_URL MODEL MCP_URL QUESTION

Prints one JSON object on stdout with what it saw; tests/server_responses.rs
checks it. Exits non-zero if the client raised something unexpected.
"""

import json
import sys

import openai
from openai import OpenAI


def main() -> None:
    base_url, model, mcp_url, question = sys.argv[1:5]
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=180)
    tool = {
        "type": "mcp",
        "server_label": "kb",
        "server_url": mcp_url,
        "allowed_tools": ["search_knowledge"],
        "require_approval": "never",
    }
    instructions = "You answer customers of a shop. Look facts up with the tools."
    out = {"openai_version": openai.__version__}

    r = client.responses.create(
        model=model, instructions=instructions, input=question, tools=[tool]
    )
    out["status"] = r.status
    out["item_types"] = [item.type for item in r.output]
    calls = [item for item in r.output if item.type == "mcp_call"]
    if calls:
        out["mcp_call"] = {"server_label": calls[0].server_label, "name": calls[0].name}
    out["output_text"] = r.output_text

    kinds, text, final_text = [], [], None
    stream = client.responses.create(
        model=model, instructions=instructions, input=question, tools=[tool], stream=True
    )
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text.append(event.delta)
        if event.type == "response.completed":
            final_text = event.response.output_text
    out["stream"] = {
        "first": kinds[0],
        "last": kinds[-1],
        "text": "".join(text),
        "final_text": final_text,
    }

    try:
        client.responses.create(
            model=model,
            input=question,
            tools=[dict(tool, server_url="http://10.0.0.1/mcp")],
        )
        out["not_allowed"] = "accepted"
    except openai.BadRequestError:
        out["not_allowed"] = "BadRequestError"

    print(json.dumps(out))


if __name__ == "__main__":
    main()
